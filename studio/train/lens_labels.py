"""LensNet's labels: counterfactual ΔNLL per unit of cost, measured on sampled working-context states.

An *episode* streams one training document through a real session (a baseline policy at a drawn
budget, so the WCs look like the ones LensNet will meet) and snapshots the exact `ScoreView` the
scorer saw at a few refocus steps. For each snapshot, up to `candidates` unprotected entries get one
counterfactual edit each, by one level:

- a LOD0 block is collapsed to its LOD1 gist;  a LOD1 gist is expanded to its block;
- a LOD2 gist is expanded to its 32 LOD1 gists;
and the base model's NLL of the next `horizon` tokens is measured after the edited WC. The label is
the value of the finer of the two levels per position it costs:

    u = (NLL(coarser WC) - NLL(finer WC)) / (block_size - 1)     (nats per token per position)

so positive u = detail helps; LOD0 entries and gists share one scale and can be ranked against each
other (collapse the least useful detail, expand the most useful gist). Non-candidates and protected
entries are NaN. Edited WCs of equal cost share batched forwards (`studio/train/wc_nll.py`).

A cheap auxiliary target comes from the same forwards: the attention the H target tokens give each
entry of the unedited WC (`aux`, every entry, see `engine.structure_scorers.attention_utility`).

A label set is one safetensors file of concatenated per-state tensors with offsets; generation is
resumable per episode (episode e draws from its own generator, seeded by (seed, e)). This module
does not train LensNet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract.config import RunConfig, apply_overrides, check_knobs, check_rule, knob, protected_blocks
from engine.lensnet import entry_features, lens_queries
from engine.scorers import build_scorer
from engine.session import Session
from engine.structure_scorers import attention_utility
from engine.view import ScoreView
from engine.working_context import WorkingContext, protected_from
from studio.train.common import load_tensors, save_tensors, seeded_generator
from studio.train.token_docs import TokenDoc
from studio.train.wc_nll import wc_scores

LABEL_KEYS = ("entry_vecs", "feats", "queries", "label", "aux", "lod", "entry_off", "query_off")


@dataclass(frozen=True)
class LabelConfig:
    episodes: int = knob(40, "sessions run; each is one document, one budget, one policy", lo=1)
    states_per_episode: int = knob(8, "WC snapshots labelled per episode", lo=1)
    candidates: int = knob(16, "entries per snapshot whose one-level edit is measured", lo=2)
    horizon: int = knob(32, "H: next tokens whose NLL the edit changes", lo=1)
    w_max_min: int = knob(512, "budgets are drawn uniformly (in blocks) from [w_max_min, w_max_max]", lo=1)
    w_max_max: int = knob(
        1536, "keep w_max + block_size + horizon within the base model's trained context", lo=1, rule=">= w_max_min"
    )
    max_tokens: int = knob(6144, "a document is read at most this far", lo=1)
    policies: tuple[str, ...] = knob(
        ("recency", "compressive", "random", "retrieval", "hopfield", "sink"),
        "state makers",
        rule="baseline policies only (not lensnet), at least one",
    )
    recall_share: float = knob(
        0.25, "episodes that plant a fact and ask for it later (engine/scenarios.recall_text)", lo=0, hi=1
    )
    position_mode: str = knob("compact", "positions as the engine will use them", choices=("global", "compact"))
    batch: int = knob(8, "edited WCs per base-model forward", lo=1)
    max_seconds: float = knob(0.0, "wall-clock cap across resumes: no new episode starts after it (0 = none)", lo=0)
    save_every_s: float = knob(60.0, "seconds between saves of the label file (and one at the end)", lo=0, lo_open=True)
    seed: int = knob(0, "episode e draws from a generator seeded by (seed, e)", lo=0)

    def __post_init__(self) -> None:
        check_knobs(self, "lens_labels")
        check_rule(self, "lens_labels", "w_max_max", self.w_max_min <= self.w_max_max)
        check_rule(self, "lens_labels", "policies", len(self.policies) >= 1 and "lensnet" not in self.policies)


class _NullSink:
    def emit(self, e) -> None:  # the episode only needs the views, not the events
        pass


class _Snapshotting:
    """Wraps a scorer: keeps the view it is shown at the chosen steps, then scores as the policy would."""

    needs_vectors = True  # LensNet's inputs must be in every kept view

    def __init__(self, inner, steps: set[int]):
        self.inner, self.steps, self.name = inner, steps, inner.name
        self.views: list[ScoreView] = []

    def score(self, view: ScoreView):
        if view.step in self.steps:
            self.views.append(view)
        return self.inner.score(view)


def one_level_edit(wc: WorkingContext, i: int) -> tuple[WorkingContext, bool]:
    """(WC with entry i moved one level, True if that made it finer). LOD0 collapses, gists expand."""
    lod, idx, bs = int(wc.lod[i]), int(wc.index[i]), wc.block_size
    keep = np.ones(wc.n, bool)
    keep[i] = False
    if lod == 0:
        add_lod, add_idx, finer = np.array([1]), np.array([idx]), False
    elif lod == 1:
        add_lod, add_idx, finer = np.array([0]), np.array([idx]), True
    else:
        add_lod, add_idx, finer = np.full(bs, lod - 1), idx * bs + np.arange(bs), True
    new = wc.with_entries(np.concatenate([wc.lod[keep], add_lod]).astype(np.int8),
                          np.concatenate([wc.index[keep], add_idx]).astype(np.int64))  # fmt: skip
    return new, finer


def label_view(model, tree, view: ScoreView, targets: np.ndarray, protect: int, cfg: LabelConfig,
               gen: torch.Generator, must: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(u, aux), float32[n] each, for one snapshot: u NaN where not measured. See the module docstring.

    `must`: entry indices measured whatever the draw (a recall episode's fact), when unprotected.
    """
    wc = view.wc
    p0 = protected_from(wc, protect)
    pool = np.flatnonzero(wc.end <= p0)  # unprotected entries: the ones the allocator may edit
    u = np.full(wc.n, np.nan, np.float32)
    if pool.size == 0:
        res = wc_scores(model, tree, [wc], targets, cfg.position_mode, cfg.batch, attention=True)
        return u, attention_utility(res.entry_mass[0][: wc.n], wc.cost)
    # Half the candidates from raw blocks, half from gists where both exist: the ranking must
    # compare collapsing detail with expanding gists, not only one kind.
    forced = np.intersect1d(pool, must) if must is not None else np.zeros(0, np.int64)
    pool = np.setdiff1d(pool, forced)
    raw, gist = pool[wc.lod[pool] == 0], pool[wc.lod[pool] > 0]
    half = (cfg.candidates - forced.size) // 2
    pick = [forced]
    for group, want in ((raw, half), (gist, cfg.candidates - forced.size - half)):
        order = torch.randperm(group.size, generator=gen).numpy()
        pick.append(group[order[:want]])
    chosen = np.concatenate(pick).astype(np.int64)
    want = min(cfg.candidates, pool.size + forced.size)
    if chosen.size < want:  # one kind ran short: top up from the rest
        rest = np.setdiff1d(pool, chosen)
        order = torch.randperm(rest.size, generator=gen).numpy()
        chosen = np.concatenate([chosen, rest[order[: want - chosen.size]]])
    edits = [one_level_edit(wc, int(i)) for i in chosen]
    res = wc_scores(model, tree, [wc] + [e for e, _ in edits], targets, cfg.position_mode, cfg.batch, attention=True)
    nll = res.nll.mean(axis=1)  # [1 + k]
    per_cost = float(wc.block_size - 1)
    for j, (i, (_, finer)) in enumerate(zip(chosen, edits, strict=True)):
        coarse, fine = (nll[0], nll[1 + j]) if finer else (nll[1 + j], nll[0])
        u[i] = (coarse - fine) / per_cost
    return u, attention_utility(res.entry_mass[0][: wc.n], wc.cost)


def run_episode(model, gistnet, doc: TokenDoc, cfg: LabelConfig, engine_cfg: RunConfig, episode: int) -> list[dict]:
    """Label `states_per_episode` snapshots of one session over `doc`; [] if the document is too short.

    A share `recall_share` of episodes are recall episodes: the document (cut to `max_tokens`) gets a
    fact planted and asked for later (`engine.scenarios.recall_text`); their snapshots include the
    step right before each answer, and the entries covering the fact are always among the candidates.
    """
    gen = seeded_generator(cfg.seed * 1_000_003 + episode)
    recall = None
    if float(torch.rand((), generator=gen)) < cfg.recall_share:
        from engine.scenarios import recall_text
        from studio.train.token_docs import tokenize_text

        rng = np.random.default_rng([cfg.seed, episode])
        recall = recall_text(doc.tokens[: max(0, cfg.max_tokens - 384)], model.tokenize, model.decode, rng)
        doc = TokenDoc(f"{doc.name} (recall)", recall.text, tokenize_text(recall.text, model.tokenize))
    bs = engine_cfg.tree.block_size
    lo_b, hi_b = -(-cfg.w_max_min // bs), cfg.w_max_max // bs
    w_max = bs * int(torch.randint(lo_b, hi_b + 1, (), generator=gen))
    policy = cfg.policies[int(torch.randint(len(cfg.policies), (), generator=gen))]
    sets = [f"wc.w_max={w_max}", f"scorer.name={policy}", f"wc.position_mode={cfg.position_mode}"]
    ecfg = apply_overrides(engine_cfg, [*sets, "session.compute_nll=false", "session.check_invariants=false"])
    every = ecfg.session.refocus_every
    n_tok = min(len(doc.tokens), cfg.max_tokens)
    # Step s sees tokens [0, (s+1)*every); keep the budget binding and H targets after the cursor.
    first = -(-(w_max + 2 * bs) // every) - 1
    last = (n_tok - cfg.horizon) // every - 1
    if last < first:
        return []
    k = min(cfg.states_per_episode, last - first + 1)
    steps = set((first + torch.randperm(last - first + 1, generator=gen)[:k]).tolist())
    if recall is not None:  # the step whose next tokens hold each answer, in place of random ones
        asked = {a // every - 1 for a in recall.answer_starts if first <= a // every - 1 <= last}
        steps = asked | set(sorted(steps - asked)[: max(0, k - len(asked))])
    scorer = _Snapshotting(build_scorer(ecfg, d_embed=model.hidden_size), steps)
    stop = (max(steps) + 1) * every
    ecfg = apply_overrides(ecfg, [f"session.max_tokens={stop}"])
    sess = Session(ecfg, model, gistnet, scorer, _NullSink(), doc.name)
    sess.run([doc.text])
    if not np.array_equal(sess.tree.tokens()[:stop], doc.tokens[:stop]):
        raise RuntimeError(f"session tokens differ from the document's tokens in {doc.name}")
    protect = protected_blocks(ecfg.tree, ecfg.wc)
    out = []
    for view in scorer.views:
        c = view.wc.tokens_seen
        must = None
        if recall is not None:
            wc = view.wc
            must = np.flatnonzero((wc.end > recall.fact_start) & (wc.start < recall.fact_end))
        u, aux = label_view(model, sess.tree, view, doc.tokens[c : c + cfg.horizon], protect, cfg, gen, must)
        out.append({
            "entry_vecs": view.entry_vecs.float(),
            "feats": entry_features(view),
            "queries": lens_queries(view, ecfg.lensnet.query_gists).float(),
            "label": torch.from_numpy(u),
            "aux": torch.from_numpy(aux),
            "lod": torch.from_numpy(view.wc.lod.astype(np.int64)),
            "meta": {"doc": doc.name, "policy": policy, "w_max": w_max, "tokens_seen": c, "recall": recall is not None},
        })  # fmt: skip
    return out


def pack(states: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate per-state tensors, with `entry_off` / `query_off` [S+1] marking each state's rows."""
    if not states:
        raise ValueError("no labelled states to pack")
    e_off = np.cumsum([0] + [s["label"].shape[0] for s in states])
    q_off = np.cumsum([0] + [s["queries"].shape[0] for s in states])
    return {
        "entry_vecs": torch.cat([s["entry_vecs"] for s in states]),
        "feats": torch.cat([s["feats"] for s in states]),
        "queries": torch.cat([s["queries"] for s in states]),
        "label": torch.cat([s["label"] for s in states]),
        "aux": torch.cat([s["aux"] for s in states]),
        "lod": torch.cat([s["lod"] for s in states]),
        "entry_off": torch.from_numpy(e_off.astype(np.int64)),
        "query_off": torch.from_numpy(q_off.astype(np.int64)),
    }


def unpack(t: dict[str, torch.Tensor]) -> list[dict]:
    """Inverse of `pack` (without metadata)."""
    missing = [k for k in LABEL_KEYS if k not in t]
    if missing:
        raise ValueError(f"label file lacks tensors {missing} (made by an older version: delete it to relabel)")
    e, q = t["entry_off"].tolist(), t["query_off"].tolist()
    return [
        {
            "entry_vecs": t["entry_vecs"][e[i] : e[i + 1]],
            "feats": t["feats"][e[i] : e[i + 1]],
            "queries": t["queries"][q[i] : q[i + 1]],
            "label": t["label"][e[i] : e[i + 1]],
            "aux": t["aux"][e[i] : e[i + 1]],
            "lod": t["lod"][e[i] : e[i + 1]],
        }
        for i in range(len(e) - 1)
    ]


def generate_labels(model, gistnet, docs: list[TokenDoc], cfg: LabelConfig, engine_cfg: RunConfig,
                    path: str | Path, log=None) -> list[dict]:  # fmt: skip
    """Label `cfg.episodes` episodes (document e mod len(docs)), or fewer when `cfg.max_seconds` runs
    out; resumes from `path`. Returns every labelled state.

    The file is rewritten every `save_every_s` and at the end; its metadata records how many episodes
    it holds and the seconds spent, so a killed run continues from the last save and produces the
    same labels an uninterrupted one would.
    """
    import time

    path = Path(path)
    states: list[dict] = []
    done, prior = 0, 0.0
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        done, prior = int(meta.get("episodes_done", 0)), float(meta.get("elapsed_s", 0.0))
        states = unpack(load_tensors(path))
    gistnet.eval()
    t0 = last_save = time.monotonic()
    saved = done

    def save(upto: int) -> None:
        meta = {"episodes_done": str(upto), "elapsed_s": f"{prior + time.monotonic() - t0:.1f}",
                "config": repr(dataclasses.asdict(cfg))}  # fmt: skip
        save_tensors(path, pack(states), metadata=meta)

    e = done
    while e < cfg.episodes and not (cfg.max_seconds and prior + time.monotonic() - t0 >= cfg.max_seconds):
        states += run_episode(model, gistnet, docs[e % len(docs)], cfg, engine_cfg, e)
        e += 1
        if states and time.monotonic() - last_save >= cfg.save_every_s:
            save(e)
            saved, last_save = e, time.monotonic()
        if log is not None:
            log(f"labels: episode {e}/{cfg.episodes}, {len(states)} states, {prior + time.monotonic() - t0:.0f} s")
    if states and e > saved:
        save(e)
    return states
