"""Focus metrics of a run: `series(run, name)` (one per-step metric), `summary(run)` (the headline
numbers), `residency_runs_of(run)`, and `summarize`, the one computation of every number of the
registry from a run's tables (a run folder's, or the Knobs lab's in-memory ones).

`series`, `summary` and `residency_runs_of` fetch the tables from a run (anything with `.table()`
and `.knob()`, e.g. `telemetry.reader.Run`) and take knobs from its manifest. They read the entries
table, by far the largest, in batches of whole steps when the run offers `.batches()` (the reader
does), so their memory is bounded by a batch, the steps table and the applied decisions, not by the
run's length: every per-entry metric is a per-step (or per-round) quantity, and residency runs are
stitched across batch edges.

This module defines no metric (the per-step functions are `telemetry.metrics`) and names none (the
keys, labels and better directions are `telemetry.registry`); it reads a run only through the run's
own methods, never a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from telemetry.arrays import _applied, _first_iteration
from telemetry.metrics import (
    _entry_counts,
    coherence_table,
    delta_nll,
    feed,
    feed_adjacency,
    locality_table,
    mean_of,
    oscillation,
    oscillation_events,
    ping_pongs_per_step,
    runs_table,
    sequential,
    swap_rate,
    utilization,
)
from telemetry.reductions import StepReducer, residency_of
from telemetry.schema import SCHEMAS

_E_COLS = ["step", "iteration", "node_id", "lod", "start", "end", "score"]
_D_COLS = ["step", "iteration", "node_id", "lod_from", "lod_to", "action", "outcome", "seq"]


def _applied_decisions(run) -> pa.Table:
    # Every metric counts applied edits only, and a run holds orders of magnitude more refused
    # candidates (10M rows against tens of thousands at 8,000 steps): filter in DuckDB, not in numpy.
    return run.table("decisions", _D_COLS, where="outcome = 'applied'")


def _ctx(run) -> dict:
    return {"block_size": _knob(run, "tree.block_size", 32, int), "tau": _knob(run, "allocator.tau_expand", 0.2, float)}


def _knob(run, name: str, default: float, kind: type) -> float:
    """A knob from the run's manifest, checked: ValueError naming the run, the knob and its value."""
    v = run.knob(name, default)
    ok = (int, float) if kind is float else (int,)
    if type(v) not in ok or (kind is int and v < 1):
        what = "a whole number >= 1" if kind is int else "a number"
        raise ValueError(f"{getattr(run, 'path', run)}: knob {name} in the manifest is {v!r}, expected {what}")
    return kind(v)


CHUNK_ROWS = 2_000_000  # entry rows per batch: ~60 MB of the columns read, a few times that in temporaries


def _entry_batches(run, columns: list[str], rows: int = CHUNK_ROWS):
    """The run's entries in batches of whole steps (`Run.batches`), or as one table from a plain
    `.table()`; one empty table when there are none, so that callers always get a result."""
    if not hasattr(run, "batches"):
        yield run.table("entries", columns)
        return
    empty = True
    for batch in run.batches("entries", columns, rows=rows):
        empty = False
        yield batch
    if empty:
        yield SCHEMAS["entries"].empty_table().select(columns)


def _reduced(run, applied: dict | None, tau: float, rows: int = CHUNK_ROWS) -> StepReducer:
    """A `StepReducer` fed the run's entries batch by batch (and, for coherence, its `applied` edits)."""
    r = StepReducer(tau)
    for batch in _entry_batches(run, _E_COLS if applied is not None else ["step", "iteration", "node_id", "lod",
                                                                          "start", "end"], rows):  # fmt: skip
        feed(r, batch, applied)
    return r


def residency_runs_of(run, rows: int = CHUNK_ROWS) -> pa.Table:
    """`residency_runs` of a run's iteration-0 entries, read batch by batch (bounded memory)."""
    return runs_table(_reduced(run, None, 0.0, rows))


def series(run, name: str, *, osc_window: int = 5) -> pa.Table:
    """A per-step metric of `run`; `name` is one of SERIES."""
    if name not in SERIES:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(SERIES)}")
    c = _ctx(run)
    if name == "swap_rate":
        steps = run.table("steps")
        # The entries table is only a fallback, for recordings without `n_entries_start`: skip reading it.
        counts = (
            None
            if "n_entries_start" in steps.column_names
            else pa.concat_tables(
                [_entry_counts(_first_iteration(b)) for b in _entry_batches(run, ["step", "iteration"])]
            )
        )
        return swap_rate(steps, _applied_decisions(run), counts)
    if name == "oscillation":
        return ping_pongs_per_step(
            oscillation_events(_applied_decisions(run), osc_window), run.table("steps", ["step"])
        )
    if name == "locality":
        return locality_table(_reduced(run, None, 0.0).per_step())
    if name == "sequential":
        return sequential(_applied_decisions(run), c["block_size"])
    if name == "utilization":
        return utilization(run.table("steps"))
    if name == "coherence":
        applied = _applied(_applied_decisions(run), drop_evict=True)
        return coherence_table(_reduced(run, applied, c["tau"]).per_step())
    return delta_nll(run.table("steps"))


SERIES = ("swap_rate", "oscillation", "locality", "sequential", "utilization", "coherence", "delta_nll")


def _mean(t: pa.Table, col: str) -> float | None:
    c = t.column(col)
    c = c.cast(pa.float64()) if pa.types.is_boolean(c.type) else c  # share of True
    return mean_of(c.cast(pa.float64()).fill_null(float("nan")).to_numpy())


@dataclass(frozen=True)
class Summary:
    """What `summarize` computes: the registry's numbers (`numbers`, keyed as `METRICS`, plus
    `worst_nodes`) and the per-step tables they were reduced from, for pages that also draw them."""

    numbers: dict
    swap_rate: pa.Table
    oscillation_events: pa.Table
    ping_pongs: pa.Table
    locality: pa.Table
    sequential: pa.Table
    utilization: pa.Table
    coherence: pa.Table
    residency: dict


def summarize(steps: pa.Table, decisions: pa.Table, entry_batches, *, block_size: int = 32, tau: float = 0.2,
              osc_window: int = 5) -> Summary:  # fmt: skip
    """Every number of the registry from a run's tables: `decisions` (all rows or the applied ones)
    and `entry_batches`, the entries as Tables of whole steps in step order (one Table is one batch).
    The one implementation behind `summary` (a run folder, in batches) and the Knobs lab's tables."""
    dec = _applied_only(decisions)
    applied = _applied(dec, drop_evict=True)  # application order: by step, round, seq
    r = StepReducer(tau)
    for batch in entry_batches:
        feed(r, batch, applied)
        feed_adjacency(r, batch, applied, block_size)
    return reduced(steps, dec, r, block_size=block_size, osc_window=osc_window)


def reduced(steps: pa.Table, dec: pa.Table, r: StepReducer, *, block_size: int, osc_window: int = 5) -> Summary:
    """The registry's numbers and per-step tables from the steps table, the applied decisions and a
    `StepReducer` fed the run's entries: the last stage of `summarize`, and the whole of the Knobs
    lab's one-pass measure (`studio.fast_replay.MeasureSink`), which feeds the reducer from a replay's events."""
    per = r.per_step()
    loc, coh = locality_table(per), coherence_table(per)
    events = oscillation_events(dec, osc_window)
    osc = oscillation(dec, osc_window, top=5, events=events)
    seq = sequential(dec, block_size)
    res = residency_of(r.closed_lengths(), r.open_runs)
    dn = delta_nll(steps) if "nll" in steps.column_names else None
    # A recording without `n_entries_start` counts the entries at each step's start from its WCs.
    counts = None if "n_entries_start" in steps.column_names else pa.table({"step": per["step"], "n": per["n"]})
    swap = swap_rate(steps, dec, counts)
    util = utilization(steps)
    n_cand = int(pc.sum(coh.column("candidates")).as_py() or 0)
    numbers = {
        "swap_rate": _mean(swap, "swap_rate"),
        "ping_pongs": osc["ping_pongs"],
        "applied_edits": osc["applied_edits"],
        "ping_pongs_per_edit": osc["per_edit"],
        "worst_nodes": osc["worst"].to_pylist(),
        "locality": _mean(loc, "locality"),
        "adjacent_share": r.adjacent / r.expansions if r.expansions else None,
        "sequential_score": _mean(seq, "sequential"),
        "residency_mean": res["mean"],
        "residency_p95": res["p95"],
        "utilization": _mean(util, "utilization"),
        "coherence": (int(pc.sum(coh.column("finer")).as_py() or 0) / n_cand) if n_cand else None,
    }
    if dn is not None:
        numbers.update(
            nll=_mean(dn, "nll"), delta_nll_full=_mean(dn, "d_full"), delta_nll_recency=_mean(dn, "d_recency")
        )
    pp = ping_pongs_per_step(events, steps)
    return Summary(numbers, swap, events, pp, loc, seq, util, coh, res)


def _applied_only(decisions: pa.Table) -> pa.Table:
    if decisions.num_rows == 0 or "outcome" not in decisions.column_names:
        return decisions
    return decisions.filter(pc.equal(decisions.column("outcome"), "applied"))


def summary(run, *, osc_window: int = 5, rows: int = CHUNK_ROWS) -> dict:
    """Headline numbers of a run, JSON-ready (None where a metric has no data). The entries are read
    in batches of about `rows` rows of whole steps; the numbers do not depend on `rows`."""
    c = _ctx(run)
    steps = run.table("steps")
    s = summarize(steps, _applied_decisions(run), _entry_batches(run, _E_COLS, rows), block_size=c["block_size"],
                  tau=c["tau"], osc_window=osc_window)  # fmt: skip
    m = run.manifest
    about = {
        "run": getattr(run, "name", None),
        "status": getattr(run, "status", m.get("status")),
        "scorer": m.get("scorer"),
        "tokens": m.get("tokens"),
        "steps": steps.num_rows,
    }
    return {**about, **s.numbers, "timings": m.get("timings", {})}
