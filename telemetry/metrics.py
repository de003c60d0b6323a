"""Focus metrics (DESIGN section 4) as pure functions over telemetry tables.

Every function takes pyarrow Tables with the recorded columns (`steps`, `entries`, `decisions`) and
returns a Table (one row per step) or a dict of plain numbers; `mean_of` reduces a per-step series to
its one number. They are vectorised numpy: no pandas, no I/O. Every per-entry metric is a per-step
(or per-round) quantity, so it can be computed on batches of whole steps; residency runs are stitched
across batch edges (`_Stitched`).

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
from telemetry.arrays import _applied, _col, _first_iteration, _isin, _per_step, _positions, _rows_in, _unique

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
    e = _first_iteration(entries, iteration)
    step, start, end, lod = (_col(e, c).astype(np.int64, copy=False) for c in ("step", "start", "end", "lod"))
    if np.any(np.diff(step) < 0) or np.any((np.diff(start) <= 0) & (np.diff(step) == 0)):
        order = np.lexsort((start, step))  # recorded order is already (step, start): sort only if not
        step, start, end, lod = step[order], start[order], end[order], lod[order]
    is0 = lod == 0
    cont = np.zeros(step.size, bool)
    cont[1:] = is0[1:] & is0[:-1] & (step[1:] == step[:-1]) & (start[1:] == end[:-1])
    steps = _unique(step)
    detail = _per_step(step, is0.astype(np.float64), steps)
    runs = _per_step(step, (is0 & ~cont).astype(np.float64), steps)
    loc = 1.0 - (runs - 1.0) / np.maximum(1.0, detail - 1.0)
    mask = detail == 0
    return pa.table(
        {
            "step": steps.astype(np.int32),
            "detail_blocks": detail.astype(np.int32),
            "runs": runs.astype(np.int32),
            "locality": pa.array(loc, mask=mask),
        }
    )


def _spans(node_id: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    lod, idx = nodes.node_lod(node_id), nodes.node_index(node_id)
    start = nodes.node_start(lod, idx, block_size)
    return start, start + nodes.span_tokens(lod, block_size)


def adjacency(entries: pa.Table, decisions: pa.Table, block_size: int = 32) -> dict:
    """Share of applied expansions whose node touches existing detail: a neighbouring entry (ending
    where the node starts or starting where it ends) at a finer LOD than the node, in the WC of the
    same step and round. Expansions in rounds whose entries were not recorded are not counted."""
    a = _applied(decisions, drop_evict=True)
    x = a["action"] == EXPAND
    step, it, node, lod_from = a["step"][x], a["iteration"][x], a["node_id"][x], a["lod_from"][x]
    ns, ne = _spans(node, block_size)
    e_step, e_it, e_lod = (_col(entries, c).astype(np.int64, copy=False) for c in ("step", "iteration", "lod"))
    e_start, e_end = (
        _col(entries, "start").astype(np.int64, copy=False),
        _col(entries, "end").astype(np.int64, copy=False),
    )
    if e_step.size == 0 or step.size == 0:
        return {"expansions": 0, "adjacent": 0, "share": None}
    # A round's entries tile its WC without overlap, so the entry ending where a node starts is the one
    # before the first entry starting at or after that token, and the entry starting where it ends is
    # found by its start: two binary searches per expansion over one sorted key per entry row
    # (round, start), instead of joins over every entry row (seconds on a 256k-token run).
    lo_s, lo_i, t_span = int(min(e_step.min(), step.min())), int(min(e_it.min(), it.min())), int(e_end.max()) + 1
    its = int(max(e_it.max(), it.max())) - lo_i + 1
    rnd = (e_step - lo_s) * its + (e_it - lo_i)
    key = rnd * t_span + e_start
    if np.any(key[1:] < key[:-1]):  # recorded order is (step, iteration, start); sort only if it is not
        order = np.argsort(key, kind="stable")
        key, rnd, e_lod, e_start, e_end = key[order], rnd[order], e_lod[order], e_start[order], e_end[order]
    x_rnd = (step.astype(np.int64) - lo_s) * its + (it.astype(np.int64) - lo_i)
    g = np.minimum(np.searchsorted(rnd, x_rnd), rnd.size - 1)
    seen = rnd[g] == x_rnd
    p = np.searchsorted(key, x_rnd * t_span + np.minimum(ns, t_span)) - 1  # the entry before start `ns`
    pc_ = np.clip(p, 0, key.size - 1)
    left = (p >= 0) & (rnd[pc_] == x_rnd) & (e_end[pc_] == ns) & (e_lod[pc_] < lod_from)
    q = np.minimum(np.searchsorted(key, x_rnd * t_span + np.minimum(ne, t_span)), key.size - 1)
    right = (rnd[q] == x_rnd) & (e_start[q] == ne) & (e_lod[q] < lod_from)
    adjacent = left | right
    n = int(seen.sum())
    hits = int((adjacent & seen).sum())
    return {"expansions": n, "adjacent": hits, "share": hits / n if n else None}


def sequential(decisions: pa.Table, block_size: int = 32) -> pa.Table:
    """Consecutive applied expansions (in application order, across steps): one row per pair, at the
    later one's step, `sequential` when it lands within one block of the previous one (the two spans
    touch or overlap: a gap of less than one block)."""
    a = _applied(decisions, drop_evict=True)
    x = a["action"] == EXPAND
    start, end = _spans(a["node_id"][x], block_size)
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


def _node_rank_order(node: np.ndarray, rank: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """(order, node[order], rank[order]): rows by (node, rank) via one radix sort, or None where that
    shortcut does not apply.

    Applies when rows are in step order and the nodes pack into 16 bits (LOD-major, so the order is
    node-id order), as in every recording of up to 2M tokens: a stable sort by node alone then gives
    (node, rank) order, and numpy sorts 16-bit keys stably by radix, several times faster than a
    comparison sort. Returns None (the caller sorts the general way) if any (node, rank) repeats."""
    if node.size < 2 or int(node.min()) < 0 or np.any(step[1:] < step[:-1]):
        return None
    lod, idx = node >> nodes.LOD_SHIFT, node & nodes.INDEX_MASK
    width = int(idx.max()) + 1
    if (int(lod.max()) + 1) * width > 2**16:
        return None
    lod *= width
    lod += idx
    order = np.argsort(lod.astype(np.uint16), kind="stable")
    n, r = node[order], rank[order]
    if np.any((r[1:] == r[:-1]) & (n[1:] == n[:-1])):
        return None
    return order, n, r


def residency_runs(entries: pa.Table, iteration: int = 0) -> pa.Table:
    """Each stretch of recorded steps during which a node stays an entry (so keeps its LOD).

    `length` = first step it is seen missing - first step (so with a cadence of 1, the number of
    steps); a run still present at the last recorded step is `open`, its length counted to there.
    """
    e = _first_iteration(entries, iteration)
    step, node = _col(e, "step").astype(np.int64, copy=False), _col(e, "node_id").astype(np.int64, copy=False)
    lod = _col(e, "lod").astype(np.int8)
    if step.size == 0:
        return _RUNS.empty_table()
    recorded = _unique(step)
    rank = _positions(recorded, step)
    fast = _node_rank_order(node, rank, step)
    if fast is not None:
        order, node, rank = fast
        lod = lod[order]
    else:
        lo, span = int(node.min()), int(node.max()) - int(node.min()) + 1
        if span * recorded.size < 2**62:  # one packed int64 key sorts several times faster than a two-key lexsort
            order = np.argsort((node - lo) * recorded.size + rank)  # keys are unique: stability is moot
        else:
            order = np.lexsort((rank, node))
        node, rank, lod = node[order], rank[order], lod[order]
    new = np.ones(node.size, bool)
    new[1:] = (node[1:] != node[:-1]) | (rank[1:] != rank[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], node.size) - 1
    is_open = rank[last] == recorded.size - 1
    after = np.where(is_open, recorded[rank[last]] + 1, recorded[np.minimum(rank[last] + 1, recorded.size - 1)])
    length = after - recorded[rank[first]]
    return pa.Table.from_arrays([node[first], lod[first], recorded[rank[first]], length, is_open], schema=_RUNS)


class _Stitched:
    """Residency runs over consecutive batches of whole steps (in step order): the runs of each
    batch, with those still open at its last step joined to the runs that continue them at the next
    batch's first step. The result equals `residency_runs` over all the batches at once."""

    def __init__(self) -> None:
        self.done: list[pa.Table] = []
        self.carry = _RUNS.empty_table()  # open at the last step seen

    def add(self, first: pa.Table) -> None:
        runs = residency_runs(first)
        if runs.num_rows == 0:
            return
        if self.carry.num_rows:
            f0 = int(pc.min(first.column("step")).as_py())  # the batch's first recorded step
            node, begin = _col(runs, "node_id"), _col(runs, "first_step").astype(np.int64)
            c_node, c_first = _col(self.carry, "node_id"), _col(self.carry, "first_step").astype(np.int64)
            at0 = begin == f0
            cont = at0 & _isin(node, c_node)  # runs that continue a carried one
            joined = _isin(c_node, node[cont])
            idx = np.searchsorted(c_node, node[cont])  # carry is sorted by node_id
            length = _col(runs, "length").astype(np.int64)
            length[cont] += begin[cont] - c_first[idx]
            begin[cont] = c_first[idx]
            runs = runs.set_column(2, "first_step", pa.array(begin.astype(np.int32)))
            runs = runs.set_column(3, "length", pa.array(length.astype(np.int32)))
            ended = self.carry.filter(pa.array(~joined))  # carried runs the batch does not continue
            ended = ended.set_column(3, "length", pa.array((f0 - _col(ended, "first_step")).astype(np.int32)))
            self.done.append(ended.set_column(4, "open", pa.array(np.zeros(ended.num_rows, bool))))
        is_open = _col(runs, "open")
        self.done.append(runs.filter(pa.array(~is_open)))
        self.carry = runs.filter(pa.array(is_open)).sort_by("node_id")

    def result(self) -> pa.Table:
        out = pa.concat_tables([*self.done, self.carry])
        return out.sort_by([("node_id", "ascending"), ("first_step", "ascending")]) if out.num_rows else out


def residency(entries: pa.Table | None = None, iteration: int = 0, *, runs: pa.Table | None = None) -> dict:
    """Mean and p95 length of the closed residency runs (open ones are only counted: censored).
    Give `entries`, or the `runs` that `residency_runs` (or `residency_runs_of`) made of them."""
    runs = residency_runs(entries, iteration) if runs is None else runs
    closed = _col(runs, "length")[~_col(runs, "open")].astype(np.float64)
    return {
        "mean": float(closed.mean()) if closed.size else None,
        "p95": float(np.percentile(closed, 95)) if closed.size else None,
        "runs": int(closed.size),
        "open_runs": int(runs.num_rows - closed.size),
    }


def utilization(steps: pa.Table) -> pa.Table:
    """wc_cost / w_max per step (after the step's edits)."""
    u = _col(steps, "wc_cost").astype(np.float64) / np.maximum(_col(steps, "w_max").astype(np.float64), 1.0)
    return pa.table({"step": steps.column("step"), "utilization": u})


def coherence(entries: pa.Table, decisions: pa.Table, tau_expand: float) -> pa.Table:
    """Per step: of the entries scored above `tau_expand` at the step's start (gists only: LOD0 has no
    finer detail), the share that end the step finer (their node's last applied edit that step was an
    expand, not undone by a later collapse)."""
    read = [c for c in entries.column_names if c in ("step", "iteration", "node_id", "lod", "score")]
    e = _first_iteration(entries.select(read))  # filter only the columns read below, not every one
    e = e.filter(pc.and_(pc.greater(e.column("score"), tau_expand), pc.greater(e.column("lod"), 0)))
    e_step, e_node = _col(e, "step").astype(np.int64, copy=False), _col(e, "node_id").astype(np.int64, copy=False)
    a = _applied(decisions, drop_evict=True)
    step, node, action = a["step"].astype(np.int64, copy=False), a["node_id"], a["action"]
    order = np.lexsort((np.arange(step.size), node, step))  # stable: application order within a node
    step, node, action = step[order], node[order], action[order]
    last = np.ones(step.size, bool)
    last[:-1] = (step[1:] != step[:-1]) | (node[1:] != node[:-1])
    fin = last & (action == EXPAND)
    finer = _rows_in([e_step, e_node], [step[fin], node[fin]])
    steps = _unique(e_step)
    cand = _per_step(e_step, np.ones(e_step.size), steps)
    hit = _per_step(e_step, finer.astype(np.float64), steps)
    return pa.table(
        {
            "step": steps.astype(np.int32),
            "candidates": cand.astype(np.int32),
            "finer": hit.astype(np.int32),
            "coherence": hit / np.maximum(cand, 1.0),
        }
    )


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
