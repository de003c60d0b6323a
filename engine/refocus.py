"""One refocus step: `allocator.iterations` rounds of score -> plan -> apply, every round recorded.

The session (live scores from its scorer), fast replay (recorded scores) and the allocator tests all
run a step through `refocus`; they differ only in where a round's scores come from, the `score`
callback. Each round emits the WC it planned on (`EntriesRecorded`, with every stage of the score
pipeline; `LensAttention` when the scorer returned attention) and its decisions (`DecisionsRecorded`),
in that order; the step's `StepRecorded` is the caller's (the session measures NLL first).

Which allocator plans a round is the registry `PLANNERS`: "numpy", the reference
(`engine/allocator.py`, named by the DESIGN's stages), and "numba", its compiled twin `plan_jit`,
which gives exactly the reference's decisions (tested call by call) about 10x faster. `plan` is the
compiled one when numba can be imported, else the reference, with the same results; `IMPL` says which.

`plan_jit` is here, beside the registry that chooses it; its kernels are `engine/allocator_jit.py`
(one file, for numba's cache), which also tells how they stay bitwise equal to the reference. It
checks and normalises the inputs (`_arr`: one array type, so one compiled specialisation serves
all), packs the knobs into the kernels' scalars (`_scalars`, memoised by value: no module state),
calls the two kernels and builds the `Plan`. What it hands to the reference (its Plan then says
`compiled=False`): a call that cannot meet the budget at all (the reference raises AllocatorError),
and calls with numpy-scalar float knobs (np.float64 ...), which promote differently. A valid working
context is assumed (DESIGN section 2).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from contract import nodes
from contract.config import PlanKnobs
from contract.decisions import Decisions
from contract.events import DecisionsRecorded, EntriesRecorded, LensAttention, Sink
from engine.allocator import plan as reference_plan
from engine.allocator_types import AllocatorState, Plan
from engine.working_context import WorkingContext, check_invariants

try:
    from engine import allocator_jit as jit
except ImportError:  # pragma: no cover - numba is in requirements.txt; this keeps a broken install usable
    jit = None

# --------------------------------------------------------------------------------------- the compiled planner

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
        return reference_plan(wc, raw_scores, state, knobs, step)
    lod, index, sp = _arr(wc.lod, np.int8), _arr(wc.index, np.int64), state
    ed = (_arr(sp.edit_node, np.int64), _arr(sp.edit_step, np.int32), _arr(sp.edit_dir, np.int8))
    nodes_, entered = _arr(sp.node, np.int64), _arr(sp.entered, np.int32)
    ok, interp, shift, jpos = jit._pipeline(_arr(raw, np.float32), lod, index, nodes_, _arr(sp.s_prev, np.float32),
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
    ok, cols, new_lod, new_index, evicted_upto, st, used, changed = jit._plan(
        final, interp, lod, index, jpos, entered, *ed, thresholds, scalars
    )
    if not ok:  # the budget cannot be met: the reference raises AllocatorError with its message
        return reference_plan(wc, raw_scores, state, knobs, step)
    cur = WorkingContext(bs, wc.max_lod, wc.tokens_seen, evicted_upto, new_lod, new_index) if changed else wc
    stages = {"raw": raw, "interp": interp, "shift": shift, "final": final}
    return Plan(Decisions(*cols), AllocatorState(*st, step, used_before + used), stages, cur, compiled=True)


# --------------------------------------------------------------------------------------- the registry

PLANNERS: dict[str, Callable] = {"numpy": reference_plan} | ({"numba": plan_jit} if jit is not None else {})
IMPL = "numba" if "numba" in PLANNERS else "numpy"
plan = PLANNERS[IMPL]

# --------------------------------------------------------------------------------------- the round


@dataclass(frozen=True)
class Scores:
    """What a round's scorer returns: float32[n] raw scores in [-1, 1], and optionally float32[n] attention."""

    raw: np.ndarray
    attention: np.ndarray | None = None


# score(wc, state, iteration) -> the round's scores over `wc`'s entries
ScoreFn = Callable[[WorkingContext, AllocatorState, int], Scores]


@dataclass(frozen=True)
class Refocused:
    """A step's outcome: the WC and allocator state after its last round, its applied and forced
    edits, and the time its scorer and allocator took (ms)."""

    wc: WorkingContext
    state: AllocatorState
    n_applied: int
    n_forced: int
    t_scorer_ms: float
    t_allocator_ms: float


def refocus(
    wc: WorkingContext,
    state: AllocatorState,
    knobs: PlanKnobs,
    step: int,
    iterations: int,
    score: ScoreFn,
    sink: Sink,
    *,
    record_entries: bool = True,
    check: bool = True,
    planner: Callable = plan,
) -> Refocused:
    """Run refocus step `step` on `wc`: `iterations` rounds, each scored by `score` and planned by the
    allocator (`planner`: `plan` above, the compiled one when numba is present; the allocator
    tests pass the reference). `record_entries=False` skips the per-entry events (a cadence above 1);
    `check` verifies every WC invariant after the last round (raises on a breach)."""
    t_sc = t_al = 0.0
    applied = forced = 0
    for it in range(iterations):
        t0 = time.perf_counter()
        s = score(wc, state, it)
        t1 = time.perf_counter()
        p = planner(wc, s.raw, state, knobs, step)
        t2 = time.perf_counter()
        t_sc, t_al = t_sc + (t1 - t0) * 1000.0, t_al + (t2 - t1) * 1000.0
        if record_entries:
            st, ids, start = p.stages, wc.node_id, wc.start  # each WC property computes: once per round
            end = start + nodes.span_tokens(wc.lod, wc.block_size)
            sink.emit(EntriesRecorded(step, it, ids, wc.lod, start, end, wc.cost,
                                      st["raw"], st["interp"], st["shift"], st["final"]))  # fmt: skip
            if s.attention is not None:
                sink.emit(LensAttention(step, it, ids, np.asarray(s.attention, np.float32)))
        sink.emit(DecisionsRecorded(step, it, p.decisions))
        d = p.decisions
        applied += int(d.applied.sum())
        forced += int((d.applied & d.forced).sum())
        wc, state = p.wc, p.state
    if check:
        check_invariants(wc, knobs.w_max, knobs.protect_blocks)
    return Refocused(wc, state, applied, forced, t_sc, t_al)


# `plan` is chosen here, not defined here (engine's PUBLIC table names this module for it).
__all__ = ["IMPL", "PLANNERS", "Refocused", "ScoreFn", "Scores", "plan", "plan_jit", "refocus"]
