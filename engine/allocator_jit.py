"""Compiled focus allocator: `plan_jit`, a numba twin of `engine.allocator.plan` giving exactly the same Plan.

Why: the reference `plan` is ~800 small numpy calls, so it costs ~0.4-0.6 ms at 1k entries however
little work there is, and the knobs lab re-plans whole recordings step by step. `@njit` kernels do
the same work in loops over plain arrays: `_pipeline` (stages 1-2), then `_plan`, which runs the
reference's later stages under the reference's names (`_candidates`, `_hysteresis`, `_budget_round`,
`_restore_budget`, `_update_state`); they live in `engine/allocator_jit_stages.py` with the lookup,
order and rebuild helpers they share (one file, for numba's cache). This module is the planner-facing
wrapper: it checks and normalises the inputs, packs the knobs into kernel scalars, calls the two
kernels and builds the `Plan` (`compiled=True`), or hands the call to the reference.

How it stays bitwise identical (checked call by call against `plan` in tests/test_allocator_jit.py):
- float32 arithmetic is mirrored expression by expression. Under NumPy 2 promotion a Python float
  knob is cast to float32 *before* it meets a float32 array, so `g*raw + (1-g)*s_prev` is
  `f32(g)*raw + f32(1.0-g)*s_prev` in float32, and `s > tau`, `s < -tau`, `|s| <= tau + margin` compare
  float32 against `f32(tau)`, `f32(-tau)`, `f32(tau + margin)`. Group means are float64 sums in member
  order (`np.bincount`) divided by the count, then cast to float32. numba does no FMA contraction
  without fastmath, so each product and sum rounds like numpy's.
- sharpening (gamma != 1) stays in numpy: `x ** gamma` may go through SIMD libraries whose rounding
  differs from libm's `powf`, so the kernel would not be bitwise portable.
- order: every sort of the reference (lexsort, stable argsort) is a total order on (flag, score, start,
  row), so `_order`/`_next` (a small sorted head, then a heap only if needed) yield the same candidates
  in the same order while paying for the few that a round looks at (about max_edits) out of thousands.
- memory of the input WC: each entry of the new WC carries its position in the input WC (or -1), which
  gives `_scores_on`'s score and `_update_state`'s s_prev / entered lookups without searching.
- numpy-scalar knobs (np.float64 ...) promote differently; such calls go to the reference.

Everything runs compiled, forced collapses and evictions included: a session over budget after each
append goes through them at every step. What falls back to the reference `plan` (its Plan then says
`compiled=False`): a call that cannot meet the budget at all (the reference raises AllocatorError),
and calls with numpy-scalar float knobs. A valid working context is assumed (DESIGN section 2). The
module keeps no state: the knobs' kernel scalars are memoised by value (`_scalars`).

The first call compiles the kernels (~10 s; then cached in engine/__pycache__, ~0.2 s to load). Inputs
are normalised to C-contiguous writeable arrays (`_arr`), so one compiled specialisation serves all.
"""

from __future__ import annotations

import functools

import numpy as np

from contract.config import PlanKnobs
from contract.decisions import Decisions
from engine import allocator as ref
from engine.allocator_jit_stages import _pipeline, _plan
from engine.allocator_types import AllocatorState, Plan
from engine.working_context import WorkingContext

_LIM = np.float32(1.0 + 1e-5)  # the reference's |raw| bound, as its float32 comparison sees it


def _scalars(a):
    """(numpy-promotion-safe?, pipeline scalars, float32 thresholds) of an AllocatorConfig."""
    # The knobs' types are part of the key: 0.2 and np.float64(0.2) are equal but promote differently.
    return _scalars_of(a, type(a.interp_gate), type(a.tau_expand), type(a.tau_collapse), type(a.hysteresis_margin))


@functools.lru_cache(maxsize=256)
def _scalars_of(a, *types: type):
    # Python floats/ints meet float32 arrays as float32 (NumPy 2 weak scalars); numpy scalars would not.
    weak = all(t in (float, int) for t in types)
    left, right = a.shift_kernel
    f32 = np.float32
    pipe = (f32(a.interp_gate), f32(1.0 - a.interp_gate), f32(left), f32(right), bool(left), bool(right))
    thr = np.array([a.tau_expand, -a.tau_collapse, a.tau_expand + a.hysteresis_margin,
                    a.tau_collapse + a.hysteresis_margin], np.float32)  # fmt: skip
    return weak, pipe, thr


def _arr(x: np.ndarray, dtype) -> np.ndarray:
    """C-contiguous, writeable, of `dtype`: the one array type the kernels are compiled for (a read-only
    or strided input, say from Arrow, would cost a separate numba compilation)."""
    x = np.ascontiguousarray(x, dtype)
    return x if x.flags.writeable else x.copy()


def plan_jit(wc: WorkingContext, raw_scores: np.ndarray, state: AllocatorState, knobs: PlanKnobs, step: int) -> Plan:
    """`engine.allocator.plan`, compiled: same inputs, bitwise the same Plan. Pure: inputs are never mutated."""
    a, bs, n = knobs.allocator, wc.block_size, wc.n
    raw = np.asarray(raw_scores, dtype=np.float32)
    if raw.shape != (n,):
        raise ValueError(f"raw_scores has shape {raw.shape}, expected ({n},) for this working context")
    weak, pipe, thresholds = _scalars(a)
    if not weak:
        return ref.plan(wc, raw_scores, state, knobs, step)
    lod, index, sp = _arr(wc.lod, np.int8), _arr(wc.index, np.int64), state
    ed = (_arr(sp.edit_node, np.int64), _arr(sp.edit_step, np.int32), _arr(sp.edit_dir, np.int8))
    nodes_, entered = _arr(sp.node, np.int64), _arr(sp.entered, np.int32)
    ok, interp, shift, jpos = _pipeline(_arr(raw, np.float32), lod, index, nodes_, _arr(sp.s_prev, np.float32),
                                        wc.max_lod, *pipe, _LIM)  # fmt: skip
    if not ok:
        raise ValueError("raw_scores must be finite and within [-1, 1]")
    gamma = a.sharpen_gamma
    final = shift.copy() if gamma == 1.0 else (np.sign(shift) * np.abs(shift) ** np.float32(gamma)).astype(np.float32)
    used_before = state.edits_used if state.step == step else 0
    blocks = wc.tokens_seen // bs
    scalars = np.array([bs, wc.max_lod, max(0, (blocks - knobs.protect_blocks) * bs), wc.tokens_seen - blocks * bs,
                   knobs.w_max, wc.evicted_upto, a.cooldown_steps, a.hysteresis_steps, a.max_edits - used_before, step,
                   max(a.cooldown_steps, a.hysteresis_steps)], np.int64)  # fmt: skip
    ok, cols, new_lod, new_index, evicted_upto, st, used, changed = _plan(
        final, interp, lod, index, jpos, entered, *ed, thresholds, scalars
    )
    if not ok:  # the budget cannot be met: the reference raises AllocatorError with its message
        return ref.plan(wc, raw_scores, state, knobs, step)
    cur = WorkingContext(bs, wc.max_lod, wc.tokens_seen, evicted_upto, new_lod, new_index) if changed else wc
    stages = {"raw": raw, "interp": interp, "shift": shift, "final": final}
    return Plan(Decisions(*cols), AllocatorState(*st, step, used_before + used), stages, cur, compiled=True)
