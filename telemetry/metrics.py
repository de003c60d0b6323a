"""Focus metrics (DESIGN section 4) as pure functions over telemetry tables.

Every function takes pyarrow Tables with the recorded columns (`steps`, `entries`, `decisions`) and
returns a Table (one row per step) or a dict of plain numbers; `mean_of` reduces a per-step series to
its one number. No pandas, no I/O. The per-entry metrics (locality, residency runs, coherence,
adjacency) are the one implementation in `telemetry.reductions`: `feed` and `feed_adjacency` hand it
a table's steps, and a `StepReducer` fed batches of whole steps in order (residency runs cross batch
edges) gives the numbers of the whole table.

This module does not read runs and does not name the numbers: `telemetry.run_metrics` fetches a
run's tables (in batches) and computes `series`, `summary` and `summarize` with these functions, and
the keys, labels and better directions are `telemetry.registry`. The numpy primitives they share are
`telemetry.arrays`.

Conventions used throughout:
- an *applied edit* is a decision row with outcome `applied` (forced ones included);
- `entries` at iteration 0 of step t is the WC the scorer saw at the start of step t;
- decisions name the coarse node of an edit, so an expand and the collapse undoing it share a node_id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contract import nodes
from contract.decisions import EXPAND
from telemetry.arrays import _applied, _col, _first_iteration, _group_bounds, _per_step, _unique
from telemetry.reductions import StepReducer, coherence_of, locality_of, residency_of

# ------------------------------------------------------------------------------------ per step


def swap_rate(steps: pa.Table, decisions: pa.Table, entries: pa.Table | None = None) -> pa.Table:
    """Applied edits / entries at the step's start, per step.

    Entries at the start are the steps table's `n_entries_start`. (Recordings without that column
    fall back to the entries table where it was recorded, else the previous step's `n_entries`;
    `entries` may also be its per-step counts, columns step and n, as `_entry_counts` makes them.)
    """
    step = _col(steps, "step").astype(np.int64, copy=False)
    order = np.argsort(step, kind="stable")
    step, n_after = step[order], _col(steps, "n_entries").astype(np.int64, copy=False)[order]
    a = _applied(decisions)
    applied = _per_step(a["step"].astype(np.int64, copy=False), np.ones(a["step"].size), step)
    start = np.concatenate([n_after[:1], n_after[:-1]]).astype(np.float64)
    if "n_entries_start" in steps.column_names:
        start = _col(steps, "n_entries_start").astype(np.float64)[order]
    elif entries is not None and entries.num_rows:
        counts = entries if "n" in entries.column_names else _entry_counts(entries)
        e_step, n = _col(counts, "step").astype(np.int64, copy=False), _col(counts, "n").astype(np.float64)
        counted = _per_step(e_step, n, step)
        start = np.where(np.isin(step, e_step), counted, start)
    rate = applied / np.maximum(start, 1.0)
    cols = {"step": step.astype(np.int32), "applied": applied.astype(np.int32), "entries_start": start}
    return pa.table({**cols, "swap_rate": rate})


def _entry_counts(entries: pa.Table) -> pa.Table:
    """Entries at iteration 0 per recorded step: columns step, n."""
    step = _col(_first_iteration(entries), "step").astype(np.int64, copy=False)
    steps = _unique(step)
    return pa.table({"step": steps, "n": _per_step(step, np.ones(step.size), steps)})


def oscillation_events(decisions: pa.Table, osc_window: int = 5) -> pa.Table:
    """One row per ping-pong: an applied edit that returns its node to the LOD it had before the
    node's previous applied edit, at most `osc_window` steps later (same-step rounds count)."""
    a = _applied(decisions, drop_evict=True)
    order = np.lexsort((np.arange(a["step"].size), a["node_id"]))  # by node, then application order
    node, step = a["node_id"][order], a["step"][order].astype(np.int64, copy=False)
    lod_from, lod_to = a["lod_from"][order], a["lod_to"][order]
    same = node[1:] == node[:-1]
    pp = same & (lod_to[1:] == lod_from[:-1]) & (step[1:] - step[:-1] <= osc_window)
    k = np.flatnonzero(pp) + 1
    return pa.table(
        {
            "step": step[k].astype(np.int32),
            "node_id": node[k].astype(np.int64, copy=False),
            "prev_step": step[k - 1].astype(np.int32),
            "lod": lod_to[k].astype(np.int8),
        }
    ).sort_by([("step", "ascending"), ("node_id", "ascending")])


def ping_pongs_per_step(events: pa.Table, steps: pa.Table) -> pa.Table:
    """Ping-pongs (`oscillation_events`) at each step of the steps table: columns step, ping_pongs."""
    step = _col(steps, "step").astype(np.int64, copy=False)
    n = _per_step(_col(events, "step").astype(np.int64, copy=False), np.ones(events.num_rows), step)
    return pa.table({"step": step.astype(np.int32), "ping_pongs": n.astype(np.int32)})


def oscillation(decisions: pa.Table, osc_window: int = 5, top: int = 10, *, events: pa.Table | None = None) -> dict:
    """Ping-pongs in all, per applied expand/collapse edit, and the `top` worst nodes (a Table).
    `events`: the `oscillation_events` of these decisions, when the caller has them already."""
    ev = oscillation_events(decisions, osc_window) if events is None else events
    n_edits = int(_applied(decisions, drop_evict=True)["step"].size)
    node = _col(ev, "node_id")
    ids, counts = np.unique(node, return_counts=True)
    worst = np.lexsort((ids, -counts))[:top]  # most ping-pongs first, ties by node id
    worst_t = pa.table(
        {"node_id": ids[worst].astype(np.int64, copy=False), "ping_pongs": counts[worst].astype(np.int32)}
    )
    return {
        "ping_pongs": int(ev.num_rows),
        "applied_edits": n_edits,
        "per_edit": ev.num_rows / n_edits if n_edits else 0.0,
        "worst": worst_t,
    }


def locality(entries: pa.Table, iteration: int = 0) -> pa.Table:
    """Per step: `1 - (runs - 1) / max(1, detail_blocks - 1)`; runs = maximal position-contiguous runs
    of LOD0 entries. Null at steps with no LOD0 entry. 1 = all detail in one contiguous region."""
    r = StepReducer(0.0)
    feed(r, entries, iteration=iteration)
    return locality_table(r.per_step())


def locality_table(per: dict[str, np.ndarray]) -> pa.Table:
    """The locality rows of a reducer's `per_step`: one per step with a WC."""
    has = per["n"] > 0
    loc = locality_of(per["detail_blocks"][has], per["runs"][has])
    return pa.table(
        {
            "step": per["step"][has].astype(np.int32),
            "detail_blocks": per["detail_blocks"][has],
            "runs": per["runs"][has],
            "locality": pa.array(loc, mask=np.isnan(loc)),
        }
    )


def adjacency(entries: pa.Table, decisions: pa.Table, block_size: int = 32) -> dict:
    """Share of applied expansions whose node touches existing detail: a neighbouring entry (ending
    where the node starts or starting where it ends) at a finer LOD than the node, in the WC of the
    same step and round. Expansions in rounds whose entries were not recorded are not counted."""
    r = StepReducer(0.0)
    feed_adjacency(r, entries, _applied(decisions, drop_evict=True), block_size)
    n, hits = r.expansions, r.adjacent
    return {"expansions": n, "adjacent": hits, "share": hits / n if n else None}


def sequential(decisions: pa.Table, block_size: int = 32) -> pa.Table:
    """Consecutive applied expansions (in application order, across steps): one row per pair, at the
    later one's step, `sequential` when it lands within one block of the previous one (the two spans
    touch or overlap: a gap of less than one block)."""
    a = _applied(decisions, drop_evict=True)
    x = a["action"] == EXPAND
    start, end = nodes.node_span(a["node_id"][x], block_size)
    gap = np.maximum(start[1:] - end[:-1], start[:-1] - end[1:])
    return pa.table({"step": a["step"][x][1:].astype(np.int32), "sequential": gap < block_size})


_RUNS = pa.schema(
    [
        ("node_id", pa.int64()),
        ("lod", pa.int8()),
        ("first_step", pa.int32()),
        ("length", pa.int32()),
        ("open", pa.bool_()),
    ]
)


def residency_runs(entries: pa.Table, iteration: int = 0) -> pa.Table:
    """Each stretch of recorded steps during which a node stays an entry (so keeps its LOD).

    `length` = first step it is seen missing - first step (so with a cadence of 1, the number of
    steps); a run still present at the last recorded step is `open`, its length counted to there.
    """
    r = StepReducer(0.0)
    feed(r, entries, iteration=iteration)
    return runs_table(r)


def runs_table(r: StepReducer) -> pa.Table:
    """A reducer's residency runs as a Table, by node, then first step."""
    return pa.table(r.runs(), schema=_RUNS)


def residency(entries: pa.Table | None = None, iteration: int = 0, *, runs: pa.Table | None = None) -> dict:
    """Mean and p95 length of the closed residency runs (open ones are only counted: censored).
    Give `entries`, or the `runs` that `residency_runs` (or `residency_runs_of`) made of them."""
    runs = residency_runs(entries, iteration) if runs is None else runs
    is_open = _col(runs, "open")
    return residency_of(_col(runs, "length")[~is_open], int(is_open.sum()))


def utilization(steps: pa.Table) -> pa.Table:
    """wc_cost / w_max per step (after the step's edits)."""
    u = _col(steps, "wc_cost").astype(np.float64) / np.maximum(_col(steps, "w_max").astype(np.float64), 1.0)
    return pa.table({"step": steps.column("step"), "utilization": u})


def coherence(entries: pa.Table, decisions: pa.Table, tau_expand: float) -> pa.Table:
    """Per step: of the entries scored above `tau_expand` at the step's start (gists only: LOD0 has no
    finer detail), the share that end the step finer (their node's last applied edit that step was an
    expand, not undone by a later collapse). A score is compared as the allocator compares it, in
    float32."""
    r = StepReducer(tau_expand)
    feed(r, entries, _applied(decisions, drop_evict=True))
    return coherence_table(r.per_step())


def coherence_table(per: dict[str, np.ndarray]) -> pa.Table:
    """The coherence rows of a reducer's `per_step`: one per step with a candidate."""
    has = per["candidates"] > 0
    cand, finer = per["candidates"][has], per["finer"][has]
    return pa.table(
        {"step": per["step"][has].astype(np.int32), "candidates": cand, "finer": finer,
         "coherence": coherence_of(cand, finer)}
    )  # fmt: skip


# ------------------------------------------------------------------------ tables -> reducer


def _wc(entries: pa.Table, iteration: int = 0) -> tuple[np.ndarray, ...]:
    """(steps, bounds, node_id, lod, start, end, score) of the iteration-`iteration` WCs in `entries`,
    grouped by step and each in token order, as `StepReducer.entries` takes them. Columns a table
    lacks (a table of presence only) are zeros; LOD then comes from the node id."""
    e = _first_iteration(entries, iteration)
    names, n = e.column_names, e.num_rows
    step = _col(e, "step").astype(np.int64)
    node = _col(e, "node_id").astype(np.int64) if "node_id" in names else np.zeros(n, np.int64)
    lod = _col(e, "lod").astype(np.int8) if "lod" in names else nodes.node_lod(node)
    start, end = (_col(e, c).astype(np.int64) if c in names else np.zeros(n, np.int64) for c in ("start", "end"))
    score = _col(e, "score").astype(np.float32) if "score" in names else np.zeros(n, np.float32)
    steps, bounds, start, node, lod, end, score = _grouped(step, start, node, lod, end, score)
    return steps, bounds, node, lod, start, end, score


def _grouped(key: np.ndarray, start: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """(group keys, bounds, start, *cols): rows grouped by `key` (a step, or a round) and each group in
    token order, group g being rows `bounds[g]:bounds[g + 1]`."""
    if key.size > 1 and (np.any(key[1:] < key[:-1]) or np.any((start[1:] <= start[:-1]) & (key[1:] == key[:-1]))):
        order = np.lexsort((start, key))  # recorded order is already (key, start): sort only if not
        key, start, cols = key[order], start[order], tuple(c[order] for c in cols)
    bounds = _group_bounds(key)
    return key[bounds[:-1]], bounds, start, *cols


def feed(r: StepReducer, entries: pa.Table, applied: dict[str, np.ndarray] | None = None, iteration: int = 0) -> None:
    """Feed `r` the WCs of `entries` (whole steps, after those fed before) and, for coherence, the
    `applied` edits of those steps (`_applied(..., drop_evict=True)`: application order)."""
    steps, bounds, *cols = _wc(entries, iteration)
    r.entries(steps, bounds, *cols)
    if applied is not None and steps.size:
        a = _in_steps(applied, int(steps[0]), int(steps[-1]))
        d_step = a["step"].astype(np.int64, copy=False)
        lo, hi = np.searchsorted(d_step, steps, "left"), np.searchsorted(d_step, steps, "right")
        r.decisions(lo.astype(np.int64), hi.astype(np.int64), a["node_id"].astype(np.int64, copy=False),
                    a["action"].astype(np.int8, copy=False))  # fmt: skip


def _in_steps(applied: dict[str, np.ndarray], first: int, last: int) -> dict[str, np.ndarray]:
    """The applied edits (sorted by step) of steps first..last: views, no copy."""
    step = applied["step"]
    lo, hi = int(np.searchsorted(step, first, "left")), int(np.searchsorted(step, last, "right"))
    return {k: v[lo:hi] for k, v in applied.items()}


def feed_adjacency(r: StepReducer, entries: pa.Table, applied: dict[str, np.ndarray], block_size: int) -> None:
    """Feed `r` every round's WC in `entries` (any iterations, whole steps) with the applied expansions
    of those rounds; expansions of rounds `entries` does not hold are not counted."""
    if entries.num_rows == 0:
        return
    step, it = (_col(entries, c).astype(np.int64) for c in ("step", "iteration"))
    applied = _in_steps(applied, int(step.min()), int(step.max()))
    x = applied["action"] == EXPAND
    if not x.any():
        return
    lod, start, end = (_col(entries, c) for c in ("lod", "start", "end"))
    lod, start, end = lod.astype(np.int8), start.astype(np.int64), end.astype(np.int64)
    its = int(max(it.max(), applied["iteration"][x].max())) + 1
    keys, e_bounds, start, lod, end = _grouped(step * its + it, start, lod, end)
    x_rnd = applied["step"][x].astype(np.int64) * its + applied["iteration"][x].astype(np.int64)
    g = np.minimum(np.searchsorted(keys, x_rnd), keys.size - 1)
    x_round = np.where(keys[g] == x_rnd, g, -1).astype(np.int64)
    xs, xe = nodes.node_span(applied["node_id"][x].astype(np.int64), block_size)
    r.adjacency(e_bounds, lod, start, end, x_round, xs.astype(np.int64), xe.astype(np.int64),
                applied["lod_from"][x].astype(np.int8))  # fmt: skip


def delta_nll(steps: pa.Table) -> pa.Table:
    """Per step: the policy's next-block NLL, the baselines' (`nll_full`, `nll_recency`), and
    nll - nll_full, nll - nll_recency (`d_full`, `d_recency`); null where a side was not computed."""
    nll = pc.cast(steps.column("nll"), pa.float64())
    out = {"step": steps.column("step"), "nll": nll}
    for base in ("full", "recency"):
        name = f"nll_{base}"
        other = pc.cast(steps.column(name), pa.float64()) if name in steps.column_names else pa.nulls(len(nll))
        out[name] = pc.cast(other, pa.float64())
        out[f"d_{base}"] = pc.subtract(nll, out[name])
    return pa.table(out)


# ---------------------------------------------------------------------------- one number


def mean_of(values: np.ndarray) -> float | None:
    """The mean of a per-step series over the steps that have a value (NaN: none), or None. numpy's
    summation, so that every path to a headline number (`telemetry.run_metrics.summarize`, the Knobs
    lab's one-pass measure) gives the same float bit for bit."""
    x = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    return float(x.mean()) if x.size else None
