"""One refocus step: `allocator.iterations` rounds of score -> plan -> apply, every round recorded.

The session (live scores from its scorer), fast replay (recorded scores) and the allocator tests all
run a step through `refocus`; they differ only in where a round's scores come from, the `score`
callback. Each round emits the WC it planned on (`EntriesRecorded`, with every stage of the score
pipeline; `LensAttention` when the scorer returned attention) and its decisions (`DecisionsRecorded`),
in that order; the step's `StepRecorded` is the caller's (the session measures NLL first).

Which allocator plans a round is the registry `PLANNERS`: "numpy", the reference
(`engine/allocator.py`, named by the DESIGN's stages), and "numba", its compiled twin
(`engine/allocator_jit.py`), which gives exactly the reference's decisions (tested call by call)
about 10x faster. `plan` is the compiled one when numba can be imported, else the reference, with the
same results; `IMPL` says which. A Plan says which made it (`Plan.compiled`): the twin hands the calls
it does not cover to the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from contract import nodes
from contract.config import PlanKnobs
from contract.events import DecisionsRecorded, EntriesRecorded, LensAttention, Sink
from engine.allocator import plan as reference_plan
from engine.allocator_types import AllocatorState
from engine.working_context import WorkingContext, check_invariants

PLANNERS: dict[str, Callable] = {"numpy": reference_plan}
try:
    from engine.allocator_jit import plan_jit

    PLANNERS["numba"] = plan_jit
except ImportError:  # pragma: no cover - numba is in requirements.txt; this keeps a broken install usable
    pass

IMPL = "numba" if "numba" in PLANNERS else "numpy"
plan = PLANNERS[IMPL]


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
__all__ = ["IMPL", "PLANNERS", "Refocused", "ScoreFn", "Scores", "plan", "refocus"]
