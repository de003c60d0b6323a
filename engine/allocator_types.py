"""The focus allocator's data types, shared by the reference and its compiled twin.

`AllocatorState` (the allocator's memory between rounds, with its lookups), `Plan` (what a round
returns: decisions, new state, stage scores, new WC), `AllocatorError` (a budget no collapse or
eviction can meet) and `PENDING` (the outcome of a candidate not decided yet). What a round reads of
the config, `PlanKnobs`, is the contract's (`contract/config.py`). Pure numpy: no torch, no model,
no globals.

This module plans nothing: the stages are `engine/allocator.py` (the reference `plan`) and
`engine/allocator_jit.py` (compiled, behind `engine/refocus.py`'s `plan_jit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.decisions import Decisions
from engine.working_context import WorkingContext

PENDING = -1


class AllocatorError(RuntimeError):
    """The budget cannot be met even after every collapse and eviction (a config the checks missed)."""


# ---------------------------------------------------------------------------------------------
# Memory: sized by the working context, never by the history. The allocator remembers scores and
# entry ages only for the current entries, and edits only while they can still matter (within
# max(cooldown_steps, hysteresis_steps)), so a step costs the same at 4k or 1M tokens read.


@dataclass(frozen=True, eq=False)
class AllocatorState:
    node: np.ndarray  # int64[m] sorted: the WC's entries after the last round
    s_prev: np.ndarray  # float32[m] each one's interpolated score at that round; NaN if not scored yet
    entered: np.ndarray  # int32[m] step each one became an entry at its current LOD
    edit_node: np.ndarray  # int64[k] sorted: coarse nodes edited within the memory horizon
    edit_step: np.ndarray  # int32[k] step of that edit
    edit_dir: np.ndarray  # int8[k] +1 expanded, -1 collapsed into
    step: int = -1  # step of the latest plan call
    edits_used: int = 0  # voluntary edits applied so far in `step` (iterations share max_edits)

    @staticmethod
    def initial(max_lod: int = 0) -> AllocatorState:
        i64, i32, i8 = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int8)
        return AllocatorState(i64, np.zeros(0, np.float32), i32, i64, i32, i8)

    def prev_score(self, wc: WorkingContext) -> np.ndarray:
        """float32[n]: each entry's last interpolated score, 0 where it was never scored."""
        return np.nan_to_num(_lookup(self.node, self.s_prev, wc.node_id, np.nan), nan=0.0).astype(np.float32)

    def age_steps(self, wc: WorkingContext, step: int) -> np.ndarray:
        """int32[n]: steps since each entry took its current LOD (0 if first seen now)."""
        ent = _lookup(self.node, self.entered, wc.node_id, -1)
        return np.where(ent < 0, 0, step - ent).astype(np.int32)

    def last_edit(self, coarse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(direction int8, step int64) of each coarse node's last remembered edit; (0, -1) if none."""
        return _lookup(self.edit_node, self.edit_dir, coarse, 0), _lookup(self.edit_node, self.edit_step, coarse, -1)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray, default) -> np.ndarray:
    """values[keys == q] for each q in query (keys sorted, unique), else `default`. Binary search."""
    dtype = np.result_type(values.dtype, np.min_scalar_type(default) if default == default else np.float32)
    if keys.size == 0:
        return np.full(query.shape[0], default, dtype)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[pos] == query, values[pos], default).astype(dtype, copy=False)


@dataclass(frozen=True, eq=False)
class Plan:
    decisions: Decisions  # one row per candidate and per forced edit
    state: AllocatorState  # the allocator's memory after this round
    stages: dict[str, np.ndarray]  # raw, interp, shift, final: float32[n] over the input WC's entries
    wc: WorkingContext  # the WC after the applied decisions (= apply(input wc, decisions))
    compiled: bool = False  # made by the compiled twin (`engine.refocus.plan_jit`), not by the reference
