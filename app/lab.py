"""The knobs as the app shows them, and the Knobs lab's logic: re-plan a recorded session with other
knobs, in memory, and measure both sides.

A knob's type, range and meaning are declared once, on its config field (`contract.config.knob`);
`knob_widget(name)` turns them into what an input needs (kind, closed bounds, help), for this page
and the Record page alike, so that no page restates a range. `LAB_KNOBS` lists the lab's knobs.

`replan(recording, overrides, grid)` is the one entry point the page uses: fast replay (recorded
raw scores) measured as it runs by `studio.fast_replay.replan`, which computes the metrics and the
binned LOD timeline step by step without building per-entry tables (the same numbers as
`telemetry.metrics` on the replay's tables; tests hold them equal). `measure(steps, entries,
decisions, block_size, tau)` computes the recorded side from the recorded tables with
`telemetry.run_metrics.summarize`, so identical knobs give identical numbers.

Pure: no streamlit, no files (saving a replay run is `studio.replay.replay_run`).
"""

from __future__ import annotations

import re
import time
import typing
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from contract.config import RunConfig, apply_overrides, changed_knobs, knob_spec
from studio.fast_replay import FAST_KNOB_SECTIONS, Recording, ReplayError, ReplayStats, replay_fast
from studio.fast_replay import replan as replan_measured
from studio.replay import load_recording, replay_run
from telemetry import registry, run_metrics
from telemetry.heatmap import heatmap_of_table
from telemetry.memory import LAB_ENTRIES, ArrowSink
from telemetry.runs import RunReadError

# The knobs the page shows, in this order, by their one name. Type, range and meaning come from the
# knob's declaration (`contract.config.knob_spec`), not from here.
LAB_KNOBS: tuple[str, ...] = (
    "allocator.cooldown_steps",
    "allocator.hysteresis_margin",
    "allocator.hysteresis_steps",
    "allocator.tau_expand",
    "allocator.tau_collapse",
    "allocator.sharpen_gamma",
    "allocator.interp_gate",
    "allocator.shift_kernel",
    "allocator.max_edits",
    "allocator.iterations",
    "wc.w_max",
    "wc.protect_recent",
)


@dataclass(frozen=True)
class KnobWidget:
    """How a page draws one knob: kind ("int", "float" or "pair": left,right), the closed bounds a
    number input can enforce (None where the range is open or unbounded: validation still refuses
    the value, with its one line), and the help text (meaning and what it allows)."""

    name: str
    kind: str
    lo: float | None
    hi: float | None
    help: str


def knob_widget(name: str) -> KnobWidget:
    typ, spec = knob_spec(name)
    kind = "pair" if typing.get_origin(typ) is tuple else "int" if typ is int else "float"
    lo = None if spec.lo is None or spec.lo_open or kind == "pair" else typ(spec.lo)
    hi = None if spec.hi is None or spec.hi_open or kind == "pair" else typ(spec.hi)
    allowed = "; ".join(spec.allowed())
    return KnobWidget(name, kind, lo, hi, f"{spec.help} ({allowed})" if allowed else spec.help)


def choices(name: str) -> tuple[str, ...]:
    """The values a text knob allows (e.g. `scorer.name`), from its declaration."""
    return knob_spec(name)[1].choices


def defaults() -> dict[str, object]:
    """Every knob's default, by its one name."""
    return RunConfig().flat()


# Metric rows of the comparison table: (summary key, label), from the one registry. A fast re-plan has
# no base model, so the metrics that need its NLL are left out.
SUMMARY_METRICS: tuple[tuple[str, str], ...] = tuple((m.key, m.title) for m in registry.METRICS if not m.nll)

# Columns of the decisions table the metrics read (the metrics count applied edits only).
_DECISION_COLS = ("step", "iteration", "node_id", "lod_from", "lod_to", "action", "outcome", "seq")


@dataclass
class LabResult:
    """One side of the comparison (recorded or re-planned)."""

    summary: dict  # SUMMARY_METRICS keys -> float | int | None
    per_step: pd.DataFrame  # step, tokens_seen, swap_rate, ping_pongs, locality, utilization, coherence
    overrides: list[str] = field(default_factory=list)
    changed: dict = field(default_factory=dict)  # knob -> new value, vs the recording's config
    stats: ReplayStats | None = None  # None for the recorded side
    wall_s: float = 0.0
    cells: pd.DataFrame | None = None  # the re-planned LOD timeline, binned as the reader bins a run, when asked


def config_for(recording: Recording, overrides: list[str]) -> tuple[RunConfig, dict]:
    """The recording's config with `overrides` applied, and what changed. ValueError (one line) if
    a value is bad, a cross-field rule breaks, or a knob is one fast replay cannot change."""
    cfg = apply_overrides(recording.config, list(overrides))
    changed = changed_knobs(recording.config, cfg)
    bad = [k for k in changed if k.split(".")[0] not in FAST_KNOB_SECTIONS]
    if bad:
        raise ValueError(f"the knobs lab re-plans with the recorded scores: it cannot change {', '.join(bad)}")
    return cfg, changed


def replan(recording: Recording, overrides: list[str], grid: tuple[int, int] | None = None) -> LabResult:
    """Re-plan `recording` with `overrides` (`section.field=value`) and measure it. Raises ValueError.

    `grid=(w, h)`: also bin the re-planned LOD timeline (finest LOD per cell, as `Run.lod_timeline(agg="min")`) over
    steps [0, last] x tokens [0, tokens read], into `LabResult.cells`.
    """
    t0 = time.perf_counter()
    cfg, changed = config_for(recording, overrides)
    if cfg.session.entries_every == 1:
        return _replan_measured(recording, cfg, list(overrides), changed, grid, t0)
    # A recording with sparse entries: measure on its recorded steps only, through tables (rare, slower).
    sink = ArrowSink(("steps", "entries", "decisions"), columns={"entries": LAB_ENTRIES, "decisions": _DECISION_COLS})
    stats = replay_fast(recording, cfg, sink)
    steps, entries, decisions = sink.table("steps"), sink.table("entries"), sink.table("decisions")
    if cfg.session.entries_every > 1:  # measure the steps the recording measured, or the sides differ by cadence
        entries = entries.filter(pc.is_in(entries.column("step"), pa.array(np.unique(recording.step))))
    res = measure(steps, entries, decisions, cfg.tree.block_size, cfg.allocator.tau_expand)
    res.overrides, res.changed, res.stats = list(overrides), changed, stats
    n, tokens = int(recording.tokens_seen.size), int(recording.tokens_seen[-1]) if recording.tokens_seen.size else 0
    if grid is not None and n and tokens:  # binned by the reader's query, over the in-memory rows
        (w, h), ext = grid, {"t0": 0, "t1": tokens, "s0": 0, "s1": n - 1}
        t = heatmap_of_table(entries, "lod", w, h, (0, n - 1), (0, tokens), agg="min")
        res.cells = pd.DataFrame({k: t.column(k).to_numpy() for k in _CELL_COLS})
        res.cells.attrs["extent"] = {**ext, "w": min(w, tokens), "h": min(h, n)}
    res.wall_s = time.perf_counter() - t0
    return res


_CELL_COLS = ("x_bin", "y_bin", "token_lo", "token_hi", "step_lo", "step_hi", "value")


def _replan_measured(rec: Recording, cfg: RunConfig, overrides: list[str], changed: dict,
                     grid: tuple[int, int] | None, t0: float) -> LabResult:  # fmt: skip
    n = int(rec.tokens_seen.shape[0])
    tokens = int(rec.tokens_seen[-1]) if n else 0
    m = replan_measured(rec, cfg, timeline=grid if n and tokens else None, token_range=(0, max(tokens, 1)),
                              agg="min")  # fmt: skip
    s = m.series
    summary = {key: m.summary.get(key) for key, _ in SUMMARY_METRICS}
    steps = s["swap_rate"]["step"].astype(np.int64)
    df = pd.DataFrame({"step": steps, "tokens_seen": rec.tokens_seen[: steps.size]})
    df["ping_pongs"] = s["oscillation"]["ping_pongs"].astype(np.int64)
    df["swap_rate"] = s["swap_rate"]["swap_rate"]
    for name in ("locality", "coherence"):
        df[name] = df["step"].map(pd.Series(s[name][name], index=s[name]["step"]))
    df["utilization"] = s["utilization"]["utilization"]
    cells = None
    if m.timeline is not None:
        c = m.timeline.cells()
        cells = pd.DataFrame({k: c[k] for k in _CELL_COLS})
        (s0, s1), (a, b) = m.timeline.step_range, m.timeline.token_range
        hh, ww = m.timeline.h, m.timeline.w
        cells.attrs["extent"] = {"t0": a, "t1": b, "s0": s0, "s1": s1, "w": ww, "h": hh}
    return LabResult(summary=summary, per_step=df, overrides=overrides, changed=changed, stats=m.stats,
                     wall_s=time.perf_counter() - t0, cells=cells)  # fmt: skip


def _series(t: pa.Table, col: str) -> np.ndarray:
    c = t.column(col)
    if pa.types.is_boolean(c.type):
        c = c.cast(pa.float64())
    return c.cast(pa.float64()).fill_null(float("nan")).to_numpy()


def measure(steps: pa.Table, entries: pa.Table, decisions: pa.Table, block_size: int, tau: float) -> LabResult:
    """The lab's metrics over one side's tables: `telemetry.run_metrics.summarize`, the code behind the
    CLI's and the Metrics page's `summary`, so the same run gives the same numbers everywhere."""
    s = run_metrics.summarize(steps, decisions, [entries], block_size=block_size, tau=tau)
    summary = {key: s.numbers[key] for key, _ in SUMMARY_METRICS}
    per_step = _per_step(steps, s.swap_rate, s.oscillation_events, s.locality, s.utilization, s.coherence)
    return LabResult(summary=summary, per_step=per_step)


def _per_step(steps, swap, osc_events, loc, util, coh) -> pd.DataFrame:
    df = pd.DataFrame({"step": steps.column("step").to_numpy(), "tokens_seen": steps.column("tokens_seen").to_numpy()})
    df = df.sort_values("step", kind="stable").reset_index(drop=True)
    pp = pd.Series(osc_events.column("step").to_numpy()).value_counts()
    df["ping_pongs"] = df["step"].map(pp).fillna(0).astype("int64")
    for t, col in ((swap, "swap_rate"), (loc, "locality"), (util, "utilization"), (coh, "coherence")):
        s = pd.Series(_series(t, col), index=t.column("step").to_numpy())
        df[col] = df["step"].map(s[~s.index.duplicated()])
    return df


MAX_ENTRY_ROWS = 20_000_000  # the lab holds a recording's scores and its measured tables in memory (~1 GB here)


LAB_ERRORS = (ReplayError, RunReadError, ValueError, KeyError)  # a run the lab cannot re-plan: one line


def load(path: str) -> Recording:
    """The recording the lab re-plans: every step's recorded raw scores (see `check_size` first)."""
    return load_recording(path)


def save_replay(parent, out, sets: list[str]) -> dict:
    """Write the re-plan with `sets` as a new run folder (a fast replay); its summary dict."""
    return replay_run(parent, out, sets)


def check_size(run) -> None:
    """ValueError (one line) when the run is too long for the lab to hold in memory; the CLI's
    replay streams nothing either, but runs outside the server."""
    n = run.n_rows("entries")
    if n > MAX_ENTRY_ROWS:
        raise ValueError(
            f"{run.name} has {n:,} entry rows, more than the {MAX_ENTRY_ROWS:,} the Knobs lab holds in memory; "
            f"re-plan it with `python -m engine replay {run.path} --out OUT --set ...`"
        )


def recorded_side(run) -> LabResult:
    """The recorded run's own tables measured like a re-plan (`run` is a `telemetry.reader.Run`)."""
    steps = run.table("steps")
    entries = run.table("entries", list(LAB_ENTRIES))
    decisions = run.table("decisions", list(_DECISION_COLS), where="outcome = 'applied'")
    return measure(steps, entries, decisions, int(run.knob("tree.block_size", 32)),
                   float(run.knob("allocator.tau_expand", 0.2)))  # fmt: skip


def compare_table(recorded: dict, replanned: dict) -> pd.DataFrame:
    """metric | recorded | re-planned | delta, one row per SUMMARY_METRICS entry (None where undefined)."""
    rows = []
    for key, label in SUMMARY_METRICS:
        a, b = recorded.get(key), replanned.get(key)
        delta = (b - a) if a is not None and b is not None else None
        rows.append({"metric": label, "key": key, "recorded": a, "re-planned": b, "delta": delta})
    return pd.DataFrame(rows)


def knob_values(cfg: RunConfig) -> dict[str, object]:
    """Current value of every lab knob (shift_kernel as a (left, right) tuple)."""
    flat = cfg.flat()
    return {name: tuple(flat[name]) if knob_widget(name).kind == "pair" else flat[name] for name in LAB_KNOBS}


def format_value(value: object) -> str:
    """A knob value in `--set` syntax (what the URL carries)."""
    if isinstance(value, tuple | list):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value) if value != int(value) else f"{value:.1f}"
    return str(value)


def overrides_from(values: dict[str, object], base: RunConfig) -> dict[str, str]:
    """`values` (knob -> widget value) that differ from `base`, as `--set` strings by knob name.

    A pair knob may come as text ("0.25,0"): text that does not parse is passed on unchanged, so
    that `apply_overrides` names the problem in its one-line error.
    """
    rec = knob_values(base)
    out = {}
    for name, v in values.items():
        if isinstance(v, str):
            try:
                v = tuple(float(x) for x in v.replace("(", "").replace(")", "").split(",") if x.strip())
            except ValueError:
                out[name] = v
                continue
        if isinstance(v, tuple):
            same = v == tuple(float(x) for x in rec[name])
        else:
            same = v == rec[name]
        if not same:
            out[name] = format_value(v)
    return out


def replay_name(parent: str, changed: dict) -> str:
    """A folder name for a saved replay: the parent's name plus the changed knobs (`cooldown_steps4`)."""
    parts = [parent]
    for k, v in sorted(changed.items()):
        parts.append(k.split(".")[-1] + format_value(v))
    name = re.sub(r"[^A-Za-z0-9_.,=-]+", "", "-".join(parts)).replace(",", "_").replace("=", "")
    name = name.lstrip("._-") or "replay"
    return name[:120]
