"""The streaming loop: tokens -> gist tree -> working context -> refocus -> base model, as events.

Every `refocus_every` tokens the session runs `allocator.iterations` rounds of scorer + allocator
over the WC, checks the invariants, and emits what happened to a sink. The base model then reads
the WC followed by the next block of the stream, which gives that block's NLL under the WC the
step produced (plus, optionally, under the full history and under a raw recency window: the
baselines), so a step's `StepRecorded` is emitted once the next block has been read.

Per-step time is split into tree (tokenising, gisting), scorer, allocator and model. The session
owns no files: sinks decide what is kept. It owns no thread policy either: a `ThreadGovernor`
(engine/threads.py; off with MCS_THREADS=fixed) is ticked once per step.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from contract import nodes
from contract.config import PlanKnobs, RunConfig
from contract.events import (
    AttentionRecorded,
    GistsRecorded,
    NodesAdded,
    RunFinished,
    RunStarted,
    Sink,
    StepRecorded,
    TextRecorded,
    interrupt_reason,
)
from engine.allocator_types import AllocatorState
from engine.materialize import entry_vectors, materialize, query_vectors, recent_gists
from engine.refocus import Scores, refocus
from engine.textio import token_chunks
from engine.threads import ThreadGovernor
from engine.tree import GistTree
from engine.view import ScoreView
from engine.working_context import WorkingContext, check_invariants

PREVIEW_TOKENS = 24
FULL_CONTEXT_MAX = 8192  # the full-history baseline is skipped beyond this many tokens (quadratic cost)


def full_context_fits(model) -> int:
    """Tokens up to which the full-history baseline is measured: "where it fits", the model's trained
    context, and a cap on the quadratic cost. A block ending by this many tokens has `nll_full`."""
    return min(FULL_CONTEXT_MAX, model.max_positions or FULL_CONTEXT_MAX)


@dataclass
class _Pending:
    """A refocused step waiting for the next block to measure its NLL."""

    step: int
    wc: WorkingContext
    n_entries_start: int
    n_applied: int
    n_forced: int
    t_tree_ms: float
    t_scorer_ms: float
    t_allocator_ms: float
    t_model_ms: float


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Session:
    """One pass over one input. `model` is a `BaseModel`, `gistnet` a `GistNet`, `scorer` a Scorer."""

    def __init__(self, cfg: RunConfig, model, gistnet, scorer, sink: Sink, input_name: str = "-",
                 governor: ThreadGovernor | None = None):  # fmt: skip
        self.cfg, self.model, self.gistnet, self.scorer, self.sink = cfg, model, gistnet, scorer, sink
        self.input_name = input_name
        self.governor = governor or ThreadGovernor.from_env()  # torch threads under CPU contention
        self._tokens_read = 0
        self.knobs = PlanKnobs.from_config(cfg)
        self.tree = GistTree(cfg.tree, model.hidden_size, self._gist, self._embed)
        self.wc = WorkingContext.empty(cfg.tree.block_size, cfg.tree.max_lod)
        self.state = AllocatorState.initial(cfg.tree.max_lod)
        self.step = 0
        self.needs_attention = bool(getattr(scorer, "needs_attention", False))
        # Attention the newest block gave each entry in the latest forward: (node ids sorted, mass).
        self._attention: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def tokens_read(self) -> int:
        """Tokens the tokenizer has produced so far (ahead of `tree.tokens_seen`; for progress estimates)."""
        return self._tokens_read

    # -- the tree's view of the model --
    @torch.no_grad()
    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.model.embed(torch.from_numpy(ids)).float().cpu().numpy()  # [k, d]

    @torch.no_grad()
    def _gist(self, children: np.ndarray, level: int) -> np.ndarray:
        x = torch.from_numpy(children)[None].to(self.model.device)  # [1, bs, d]
        return self.gistnet(x, level)[0].float().cpu().numpy()  # [d]

    # -- the loop --
    def run(self, texts: Iterable[str]) -> RunFinished:
        """Stream `texts` (chunks of one document) to the end. Emits RunFinished also on failure."""
        self.sink.emit(
            RunStarted(
                self.cfg,
                {
                    "id": self.model.model_id,
                    "hidden_size": self.model.hidden_size,
                    "vocab_size": self.model.vocab_size,
                    "dtype": str(self.model.dtype).replace("torch.", ""),
                    "device": str(self.model.device),
                },
                self.scorer.name,
                self.input_name,
                dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            )
        )
        try:
            pending = None
            for block in self._blocks(token_chunks(iter(texts), self.model.tokenize)):
                self.governor.tick()  # microseconds, unless a measurement is due (every ~1.5 s)
                t0 = time.perf_counter()
                new_nodes = self.tree.append(block)
                self.wc = self.wc.advance(self.tree.tokens_seen)
                self._emit_nodes(new_nodes)
                t_tree = _ms(t0)
                if pending is not None:
                    self._finish(pending, self.tree.tokens_seen)
                if self.cfg.session.check_invariants:  # between steps, appends may overshoot the budget
                    check_invariants(self.wc, self.knobs.w_max, self.knobs.protect_blocks, after_refocus=False,
                                     refocus_every=self.cfg.session.refocus_every)  # fmt: skip
                pending = self._refocus(t_tree)
            if pending is not None:
                self._finish(pending, None)
        except BaseException as e:
            why = interrupt_reason(e) if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            done = RunFinished("failed", self.tree.tokens_seen, self.step, why)
            self.sink.emit(done)
            raise
        finally:
            self.governor.restore()
        done = RunFinished("complete", self.tree.tokens_seen, self.step)
        self.sink.emit(done)
        return done

    def _blocks(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Re-cut token chunks into pieces of exactly refocus_every tokens (the last may be short)."""
        per, limit = self.cfg.session.refocus_every, self.cfg.session.max_tokens
        buf, have, total = [], 0, 0
        for ids in chunks:
            self._tokens_read += ids.shape[0]
            if limit:
                ids = ids[: max(0, limit - total)]
            total += ids.shape[0]
            buf.append(ids)
            have += ids.shape[0]
            while have >= per:
                flat = np.concatenate(buf)
                yield flat[:per]
                buf, have = [flat[per:]], have - per
            if limit and total >= limit:
                break
        if have:
            yield np.concatenate(buf)

    def _emit_nodes(self, new_nodes: list[np.ndarray]) -> None:
        ids = np.concatenate(new_nodes)
        if ids.size == 0:
            return
        lod, idx = nodes.node_lod(ids), nodes.node_index(ids)
        start, end = nodes.node_span(ids, self.cfg.tree.block_size)
        toks = self.tree.tokens()
        preview = [
            self.model.decode(toks[s : min(e, s + PREVIEW_TOKENS)].tolist()) for s, e in zip(start, end, strict=True)
        ]
        self.sink.emit(NodesAdded(self.step, ids, lod, start, end, preview))
        blocks = lod == 0
        if blocks.any():
            text = [self.model.decode(toks[s:e].tolist()) for s, e in zip(start[blocks], end[blocks], strict=True)]
            self.sink.emit(TextRecorded(self.step, ids[blocks], start[blocks], end[blocks], text))
        if self.cfg.session.record_gists and self.tree.d:
            g = lod >= 1
            if g.any():
                vec = np.concatenate([self.tree.gists(int(v), idx[g & (lod == v)]) for v in np.unique(lod[g])])
                order = np.concatenate([np.flatnonzero(g & (lod == v)) for v in np.unique(lod[g])])
                self.sink.emit(GistsRecorded(self.step, ids[order], lod[order], vec))  # vec: [k, d]

    def _score(self, wc: WorkingContext, state: AllocatorState, iteration: int) -> Scores:
        """One round's scores from the session's scorer (`engine.refocus.ScoreFn`)."""
        res = self.scorer.score(self.view(wc, state))
        return Scores(res.scores, res.attention)

    def view(self, wc: WorkingContext, state: AllocatorState) -> ScoreView:
        """What the scorer sees of `wc` at the session's current step, given the allocator's `state`
        (its vectors come from the session's tree: a caller rebuilding a recorded step fills the tree
        and sets `step` first, as `studio.attention_detail` does)."""
        vecs = {}
        if getattr(self.scorer, "needs_vectors", True) and wc.n:
            vecs = {
                "entry_vecs": entry_vectors(wc, self.tree, self.model),
                "query_vecs": query_vectors(wc, self.tree, self.model, self.cfg.scorer.query_blocks),
                "recent_gists": recent_gists(self.tree, wc, self.cfg.lensnet.query_gists),
            }
        if self.needs_attention:
            vecs["attention_mass"] = self._attention_of(wc)
        return ScoreView(wc, self.step, self.knobs.w_max, state.prev_score(wc), state.age_steps(wc, self.step), **vecs)

    def _attention_of(self, wc: WorkingContext) -> np.ndarray:
        """float32[n]: each entry's mass in the latest forward, NaN if it was not an entry then."""
        out = np.full(wc.n, np.nan, np.float32)
        if self._attention is not None and wc.n:
            ids, mass = self._attention
            at = np.minimum(np.searchsorted(ids, wc.node_id), ids.shape[0] - 1)
            hit = ids[at] == wc.node_id
            out[hit] = mass[at[hit]]
        return out

    def _refocus(self, t_tree: float) -> _Pending:
        step, n_start, sc = self.step, self.wc.n, self.cfg.session
        r = refocus(self.wc, self.state, self.knobs, step, self.cfg.allocator.iterations, self._score, self.sink,
                    record_entries=step % sc.entries_every == 0, check=sc.check_invariants)  # fmt: skip
        self.wc, self.state = r.wc, r.state
        n_applied, n_forced, t_sc, t_al = r.n_applied, r.n_forced, r.t_scorer_ms, r.t_allocator_ms
        t_model = 0.0
        every = self.cfg.session.attention_every
        if every and step % every == 0 and self.wc.total_cost > 0:
            t0 = time.perf_counter()
            self._record_attention(step)
            t_model += _ms(t0)
        self.step += 1
        return _Pending(step, self.wc, n_start, n_applied, n_forced, t_tree, t_sc, t_al, t_model)

    @torch.no_grad()
    def _record_attention(self, step: int) -> None:
        """Attention mass from the WC's newest block of queries onto each entry, per layer."""
        m = materialize(self.wc, self.tree, self.model, self.cfg.wc.position_mode)
        T = m.inputs_embeds.shape[1]
        q = min(self.cfg.tree.block_size, T)
        _, mass = self.model.forward_tail(m.inputs_embeds, m.position_ids, tail=q)  # [L, 1, T]
        per_entry = entry_mass(mass[:, 0].float().cpu().numpy(), m.entry_of_pos, self.wc.n + 1)  # [L, n+1]
        L = per_entry.shape[0]
        ids = np.append(self.wc.node_id, -1)  # the tail is node -1
        self.sink.emit(AttentionRecorded(step, np.repeat(np.arange(L, dtype=np.int16), ids.shape[0]),
                                         np.tile(ids, L), per_entry.reshape(-1)))  # fmt: skip

    def _finish(self, p: _Pending, upto: int | None) -> None:
        """Measure the NLL of tokens [p.wc.tokens_seen, upto) under p.wc and emit its StepRecorded."""
        nll = nll_full = nll_rec = None
        t0 = time.perf_counter()
        cursor = p.wc.tokens_seen
        sc = self.cfg.session
        due = sc.compute_nll and p.step % sc.nll_every == 0
        if upto is not None and upto > cursor and (due or self.needs_attention):
            target = self.tree.tokens(cursor, upto).astype(np.int64)
            nll = self._nll_under(p.wc, target)  # the attention scorer needs this forward every step
            if not due:  # measured only on the cadence, so that every policy reports the same blocks
                nll = None
            if due and sc.baselines:
                nll_rec = self._nll_raw(max(0, cursor - self.knobs.w_max), cursor, target)
                if cursor + target.shape[0] <= full_context_fits(self.model):
                    nll_full = self._nll_raw(0, cursor, target)
        t_model = p.t_model_ms + _ms(t0)
        wc = p.wc
        self.sink.emit(
            StepRecorded(
                p.step, cursor, p.n_entries_start, wc.n, wc.total_cost, self.knobs.w_max, wc.evicted_upto,
                p.n_applied, p.n_forced, nll, nll_full, nll_rec, p.t_tree_ms, p.t_scorer_ms, p.t_allocator_ms, t_model,
            )
        )  # fmt: skip

    @torch.no_grad()
    def _nll_under(self, wc: WorkingContext, target: np.ndarray) -> float | None:
        """NLL of `target` after `wc`; also keeps the attention the target block gave each entry when
        the scorer needs it."""
        if wc.total_cost == 0:
            return None
        m = materialize(wc, self.tree, self.model, self.cfg.wc.position_mode)
        tpos = torch.arange(m.next_position, m.next_position + target.shape[0])
        nlls, mass = self.model.continuation(m.inputs_embeds, m.position_ids, torch.from_numpy(target), tpos,
                                             attention=self.needs_attention)  # fmt: skip
        if mass is not None:
            per_entry = entry_mass(mass.mean(axis=0, keepdims=True), m.entry_of_pos, wc.n + 1)[0, : wc.n]  # [n]
            order = np.argsort(wc.node_id, kind="stable")
            self._attention = (wc.node_id[order], per_entry[order])
        return float(nlls.mean(dtype=np.float64)) if nlls.size else None

    @torch.no_grad()
    def _nll_raw(self, lo: int, hi: int, target: np.ndarray) -> float | None:
        """Baseline NLL of `target` after the raw tokens [lo, hi), numbered as the WC is (`position_mode`)."""
        if hi <= lo:
            return None
        ids = torch.from_numpy(self.tree.tokens(lo, hi).astype(np.int64))
        emb = self.model.embed(ids)[None]  # [1, hi-lo, d]
        base = 0 if self.cfg.wc.position_mode == "compact" else lo  # compact: a short-context model sees 0..
        pos = torch.arange(base, base + hi - lo)[None]
        tpos = torch.arange(base + hi - lo, base + hi - lo + target.shape[0])
        return self.model.nll_of_continuation(emb, pos, torch.from_numpy(target), tpos)


def entry_mass(mass: np.ndarray, entry_of_pos: np.ndarray, n: int) -> np.ndarray:
    """float32 [L, n]: attention mass per position [L, T] summed over each entry's positions."""
    out = np.zeros((mass.shape[0], n), np.float64)
    for layer in range(mass.shape[0]):
        out[layer] = np.bincount(entry_of_pos, weights=mass[layer], minlength=n)[:n]
    return out.astype(np.float32)
