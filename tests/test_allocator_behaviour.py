"""Allocator behaviour pinned on its own, for the reference and the compiled twin alike: a bug made
in both would pass their equality test, so each rule here is checked against its expected outcome.

- hysteresis boundary: a weak reversal at age `hysteresis_steps - 1` is refused, at `hysteresis_steps`
  allowed (cooldown 0, so only hysteresis can refuse it);
- forced collapses go lowest score first, and restore the budget with as few collapses as it needs:
  afterwards `w_max - (block_size - 1) < cost <= w_max`.
"""

from __future__ import annotations

import numpy as np
import pytest

from contract import APPLIED, COLLAPSE, EXPAND, HYSTERESIS, PlanKnobs, nodes
from engine import AllocatorState, WorkingContext, plan_jit
from engine.allocator import plan
from tests.allocsim import config

BS = 32
IMPLS = pytest.mark.parametrize("impl", [plan, plan_jit], ids=["reference", "compiled"])


def wc_of(lods: list[int]) -> WorkingContext:
    """A WC of one entry per block (LOD0 raw or LOD1 gist), blocks 0..n-1 read."""
    wc = WorkingContext.empty(BS, 2).advance(len(lods) * BS)
    return wc.with_entries(np.array(lods, np.int8), np.arange(len(lods), dtype=np.int64))


def scores(wc: WorkingContext, per_block: dict[int, float], rest: float = 0.0) -> np.ndarray:
    s = np.full(wc.n, rest, np.float32)
    for b, v in per_block.items():
        s[wc.start // BS == b] = v
    return s


def applied(p, action: int) -> list[int]:
    """Blocks (first block of the node's span) of the applied edits of one kind, in application order."""
    d = p.decisions
    k = np.flatnonzero(d.applied & (d.action == action))
    k = k[np.argsort(d.seq[k], kind="stable")]
    return [int(i) for i in nodes.node_index(d.node_id[k])]


@IMPLS
@pytest.mark.parametrize(("age", "outcome"), [(3, HYSTERESIS), (4, APPLIED)])
def test_a_weak_reversal_waits_exactly_hysteresis_steps(impl, age, outcome):
    """Block 3 expands at step 0; at step `age` a weak collapse signal (|s| within tau + margin) comes."""
    cfg = config("wc.w_max=4096", "wc.protect_recent=32", "allocator.cooldown_steps=0",
                 "allocator.hysteresis_steps=4", "allocator.hysteresis_margin=0.4")  # fmt: skip
    knobs, state = PlanKnobs.from_config(cfg), AllocatorState.initial(cfg.tree.max_lod)
    wc = wc_of([1] * 10 + [0] * 10)
    for step in range(age + 1):
        signal = {3: 0.5} if step == 0 else {3: -0.25} if step == age else {}
        p = impl(wc, scores(wc, signal), state, knobs, step)
        wc, state = p.wc, p.state
        if step == 0:
            assert applied(p, EXPAND) == [3]
    d = p.decisions
    row = np.flatnonzero(d.action == COLLAPSE)
    assert row.size == 1 and int(d.outcome[row[0]]) == outcome


@IMPLS
@pytest.mark.parametrize("over", [1, 31, 32, 62, 63])
def test_forced_collapses_go_lowest_score_first_and_stop_at_budget(impl, over):
    """20 raw blocks, the newest protected; the budget is short by `over` tokens. No score reaches a
    threshold, so every collapse is forced: lowest first, ceil(over / 31) of them, no more."""
    n, protect = 20, 4
    cost = n * BS
    cfg = config(f"wc.w_max={cost - over}", f"wc.protect_recent={protect * BS}", "allocator.max_edits=8")
    knobs, state = PlanKnobs.from_config(cfg), AllocatorState.initial(cfg.tree.max_lod)
    wc = wc_of([0] * n)
    ranked = [7, 2, 11, 5]  # the lowest scores, lowest first; every other block scores 0.1
    s = scores(wc, {b: -0.15 + 0.01 * i for i, b in enumerate(ranked)}, rest=0.1)
    p = impl(wc, s, state, knobs, 0)
    need = -(-over // (BS - 1))
    assert applied(p, COLLAPSE) == ranked[:need]
    assert p.decisions.forced[p.decisions.applied].all()
    assert cfg.wc.w_max - (BS - 1) < p.wc.total_cost <= cfg.wc.w_max
