"""Fast replay: re-plan a recorded session with other knobs, in memory, on its recorded scores.

The allocator is a pure function, so it re-runs step by step on the same stream of tokens with the
recorded raw scores (`replay_fast`, into any `Sink`), and a knob moved in the app answers in about a
second. When the new knobs lead to an entry the recording never scored at that step, the entry takes
its node's latest earlier recorded score, else its parent's score or its children's mean, else 0, and
the replay is labelled approximate (with a count of such lookups). Fast mode has no model, so its
steps carry no NLL. Exact mode, which re-runs the whole session (scorer and base model included), and
reading and writing run folders are `studio/replay.py`.

`replan` is the Knobs lab's and the sweeps' path: fast replay into a `MeasureSink`, which measures
each step's events as they arrive instead of materialising per-entry rows (a 256k-token replay has
~8.5M of them; building and re-reading them was most of the time). Its numbers are the ones
`telemetry.metrics` gives on the replay's tables (a test holds them equal), because it measures with
the same code: the per-entry metrics (locality, residency runs, coherence, adjacency of expansions)
are `telemetry.reductions.StepReducer`, fed one step per call with the WC the allocator saw; the
decision metrics and the summary are `telemetry.run_metrics.reduced`; the LOD timeline is binned by
`telemetry.binning.SpanGrid`, as a recorded run's is, so recorded and re-planned draw side by side.
`MeasureSink` writes nothing and keeps no tables of entries (except for the steps in `keep_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import pyarrow as pa

from contract import nodes
from contract.config import PlanKnobs, RunConfig
from contract.decisions import ACTIONS, APPLIED, EXPAND, OUTCOMES
from contract.events import DecisionsRecorded, EntriesRecorded, Event, Sink, StepRecorded
from engine.allocator_types import AllocatorState
from engine.refocus import Scores, refocus
from engine.working_context import WorkingContext
from telemetry import binning, run_metrics
from telemetry.reductions import LEVELS, StepReducer

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


# --------------------------------------------------------------------------------------- measured as it runs


@dataclass
class Measured:
    """What `replan` returns: per-step series (numpy columns), headline numbers, the timeline."""

    series: dict[str, dict[str, np.ndarray]]  # name -> columns, as telemetry.run_metrics.series
    summary: dict
    timeline: binning.SpanGrid | None  # its cells(): as `Run.span_heatmap`'s
    applied: dict[str, np.ndarray]  # applied decisions: step, iteration, node_id, lod_from, lod_to, action, seq
    entries: dict[int, EntriesRecorded] = field(default_factory=dict)  # the iteration-0 WC of each kept step
    stats: ReplayStats = field(default_factory=ReplayStats)  # the replay's counts and timings (`replan` sets it)


class MeasureSink:
    """A sink for a replay's events that measures instead of storing (see the module docstring).

    `tokens` sizes the per-node state once (`telemetry.reductions`); `timeline=(width, height)` bins
    the LOD timeline (`telemetry.binning.SpanGrid`) over steps [0, n_steps) x `token_range` (default:
    the complete blocks), each cell the token-weighted mean LOD (`agg="mean"`), the finest (`"min"`) or
    the coarsest (`"max"`).
    """

    def __init__(self, *, n_steps: int, tokens: int, block_size: int, tau_expand: float,
                 timeline: tuple[int, int] | None = None, token_range: tuple[int, int] | None = None,
                 keep_steps: tuple[int, ...] = (), agg: str = "mean") -> None:  # fmt: skip
        self.bs = block_size
        # The per-entry metrics, one step per call; node keys sized once (indices at every LOD are below
        # the LOD0 count), so that the key space never grows during a replay.
        self.red = StepReducer(tau_expand, keys=(tokens // block_size + 2) * LEVELS)
        self._one, self._bounds = np.zeros(1, np.int64), np.zeros(2, np.int64)  # one group: step, rows
        self._zero = np.zeros(1, np.int64)
        self.keep = set(keep_steps)
        self.entries: dict[int, EntriesRecorded] = {}
        # Per step (filled at StepRecorded): what the steps table would hold.
        self.s_step, self.s_start, self.s_n, self.s_cost, self.s_wmax = [], [], [], [], []
        self._round: EntriesRecorded | None = None
        self._dec: list[tuple] = []  # this step's applied rows per round: (iteration, seq, node_id, lod_from, ...)
        self.applied: list[tuple] = []  # (step, *_dec row) of every step
        self.tl = None
        if timeline is not None:
            t0, t1 = token_range if token_range is not None else (0, max(1, tokens // block_size * block_size))
            self.tl = binning.SpanGrid(*timeline, (0, n_steps - 1), (t0, t1), agg)

    def emit(self, ev: Event) -> None:
        if type(ev) is EntriesRecorded:
            self._round = ev
            if ev.iteration == 0:
                self._entries0(ev)
        elif type(ev) is DecisionsRecorded:
            self._decisions(ev)
        elif type(ev) is StepRecorded:
            self._step(ev)

    def _entries0(self, ev: EntriesRecorded) -> None:
        self._one[0], self._bounds[1] = ev.step, ev.node_id.shape[0]
        self.red.entries(self._one, self._bounds, ev.node_id, ev.lod, ev.start, ev.end, ev.score)
        if self.tl is not None:
            self.tl.add(self.tl.y_of(ev.step), ev.lod, ev.start, ev.end)
        if ev.step in self.keep:
            self.entries[ev.step] = ev

    def _decisions(self, ev: DecisionsRecorded) -> None:
        d = ev.decisions
        a = np.flatnonzero(d.outcome == APPLIED)
        if a.size == 0:
            return
        a = a[np.argsort(d.seq[a], kind="stable")]  # application order
        self._dec.append((ev.iteration, d.seq[a], d.node_id[a], d.lod_from[a], d.lod_to[a], d.action[a]))
        x = a[d.action[a] == EXPAND]
        r = self._round
        if x.size and r is not None and r.step == ev.step and r.iteration == ev.iteration:
            xs, xe = nodes.node_span(d.node_id[x], self.bs)
            self._bounds[1] = r.node_id.shape[0]
            self.red.adjacency(self._bounds, r.lod, r.start, r.end, np.zeros(x.size, np.int64), xs, xe,
                               d.lod_from[x].astype(np.int8))  # fmt: skip

    def _step(self, ev: StepRecorded) -> None:
        if self._dec:  # this step's applied edits, in application order, for coherence
            node, action = self._dec[0][2], self._dec[0][5]
            if len(self._dec) > 1:
                node, action = np.concatenate([r[2] for r in self._dec]), np.concatenate([r[5] for r in self._dec])
            self._bounds[1] = node.shape[0]
            self.red.decisions(self._zero, self._bounds[1:], node, action)
        self.s_step.append(ev.step)
        self.s_start.append(ev.n_entries_start)
        self.s_n.append(ev.n_entries)
        self.s_cost.append(ev.wc_cost)
        self.s_wmax.append(ev.w_max)
        self.applied.extend((ev.step, *r) for r in self._dec)  # one tuple of arrays per round
        self._dec = []

    # ------------------------------------------------------------------------------- results

    def applied_columns(self) -> dict[str, np.ndarray]:
        rounds = self.applied
        sizes = np.array([r[2].shape[0] for r in rounds], np.int64)

        def cat(j: int, dtype) -> np.ndarray:
            return np.concatenate([r[j] for r in rounds]).astype(dtype) if rounds else np.zeros(0, dtype)

        return {
            "step": np.repeat(np.array([r[0] for r in rounds], np.int32), sizes),
            "iteration": np.repeat(np.array([r[1] for r in rounds], np.int16), sizes),
            "seq": cat(2, np.int32),
            "node_id": cat(3, np.int64),
            "lod_from": cat(4, np.int8),
            "lod_to": cat(5, np.int8),
            "action": cat(6, np.int8),
        }

    def result(self, *, osc_window: int = 5) -> Measured:
        """Every metric, by the code that measures a recorded run (`telemetry.run_metrics.reduced`) over
        the steps table the replay would have written, its applied decisions and the fed reducer."""
        i32 = lambda xs: np.array(xs, np.int32)  # noqa: E731
        steps = pa.table({"step": i32(self.s_step), "n_entries_start": i32(self.s_start), "n_entries": i32(self.s_n),
                          "wc_cost": i32(self.s_cost), "w_max": i32(self.s_wmax)})  # fmt: skip
        s = run_metrics.reduced(steps, decisions_table(self.applied_columns()), self.red, block_size=self.bs,
                                osc_window=osc_window)  # fmt: skip
        tables = {"swap_rate": s.swap_rate, "oscillation": s.ping_pongs, "locality": s.locality,
                  "sequential": s.sequential, "utilization": s.utilization, "coherence": s.coherence}  # fmt: skip
        series = {k: {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names} for k, t in tables.items()}
        summary = {"steps": steps.num_rows, **s.numbers, "residency_runs": s.residency["runs"],
                   "residency_open_runs": s.residency["open_runs"]}  # fmt: skip
        return Measured(series, summary, self.tl, self.applied_columns(), self.entries)


def decisions_table(cols: dict[str, np.ndarray]) -> pa.Table:
    """Applied decision columns -> a decisions-shaped pyarrow Table (public action/outcome names)."""
    n = cols["step"].shape[0]
    return pa.table(
        {
            "step": cols["step"],
            "iteration": cols["iteration"],
            "node_id": cols["node_id"],
            "lod_from": cols["lod_from"],
            "lod_to": cols["lod_to"],
            "action": pa.array(ACTIONS).take(pa.array(cols["action"], pa.int8())),
            "outcome": pa.array([OUTCOMES[APPLIED]] * n, pa.string()),
            "seq": cols["seq"],
        }
    )


def replan(rec: Recording, cfg: RunConfig, *, timeline: tuple[int, int] | None = None,
           token_range: tuple[int, int] | None = None, keep_steps: tuple[int, ...] = (),
           osc_window: int = 5, agg: str = "mean") -> Measured:  # fmt: skip
    """Re-plan recording `rec` under `cfg` and measure it (`MeasureSink`). No files written."""
    n = int(rec.tokens_seen.shape[0])
    tokens = int(rec.tokens_seen[-1]) if n else 0
    sink = MeasureSink(n_steps=max(n, 1), tokens=tokens, block_size=cfg.tree.block_size,
                       tau_expand=cfg.allocator.tau_expand, timeline=timeline, token_range=token_range,
                       keep_steps=keep_steps, agg=agg)  # fmt: skip
    stats = replay_fast(rec, cfg, sink)
    out = sink.result(osc_window=osc_window)
    out.stats = stats
    return out
