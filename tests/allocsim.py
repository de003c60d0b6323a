"""A structure-only driver for allocator tests: advance the WC, refocus it (the engine's own step), check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from contract import APPLIED, EVICT, Decisions, DecisionsRecorded, MemorySink, PlanKnobs, RunConfig, apply_overrides
from engine import AllocatorState, Scores, WorkingContext, apply, check_invariants
from engine.allocator import plan
from engine.refocus import refocus


@dataclass
class SimResult:
    wc: WorkingContext
    decisions: list[tuple[int, Decisions]] = field(default_factory=list)  # (step, decisions)

    def applied(self) -> list[tuple[int, int, int, bool]]:
        """(step, node_id, action, forced) of every applied edit, in order."""
        out = []
        for step, d in self.decisions:
            idx = np.flatnonzero(d.outcome == APPLIED)
            idx = idx[np.argsort(d.seq[idx], kind="stable")]
            out += [(step, int(d.node_id[k]), int(d.action[k]), bool(d.forced[k])) for k in idx]
        return out

    def ping_pongs(self) -> int:
        """Applied edits that reverse the previous edit of the same node."""
        last: dict[int, int] = {}
        n = 0
        for _, node, action, _ in self.applied():
            if action == EVICT:
                continue
            if node in last and last[node] != action:
                n += 1
            last[node] = action
        return n


ScoreFn = Callable[[int, WorkingContext], np.ndarray]


def simulate(
    cfg: RunConfig,
    score_fn: ScoreFn,
    steps: int,
    *,
    wc: WorkingContext | None = None,
    tokens_per_step: int | None = None,
    check: bool = True,
) -> SimResult:
    """Run `steps` refocus steps through `engine.refocus.refocus` (the session's and replay's step);
    `score_fn(step, wc)` gives raw scores. Invariants checked each step, before and after refocusing,
    and every round's decisions replayed with `apply` must give the allocator's WC."""
    knobs = PlanKnobs.from_config(cfg)
    per = cfg.session.refocus_every if tokens_per_step is None else tokens_per_step
    wc = wc or WorkingContext.empty(cfg.tree.block_size, cfg.tree.max_lod)
    state = AllocatorState.initial(cfg.tree.max_lod)
    res = SimResult(wc)
    for step in range(steps):
        wc = wc.advance(wc.tokens_seen + per)
        if check:
            check_invariants(wc, knobs.w_max, knobs.protect_blocks, after_refocus=False, refocus_every=per)
        seen: list[WorkingContext] = []
        sink = MemorySink()

        def score(w: WorkingContext, _state, _it, step=step, seen=seen) -> Scores:
            seen.append(w)
            return Scores(score_fn(step, w))

        # `plan` is the reference allocator, looked up here so that a test can swap in another one
        r = refocus(wc, state, knobs, step, cfg.allocator.iterations, score, sink, record_entries=False, check=check,
                    planner=plan)  # fmt: skip
        rounds = [(e.step, e.decisions) for e in sink.of(DecisionsRecorded)]
        for before, after, (_, d) in zip(seen, [*seen[1:], r.wc], rounds, strict=True):
            assert apply(before, d).same_as(after), "apply() disagrees with plan()"
        res.decisions += rounds
        wc, state = r.wc, r.state
    res.wc = wc
    return res


def config(*sets: str) -> RunConfig:
    return apply_overrides(RunConfig(), list(sets))
