"""Measure a run from its events as they arrive: `MeasureSink`, what the Knobs lab waits for.

The lab's re-plan (`studio.replay.replan`) runs fast replay into a `MeasureSink`, which turns each
step's events into the focus metrics of `telemetry.metrics` as they arrive instead of materialising
per-entry rows (a 256k-token replay has ~8.5M of them; building and re-reading them
was most of the time). The numbers are the same as `telemetry.metrics` computed on the replay's
tables (a test holds them equal): per-step series of swap rate, ping-pongs, locality, sequential
score, utilization and coherence; the summary's headline numbers; and the LOD timeline binned
exactly as `telemetry.reader.Run.lod_timeline` bins a recorded run, so that recorded and re-planned
can be drawn side by side.

The per-entry metrics (locality, residency runs, coherence, adjacency of expansions) are
`telemetry.reductions.StepReducer`, the code behind `telemetry.metrics` too, fed one step per call
with the WC the allocator saw; the timeline is binned by a small compiled kernel; decision metrics
(oscillation, sequential) run on the applied decisions only, with `telemetry.metrics`.
This module writes nothing and keeps no tables of entries (except for the steps in `keep_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from contract import nodes
from contract.decisions import ACTIONS, APPLIED, EXPAND, OUTCOMES
from contract.events import DecisionsRecorded, EntriesRecorded, Event, StepRecorded
from telemetry import binning, run_metrics
from telemetry.reductions import LEVELS, StepReducer

# --------------------------------------------------------------------------------------- sink


@dataclass
class Measured:
    """What `replan` returns: per-step series (numpy columns), headline numbers, the timeline."""

    series: dict[str, dict[str, np.ndarray]]  # name -> columns, as telemetry.run_metrics.series
    summary: dict
    timeline: binning.SpanGrid | None  # its cells(): as `Run.span_heatmap`'s
    applied: dict[str, np.ndarray]  # applied decisions: step, iteration, node_id, lod_from, lod_to, action, seq
    entries: dict[int, EntriesRecorded] = field(default_factory=dict)  # the iteration-0 WC of each kept step
    approximate_lookups: int = 0
    allocator_ms: float = 0.0


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
