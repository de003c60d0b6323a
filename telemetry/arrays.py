"""numpy primitives over the Arrow tables the focus metrics read: a column as numpy (the public
action and outcome names back to their int8 codes), the bounds of grouped rows, the applied decisions
in application order, the entries of one refocus round, and sums per step.

Shared by the per-step metrics (`telemetry.metrics`) and their run-level entry points
(`telemetry.run_metrics`): vectorised numpy, exact for any magnitudes. This module defines no metric
and reads no run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contract.decisions import ACTIONS, APPLIED, EVICT, OUTCOMES


def _col(t: pa.Table, name: str, dtype=None) -> np.ndarray:
    c = t.column(name)
    if pa.types.is_string(c.type):  # public names back to the engine's small int codes (-1: unknown)
        names = {"action": ACTIONS, "outcome": OUTCOMES}[name]
        return pc.index_in(c, value_set=pa.array(names)).fill_null(-1).to_numpy().astype(np.int8)
    if pa.types.is_floating(c.type):
        c = c.fill_null(float("nan"))
    return c.to_numpy().astype(dtype) if dtype else c.to_numpy()


def _group_bounds(key: np.ndarray) -> np.ndarray:
    """int64[g + 1] over a grouped `key` (equal values adjacent): group g is rows `bounds[g]:bounds[g + 1]`."""
    if key.size == 0:
        return np.zeros(1, np.int64)
    return np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1, [key.size]]).astype(np.int64)


def _applied(decisions: pa.Table, *, drop_evict: bool = False) -> dict[str, np.ndarray]:
    """Applied decision rows as numpy columns, in application order (step, iteration, seq)."""
    keep = _col(decisions, "outcome") == APPLIED
    if drop_evict:
        keep &= _col(decisions, "action") != EVICT
    cols = {
        n: _col(decisions, n)[keep] for n in ("step", "iteration", "node_id", "lod_from", "lod_to", "action", "seq")
    }
    order = np.lexsort((cols["seq"], cols["iteration"], cols["step"]))
    return {n: v[order] for n, v in cols.items()}


def _first_iteration(entries: pa.Table, iteration: int = 0) -> pa.Table:
    if "iteration" not in entries.column_names or entries.num_rows == 0:
        return entries
    mm = pc.min_max(entries.column("iteration")).as_py()
    if mm["min"] == mm["max"] == iteration:  # already filtered (e.g. in SQL): skip copying every column
        return entries
    return entries.filter(pc.equal(entries.column("iteration"), iteration))


def _positions(steps: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Index of each `step` in the sorted array `steps`, clipped to its bounds (check with `steps[idx] == step`).

    Steps are usually a contiguous range (an entries cadence of 1): then the index is a subtraction,
    not a binary search per row (the difference is a quarter of a second on 2M entry rows)."""
    if steps.size > 1 and int(steps[-1]) - int(steps[0]) + 1 == steps.size and np.all(np.diff(steps) == 1):
        idx = step - steps[0]
        if step.size and steps[0] <= step.min() and step.max() <= steps[-1]:
            return idx  # all in range (the usual case): two reductions are cheaper than a clip's copy
    else:
        idx = np.searchsorted(steps, step)
    return np.clip(idx, 0, steps.size - 1)


def _contiguous(steps: np.ndarray) -> bool:
    return steps.size > 1 and int(steps[-1]) - int(steps[0]) + 1 == steps.size and bool(np.all(np.diff(steps) == 1))


def _unique(step: np.ndarray) -> np.ndarray:
    """`np.unique(step)`; without a sort when `step` is already sorted (recorded order)."""
    if step.size > 1 and not np.any(step[1:] < step[:-1]):
        first = np.ones(step.size, bool)
        np.not_equal(step[1:], step[:-1], out=first[1:])
        return step[first]
    return np.unique(step)


def _per_step(step: np.ndarray, values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Sum `values` by `step` onto the sorted array `steps` (0 where a step has none)."""
    if step.size == 0 or steps.size == 0:
        return np.zeros(steps.shape[0], np.float64)
    if _contiguous(steps) and steps[0] <= step.min() and step.max() <= steps[-1]:
        # Every step is one of `steps` by construction: no per-row check needed.
        return np.bincount(step - steps[0], weights=values, minlength=steps.size).astype(np.float64)
    idx = _positions(steps, step)
    ok = steps[idx] == step
    if not ok.all():
        idx, values = idx[ok], values[ok]
    return np.bincount(idx, weights=values, minlength=steps.size).astype(np.float64)
