"""Re-plan a recorded session with other knobs.

Fast mode reuses the recorded raw scores: the allocator (a pure function) re-runs step by step on
the same stream of tokens, so a knob moved in the app answers in about a second. When the new knobs
lead to an entry the recording never scored at that step, the entry takes its node's latest earlier
recorded score, else its parent's score or its children's mean, else 0, and the replay is labelled
approximate (with a count of such lookups). Exact mode re-runs the whole session, scorer and base
model included, over the recording's input with the new knobs.

Fast mode has no model, so its steps carry no NLL. This module replays in memory, into any `Sink`;
reading a recording from its run folder and writing the replay into a new one is `studio/replay.py`
(so that `engine/` never imports telemetry).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from contract import nodes
from contract.config import PlanKnobs, RunConfig
from contract.events import (
    Sink,
    StepRecorded,
)
from engine.allocator_types import AllocatorState
from engine.refocus import Scores, refocus
from engine.working_context import WorkingContext

FAST_KNOB_SECTIONS = ("allocator", "wc")  # what fast mode can change: the scores stay the recorded ones


class ReplayError(ValueError):
    """A replay that cannot be done as asked; one line saying why."""


@dataclass(frozen=True, eq=False)
class Recording:
    """What fast replay needs from a run, as numpy arrays."""

    config: RunConfig
    tokens_seen: np.ndarray  # int64[steps]: tokens read at each refocus step
    step: np.ndarray  # int32[r] entries rows, sorted by (step, iteration)
    iteration: np.ndarray  # int16[r]
    node_id: np.ndarray  # int64[r]
    raw_score: np.ndarray  # float32[r]
    # Per-row lookup keys by max_lod, made on first use: a recording opened in the app is re-planned
    # at every knob change, and keying its millions of rows is a quarter of a second each time.
    # Not an init field, so `dataclasses.replace` (a recording with other rows) starts a fresh cache.
    _keys: dict = field(default_factory=dict, init=False, repr=False)

    def keys(self, max_lod: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 `_Latest` key, bool "a level the WC can hold") of every row, for this max_lod."""
        hit = self._keys.get(max_lod)
        if hit is None or hit[0] is not self.node_id:
            lod = nodes.node_lod(self.node_id)
            key = _Latest(max_lod).key(lod, nodes.node_index(self.node_id))
            hit = self._keys[max_lod] = (self.node_id, key, (lod >= 0) & (lod <= max_lod))
        return hit[1], hit[2]


@dataclass
class ReplayStats:
    steps: int = 0
    approximate_lookups: int = 0  # entries whose score was not recorded at that step
    allocator_ms: float = 0.0
    # With `replay_fast(stop_before=t)`: the WC and allocator state as step t-1 left them.
    stopped_at: tuple[WorkingContext, AllocatorState] | None = None

    @property
    def approximate(self) -> bool:
        return self.approximate_lookups > 0


class _Latest:
    """Latest recorded raw score per node and the step it was recorded at, dense, keyed by `key`.

    Replay only (it grows with the history, which the engine's own state never does). Updating it
    with a step's rows before looking up makes "recorded at this step" and "latest earlier score"
    one gather: the stamp says which it was. One flat array interleaves the levels (key = index *
    levels + lod), so a lookup or an update is one gather or scatter, not one per level.
    """

    def __init__(self, max_lod: int):
        self.levels = max_lod + 1
        self.v = np.full(1024 * self.levels, np.nan, np.float32)
        self.at = np.full(1024 * self.levels, -1, np.int32)

    def key(self, lod: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """int64 key of nodes `(lod, idx)`; only meaningful for 0 <= lod <= max_lod and idx >= 0."""
        return idx.astype(np.int64, copy=False) * self.levels + lod

    def update(self, key: np.ndarray, raw: np.ndarray, stamp: int) -> None:
        if key.size == 0:
            return
        need = int(key.max()) + 1
        if need > self.v.size:
            size = max(need, 2 * self.v.size)
            self.v = np.concatenate([self.v, np.full(size - self.v.size, np.nan, np.float32)])
            self.at = np.concatenate([self.at, np.full(size - self.at.size, -1, np.int32)])
        self.v[key] = raw
        self.at[key] = stamp


@numba.njit(cache=True, nogil=True)
def _pairwise_sum(x):
    """numpy's float32 sum of a short contiguous row, bit for bit (8 accumulators up to 128 values,
    halves beyond: `pairwise_sum` in numpy's loops), so the compiled lookup gives numpy's numbers."""
    n = x.shape[0]
    if n < 8:
        r = np.float32(0.0)
        for i in range(n):
            r += x[i]
        return r
    if n <= 128:
        a = x[:8].copy()
        i = 8
        while i < n - n % 8:
            for j in range(8):
                a[j] += x[i + j]
            i += 8
        r = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
        while i < n:
            r += x[i]
            i += 1
        return r
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(x[:n2]) + _pairwise_sum(x[n2:])


@numba.njit(cache=True, nogil=True)
def _lookup(lod, idx, v, at, stamp, levels, bs, max_lod, out):
    """Fill `out` with each node's score recorded at `stamp`, else its latest earlier one, else its
    parent's latest score, else its children's mean, else 0. Returns how many were not recorded at
    `stamp` (approximate lookups). Compiled: on a recording whose scorer wanders (random), most
    steps have some, and the numpy version was a fifth of a long replay. Its output was bit for bit
    the numpy original's when tests/data/replay/expected was made; tests/test_replay_fast.py holds it there."""
    size, miss = v.shape[0], 0
    kids = np.empty(bs, np.float32)
    for i in range(lod.shape[0]):
        k = idx[i] * levels + lod[i]
        val, a = (v[k], at[k]) if k < size else (np.float32(np.nan), -1)
        if a == stamp:
            out[i] = val
            continue
        miss += 1
        if np.isnan(val) and lod[i] < max_lod:  # the parent's latest score
            p = idx[i] if lod[i] == 0 else idx[i] // bs
            pk = p * levels + lod[i] + 1
            val = v[pk] if pk < size else np.float32(np.nan)
        if np.isnan(val) and lod[i] > 0:  # the children's mean (a LOD1 node's one child: its own block)
            count = 0
            for c in range(bs):
                ck = (idx[i] if lod[i] == 1 else idx[i] * bs + c) * levels + lod[i] - 1
                x = v[ck] if ck < size else np.float32(np.nan)
                if np.isnan(x):
                    kids[c] = 0.0
                else:
                    kids[c] = x
                    count += 1
            if count > 0:
                val = np.float32(np.float64(_pairwise_sum(kids)) / count)
        out[i] = np.float32(0.0) if np.isnan(val) else val
    return miss


def replay_fast(rec: Recording, cfg: RunConfig, sink: Sink, *, record_entries: bool = True,
                stop_before: int | None = None) -> ReplayStats:  # fmt: skip
    """Re-plan `rec` under `cfg`, emitting entries/decisions/steps events. Returns counts and timings.

    Each step is one `engine.refocus.refocus` whose scores are the recorded ones (`recorded` below);
    the recorded scores are keyed once for the whole recording, so a round's lookup is one compiled pass.
    `stop_before=t`: stop as step t begins, before its tokens are read, and return the WC and the
    allocator state as step t-1 left them in `stopped_at` (with the recording's own knobs, what the
    recorder had; `t` may be the number of steps: the state at the end).
    """
    knobs, stats = PlanKnobs.from_config(cfg), ReplayStats()
    bs, max_lod = cfg.tree.block_size, cfg.tree.max_lod
    wc = WorkingContext.empty(bs, max_lod)
    state, latest = AllocatorState.initial(max_lod), _Latest(max_lod)
    bounds = np.searchsorted(rec.step, np.arange(rec.tokens_seen.shape[0] + 1))
    rec_key, rec_ok = rec.keys(max_lod)  # a level the WC cannot hold is never looked up
    all_ok = bool(rec_ok.all())
    only_round0 = not rec.iteration.size or not rec.iteration.any()
    iterations, w_max, check = cfg.allocator.iterations, knobs.w_max, cfg.session.check_invariants

    def recorded(wc: WorkingContext, state: AllocatorState, it: int) -> Scores:
        """Round `it` of step `t`: the recorded round with that number (or the last recorded one)."""
        if only_round0:
            sel = slice(lo, hi)
        else:
            have = its[its <= it]
            sel = np.flatnonzero(its == (have.max() if have.size else -1)) + lo
        stamp = t * 16 + it  # iterations <= 16: a score from an earlier round is not exact either
        if all_ok:
            latest.update(rec_key[sel], rec.raw_score[sel], stamp)
        else:
            ok = rec_ok[sel]
            latest.update(rec_key[sel][ok], rec.raw_score[sel][ok], stamp)
        # Not scored at this step: latest earlier score, else parent/children, else 0 (see `_lookup`).
        raw = np.empty(wc.n, np.float32)
        stats.approximate_lookups += _lookup(wc.lod, wc.index, latest.v, latest.at, stamp, latest.levels, bs,
                                             max_lod, raw)  # fmt: skip
        return Scores(raw)

    for t, tokens in enumerate(rec.tokens_seen.tolist()):
        if t == stop_before:
            stats.stopped_at = (wc, state)
            return stats
        wc = wc.advance(tokens)
        lo, hi = int(bounds[t]), int(bounds[t + 1])
        its, n_start = rec.iteration[lo:hi], wc.n
        r = refocus(wc, state, knobs, t, iterations, recorded, sink, record_entries=record_entries, check=check)
        wc, state = r.wc, r.state
        sink.emit(StepRecorded(t, tokens, n_start, wc.n, wc.total_cost, w_max, wc.evicted_upto, r.n_applied,
                               r.n_forced, None, None, None, 0.0, 0.0, r.t_allocator_ms, 0.0))  # fmt: skip
        stats.steps += 1
        stats.allocator_ms += r.t_allocator_ms
    if stop_before == stats.steps:
        stats.stopped_at = (wc, state)
    return stats
