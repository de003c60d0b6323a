"""Re-plan a recording and measure it in the same pass: what the knobs lab waits for.

`replan(rec, cfg)` runs fast replay (`engine.replay.replay_fast`) into a `MeasureSink`, which turns
each step's events into the focus metrics of `telemetry.metrics` as they arrive instead of
materialising per-entry rows (a 256k-token replay has ~8.5M of them; building and re-reading them
was most of the time). The numbers are the same as `telemetry.metrics` computed on the replay's
tables (a test holds them equal): per-step series of swap rate, ping-pongs, locality, sequential
score, utilization and coherence; the summary's headline numbers; and the LOD timeline binned
exactly as `telemetry.reader.Run.lod_timeline` bins a recorded run, so that recorded and re-planned
can be drawn side by side.

Per-entry work (locality, residency runs, coherence candidates, adjacency of expansions, timeline
binning) runs in small compiled kernels, once per step, over the WC the allocator saw; decision
metrics (oscillation, sequential) run on the applied decisions only, with `telemetry.metrics`.
This module writes nothing and keeps no tables of entries (except for the steps in `keep_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from contract import nodes
from contract.config import RunConfig
from contract.decisions import ACTIONS, APPLIED, EVICT, EXPAND, OUTCOMES
from contract.events import DecisionsRecorded, EntriesRecorded, Event, StepRecorded
from telemetry import binning

# ------------------------------------------------------------------------------------ kernels


_SHIFT, _MASK = nodes.LOD_SHIFT, nodes.INDEX_MASK


@numba.njit(cache=True, nogil=True)
def _keys(node_id, width, out):
    """Dense per-node keys `lod * width + index` of node ids."""
    for i in range(node_id.shape[0]):
        out[i] = (node_id[i] >> _SHIFT) * width + (node_id[i] & _MASK)
    return out[: node_id.shape[0]]


@numba.njit(cache=True, nogil=True)
def _entries_step(t, lod, start, end, score, node_id, width, tau, since, seen_at, prev_keys, n_prev, prev_t, closed,
                  n_closed, key, cand):  # fmt: skip
    """One step's iteration-0 WC: residency runs (closed ones appended to `closed`), locality counts,
    coherence candidates (keys into `cand`). Returns (n_closed, detail_blocks, runs, n_cand)."""
    n = lod.shape[0]
    _keys(node_id, width, key)
    for i in range(n):  # a node not present at the previous recorded step starts a run here
        k = key[i]
        if prev_t < 0 or seen_at[k] != prev_t:
            since[k] = t
    for i in range(n):
        seen_at[key[i]] = t
    for j in range(n_prev):  # present before, absent now: its run closed at this step
        k = prev_keys[j]
        if seen_at[k] != t:
            closed[n_closed] = t - since[k]
            n_closed += 1
    detail, runs, nc = 0, 0, 0
    for i in range(n):
        prev_keys[i] = key[i]
        if lod[i] == 0:
            detail += 1
            if not (i > 0 and lod[i - 1] == 0 and end[i - 1] == start[i]):
                runs += 1
        elif score[i] > tau:
            cand[nc] = key[i]
            nc += 1
    return n_closed, detail, runs, nc


@numba.njit(cache=True, nogil=True)
def _adjacent(lod, start, end, x_start, x_end, x_lod):
    """How many expansions (spans [x_start, x_end) at LOD x_lod) touch a finer entry of this WC."""
    n, hits = lod.shape[0], 0
    for j in range(x_start.shape[0]):
        hit = False
        p = np.searchsorted(end, x_start[j])  # entries are in token order: ends ascend
        if p < n and end[p] == x_start[j] and lod[p] < x_lod[j]:
            hit = True
        q = np.searchsorted(start, x_end[j])
        if q < n and start[q] == x_end[j] and lod[q] < x_lod[j]:
            hit = True
        hits += hit
    return hits


@numba.njit(cache=True, nogil=True)
def _coherence(cand, nc, d_node, d_action, width, last):
    """Candidates whose node's last applied edit of the step (d_* in application order) is an expand;
    evictions are not edits of detail and are skipped."""
    for j in range(d_node.shape[0]):
        if d_action[j] != EVICT:  # (module constants are compile-time constants to numba)
            last[(d_node[j] >> _SHIFT) * width + (d_node[j] & _MASK)] = d_action[j]
    hits = 0
    for i in range(nc):
        hits += last[cand[i]] == EXPAND
    for j in range(d_node.shape[0]):
        last[(d_node[j] >> _SHIFT) * width + (d_node[j] & _MASK)] = -1
    return hits


# `telemetry.binning`'s geometry, compiled as it is: the same formulas as the reader's SQL.
_bin_of, _bin_start = numba.njit(cache=True)(binning.bin_of), numba.njit(cache=True)(binning.bin_start)


@numba.njit(cache=True, nogil=True)
def _bin_step(yb, lod, start, end, t0, t1, w, span, sums, weights, finest):
    """Spread one step's entries over the token bins of row `yb`, token-weighted (as the reader's SQL):
    `sums` gets LOD x tokens covered, or with `finest` the smallest LOD present (the reader's "min")."""
    for i in range(lod.shape[0]):
        s, e = max(start[i], t0), min(end[i], t1)
        if e <= s:
            continue
        x0, x1 = _bin_of(s, t0, span, w), _bin_of(e - 1, t0, span, w)
        for xb in range(x0, x1 + 1):
            lo, hi = _bin_start(xb, t0, span, w), _bin_start(xb + 1, t0, span, w)
            ov = min(e, hi) - max(s, lo)
            if not finest:
                sums[yb, xb] += lod[i] * ov
            elif lod[i] < sums[yb, xb]:
                sums[yb, xb] = lod[i]
            weights[yb, xb] += ov


# --------------------------------------------------------------------------------------- sink


@dataclass
class Timeline:
    """LOD timeline bins of a re-planned run, in `telemetry.reader` heatmap terms."""

    step_range: tuple[int, int]  # inclusive
    token_range: tuple[int, int]  # half-open
    sums: np.ndarray  # float64[h, w] token-step-weighted LOD sums (agg "mean"), or the finest LOD (agg "min")
    weights: np.ndarray  # int64[h, w] token-steps covered
    agg: str = "mean"

    def cells(self) -> dict[str, np.ndarray]:
        """Non-empty cells with the columns of `Run.span_heatmap` (x_bin, y_bin, token_lo, token_hi,
        step_lo, step_hi, value, weight), in (y_bin, x_bin) order."""
        (s0, s1), (t0, t1) = self.step_range, self.token_range
        h, w = self.sums.shape
        yb, xb = np.nonzero(self.weights)
        return {
            "x_bin": xb.astype(np.int32),
            "y_bin": yb.astype(np.int32),
            **binning.cell_edges(xb, yb, t0, t1, s0, s1, w, h),
            "value": (self.sums[yb, xb] / (self.weights[yb, xb] if self.agg == "mean" else 1)).astype(np.float32),
            "weight": self.weights[yb, xb].astype(np.int64),
        }


@dataclass
class Measured:
    """What `replan` returns: per-step series (numpy columns), headline numbers, the timeline."""

    series: dict[str, dict[str, np.ndarray]]  # name -> columns, as telemetry.run_metrics.series
    summary: dict
    timeline: Timeline | None
    applied: dict[str, np.ndarray]  # applied decisions: step, iteration, node_id, lod_from, lod_to, action, seq
    entries: dict[int, EntriesRecorded] = field(default_factory=dict)  # the iteration-0 WC of each kept step
    approximate_lookups: int = 0
    allocator_ms: float = 0.0


class MeasureSink:
    """A sink for a replay's events that measures instead of storing (see the module docstring).

    `n_steps` and `tokens` size the per-node state (a node key is `lod * width + index`);
    `timeline=(width, height)` bins the LOD timeline over steps [0, n_steps) x `token_range` (default:
    the complete blocks), each cell the token-weighted mean LOD (`agg="mean"`) or the finest (`"min"`).
    """

    def __init__(self, *, n_steps: int, tokens: int, block_size: int, max_lod: int, tau_expand: float,
                 timeline: tuple[int, int] | None = None, token_range: tuple[int, int] | None = None,
                 keep_steps: tuple[int, ...] = (), agg: str = "mean") -> None:  # fmt: skip
        if agg not in ("mean", "min"):
            raise ValueError(f"timeline agg must be 'mean' or 'min', got {agg!r}")
        self.bs, self.tau = block_size, np.float32(tau_expand)
        self.width = tokens // block_size + 2  # indices at every LOD are below the LOD0 count
        k = self.width * (max_lod + 1)
        self.since, self.seen_at = np.zeros(k, np.int32), np.full(k, -1, np.int32)
        self.last = np.full(k, -1, np.int8)
        self.prev_keys, self.n_prev, self.prev_t = np.zeros(0, np.int64), 0, -1
        self.closed, self.n_closed = np.zeros(1 << 16, np.int32), 0
        self.cand, self.key, self.nc = np.zeros(0, np.int64), np.zeros(0, np.int64), 0
        self.keep = set(keep_steps)
        self.entries: dict[int, EntriesRecorded] = {}
        # Per step (filled at StepRecorded): counts of each per-step metric.
        self.s_step, self.s_applied, self.s_start, self.s_cost, self.s_wmax = [], [], [], [], []
        self.s_detail, self.s_runs, self.s_cand, self.s_finer, self.s_n = [], [], [], [], []
        self._detail = self._runs = self._n = 0
        self.adj_n = self.adj_hits = 0
        self._round: EntriesRecorded | None = None
        self._dec: list[tuple] = []  # this step's applied rows per round: (iteration, seq, node_id, lod_from, ...)
        self.applied: list[tuple] = []  # (step, *_dec row) of every step
        self.tl = None
        if timeline is not None:
            w, h = timeline
            t0, t1 = token_range if token_range is not None else (0, max(1, tokens // block_size * block_size))
            span, n = t1 - t0, n_steps
            self.tl_geom = (t0, t1, min(w, span), span, min(h, n), n)
            hh, ww = min(h, n), min(w, span)
            sums = np.zeros((hh, ww)) if agg == "mean" else np.full((hh, ww), 127.0)
            self.tl = Timeline((0, n_steps - 1), (t0, t1), sums, np.zeros((hh, ww), np.int64), agg)

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
        n = ev.node_id.shape[0]
        if self.prev_keys.shape[0] < n:
            self.prev_keys = np.concatenate([self.prev_keys, np.zeros(2 * n, np.int64)])
            self.cand, self.key = (
                np.zeros(self.prev_keys.shape[0], np.int64),
                np.zeros(self.prev_keys.shape[0], np.int64),
            )
        if self.closed.shape[0] < self.n_closed + self.n_prev:
            self.closed = np.concatenate([self.closed, np.zeros(self.closed.shape[0] + self.n_prev, np.int32)])
        self.n_closed, self._detail, self._runs, self.nc = _entries_step(
            ev.step, ev.lod, ev.start, ev.end, ev.score, ev.node_id, self.width, self.tau, self.since, self.seen_at,
            self.prev_keys, self.n_prev, self.prev_t, self.closed, self.n_closed, self.key, self.cand)  # fmt: skip
        self.n_prev, self.prev_t, self._n = n, ev.step, n
        if self.tl is not None:
            t0, t1, w, span, h, nsteps = self.tl_geom
            yb = binning.bin_of(ev.step, 0, nsteps, h)
            _bin_step(yb, ev.lod, ev.start, ev.end, t0, t1, w, span, self.tl.sums, self.tl.weights,
                      self.tl.agg == "min")  # fmt: skip
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
            lod, idx = nodes.node_lod(d.node_id[x]), nodes.node_index(d.node_id[x])
            xs = nodes.node_start(lod, idx, self.bs)
            xe = xs + nodes.span_tokens(lod, self.bs)
            self.adj_hits += _adjacent(r.lod, r.start, r.end, xs, xe, d.lod_from[x].astype(np.int8))
            self.adj_n += x.size

    def _step(self, ev: StepRecorded) -> None:
        finer = 0
        if self._dec and self.nc:
            node, action = self._dec[0][2], self._dec[0][5]
            if len(self._dec) > 1:
                node, action = np.concatenate([r[2] for r in self._dec]), np.concatenate([r[5] for r in self._dec])
            finer = _coherence(self.cand, self.nc, node, action, self.width, self.last)
        self.s_step.append(ev.step)
        self.s_applied.append(ev.n_applied)
        self.s_start.append(ev.n_entries_start)
        self.s_cost.append(ev.wc_cost)
        self.s_wmax.append(ev.w_max)
        self.s_detail.append(self._detail)
        self.s_runs.append(self._runs)
        self.s_cand.append(self.nc)
        self.s_finer.append(finer)
        self.s_n.append(self._n)
        self.applied.extend((ev.step, *r) for r in self._dec)  # one tuple of arrays per round
        self._dec, self.nc, self._detail, self._runs, self._n = [], 0, 0, 0, 0

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
        from telemetry import metrics  # pyarrow: imported here, so that importing this module stays light

        step = np.array(self.s_step, np.int32)
        applied = np.array(self.s_applied, np.float64)
        start = np.array(self.s_start, np.float64)
        detail, runs = np.array(self.s_detail, np.int32), np.array(self.s_runs, np.int32)
        cand, finer = np.array(self.s_cand, np.int32), np.array(self.s_finer, np.int32)
        cost, wmax = np.array(self.s_cost, np.float64), np.array(self.s_wmax, np.float64)
        loc = 1.0 - (runs - 1.0) / np.maximum(1.0, detail - 1.0)
        # As telemetry.metrics: locality has a row per step with a WC, coherence per step with a candidate.
        has_wc, has_cand = np.array(self.s_n, np.int64) > 0, cand > 0
        dec = decisions_table(self.applied_columns())
        osc = metrics.oscillation(dec, osc_window, top=5)
        ev = metrics.oscillation_events(dec, osc_window)
        pp = np.bincount(ev.column("step").to_numpy() - step[0], minlength=step.size) if step.size else step
        seq = metrics.sequential(dec, self.bs)
        closed = self.closed[: self.n_closed].astype(np.float64)
        n_open = int(self.n_prev)
        series = {
            "swap_rate": {"step": step, "applied": applied.astype(np.int32), "entries_start": start,
                          "swap_rate": applied / np.maximum(start, 1.0)},
            "oscillation": {"step": step, "ping_pongs": pp.astype(np.int32)},
            "locality": {"step": step[has_wc], "detail_blocks": detail[has_wc], "runs": runs[has_wc],
                         "locality": np.where(detail > 0, loc, np.nan)[has_wc]},
            "sequential": {"step": seq.column("step").to_numpy(), "sequential": seq.column("sequential").to_numpy()},
            "utilization": {"step": step, "utilization": cost / np.maximum(wmax, 1.0)},
            "coherence": {"step": step[has_cand], "candidates": cand[has_cand], "finer": finer[has_cand],
                          "coherence": (finer / np.maximum(cand, 1.0))[has_cand]},
        }  # fmt: skip
        n_cand = int(cand.sum())
        summary = {
            "steps": int(step.size),
            "swap_rate": metrics.mean_of(series["swap_rate"]["swap_rate"]),
            "ping_pongs": osc["ping_pongs"],
            "applied_edits": osc["applied_edits"],
            "ping_pongs_per_edit": osc["per_edit"],
            "worst_nodes": osc["worst"].to_pylist(),
            "locality": metrics.mean_of(series["locality"]["locality"]),
            "adjacent_share": self.adj_hits / self.adj_n if self.adj_n else None,
            "sequential_score": metrics.mean_of(series["sequential"]["sequential"].astype(np.float64)),
            "residency_mean": float(closed.mean()) if closed.size else None,
            "residency_p95": float(np.percentile(closed, 95)) if closed.size else None,
            "residency_runs": int(closed.size),
            "residency_open_runs": n_open,
            "utilization": metrics.mean_of(series["utilization"]["utilization"]),
            "coherence": int(finer.sum()) / n_cand if n_cand else None,
        }
        return Measured(series, summary, self.tl, self.applied_columns(), self.entries)


def decisions_table(cols: dict[str, np.ndarray]):
    """Applied decision columns -> a decisions-shaped pyarrow Table (public action/outcome names)."""
    import pyarrow as pa

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


def replan(rec, cfg: RunConfig, *, timeline: tuple[int, int] | None = None,
           token_range: tuple[int, int] | None = None, keep_steps: tuple[int, ...] = (),
           osc_window: int = 5, agg: str = "mean") -> Measured:  # fmt: skip
    """Re-plan recording `rec` (engine.replay.Recording) under `cfg` and measure it. No files written."""
    from engine.replay import replay_fast

    n = int(rec.tokens_seen.shape[0])
    tokens = int(rec.tokens_seen[-1]) if n else 0
    sink = MeasureSink(n_steps=max(n, 1), tokens=tokens, block_size=cfg.tree.block_size, max_lod=cfg.tree.max_lod,
                       tau_expand=cfg.allocator.tau_expand, timeline=timeline, token_range=token_range,
                       keep_steps=keep_steps, agg=agg)  # fmt: skip
    stats = replay_fast(rec, cfg, sink)
    out = sink.result(osc_window=osc_window)
    out.approximate_lookups, out.allocator_ms = stats.approximate_lookups, stats.allocator_ms
    return out
