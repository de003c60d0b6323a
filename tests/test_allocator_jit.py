"""`plan_jit` (engine/refocus.py; kernels in engine/allocator_jit.py) against the reference `plan`:
bitwise the same Plan, call by call.

Every comparison covers all eight decision columns (dtype and bits), the four stages, the resulting
WC and the whole AllocatorState. The first call compiles the kernels (cached in __pycache__ after).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.allocsim as allocsim
import tests.test_allocator_knobs as knob_tests
from contract import EVICT, AllocatorConfig, PlanKnobs
from engine import AllocatorError, AllocatorState, WorkingContext, apply, check_invariants, plan_jit
from engine.allocator import plan
from tests.allocsim import config, simulate
from tests.test_allocator_properties import _cfg, _stream, knob_sets

DECISION_FIELDS = ("node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq")
STATE_FIELDS = ("node", "s_prev", "entered", "edit_node", "edit_step", "edit_dir")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bits (floats compared as bit patterns, so NaN == NaN and -0.0 != 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        a, b = a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")
    return bool(np.array_equal(a, b))


def assert_same_plan(p, q) -> None:
    for f in DECISION_FIELDS:
        assert _same(getattr(p.decisions, f), getattr(q.decisions, f)), (f, p.decisions.rows(), q.decisions.rows())
    assert p.stages.keys() == q.stages.keys()
    for k in p.stages:
        assert _same(p.stages[k], q.stages[k]), k
    assert p.wc.same_as(q.wc) and (p.wc.block_size, p.wc.max_lod) == (q.wc.block_size, q.wc.max_lod)
    for f in STATE_FIELDS:
        assert _same(getattr(p.state, f), getattr(q.state, f)), (f, getattr(p.state, f), getattr(q.state, f))
    assert (p.state.step, p.state.edits_used) == (q.state.step, q.state.edits_used)


def checked_plan(wc, raw, state, knobs, step):
    """Both planners on the same inputs; asserts they agree and returns the compiled one's Plan."""
    p, q = plan(wc, raw, state, knobs, step), plan_jit(wc, raw, state, knobs, step)
    assert_same_plan(p, q)
    assert apply(wc, q.decisions).same_as(q.wc)
    return q


# (1) Random knobs, budgets, chunk sizes and score streams: side by side for the whole run.


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(knob_sets, st.integers(60, 200))
def test_plan_jit_matches_plan_every_call(k, steps):
    cfg = _cfg(k)
    knobs, score = PlanKnobs.from_config(cfg), _stream(k["seed"], k["kind"])
    wc = WorkingContext.empty(cfg.tree.block_size, cfg.tree.max_lod)
    state = AllocatorState.initial(cfg.tree.max_lod)
    for step in range(steps):
        wc = wc.advance(wc.tokens_seen + cfg.session.refocus_every)
        for _ in range(cfg.allocator.iterations):
            q = checked_plan(wc, score(step, wc), state, knobs, step)
            wc, state = q.wc, q.state
        check_invariants(wc, knobs.w_max, knobs.protect_blocks)


# (2) The constructed one-knob scenarios of test_allocator_knobs.py, every call through both planners; the
# scenario's own assertions then check the compiled planner's outcomes.


def _knob_scenarios():
    for name, fn in inspect.getmembers(knob_tests, inspect.isfunction):
        if not name.startswith("test_"):
            continue
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            yield pytest.param(fn, {}, id=name)
            continue
        names = [a.strip() for a in marks[0].args[0].split(",")]
        for vals in marks[0].args[1]:
            vals = vals if len(names) > 1 else (vals,)
            yield pytest.param(fn, dict(zip(names, vals, strict=True)), id=f"{name}{list(vals)}")


@pytest.mark.parametrize("fn,kwargs", list(_knob_scenarios()))
def test_knob_scenarios_through_plan_jit(fn, kwargs, monkeypatch):
    monkeypatch.setattr(knob_tests, "plan", checked_plan)
    monkeypatch.setattr(allocsim, "plan", checked_plan)
    fn(**kwargs)


# (3) Edge cases.


def _run_static(cfg, wc, scores, steps=6):
    knobs, state = PlanKnobs.from_config(cfg), AllocatorState.initial(cfg.tree.max_lod)
    out = []
    for step in range(steps):
        q = checked_plan(wc, scores(step, wc), state, knobs, step)
        wc, state = q.wc, q.state
        out.append(q)
    return out


def _uniform(seed):
    rng = np.random.default_rng(seed)
    return lambda step, wc: rng.uniform(-1, 1, wc.n).astype(np.float32)


def test_empty_working_context():
    cfg = config("wc.w_max=400")
    wc = WorkingContext.empty(32, 2).advance(20)  # a 20-token tail, no complete block: n == 0
    plans = _run_static(cfg, wc, _uniform(0), steps=2)
    assert len(plans[0].decisions) == 0 and plans[0].wc.n == 0 and plans[0].state.node.size == 0


def test_empty_working_context_over_budget_raises_like_the_reference():
    knobs = PlanKnobs(AllocatorConfig(), 10, 1)  # below the tail alone: nothing to collapse or evict
    wc, state = WorkingContext.empty(32, 2).advance(20), AllocatorState.initial(2)
    with pytest.raises(AllocatorError) as ref_err:
        plan(wc, np.zeros(0, np.float32), state, knobs, 0)
    with pytest.raises(AllocatorError) as jit_err:
        plan_jit(wc, np.zeros(0, np.float32), state, knobs, 0)
    assert str(ref_err.value) == str(jit_err.value)


def test_lod0_only_working_context():
    cfg = config("wc.w_max=4096", "wc.protect_recent=64")
    wc = WorkingContext.empty(32, 2).advance(40 * 32 + 7)  # 40 raw blocks
    plans = _run_static(cfg, wc, _uniform(1))
    assert any(p.decisions.applied.any() for p in plans)


@pytest.mark.parametrize("max_lod", [1, 2, 3])
def test_all_max_lod_working_context(max_lod):
    bs = 4
    span = bs**max_lod // bs  # blocks per max_lod node
    wc = WorkingContext.empty(bs, max_lod).advance(12 * span * bs + 3)
    wc = wc.with_entries(np.full(12, max_lod, np.int8), np.arange(12, dtype=np.int64))
    cfg = config("tree.block_size=4", f"tree.max_lod={max_lod}", "wc.w_max=400", "wc.protect_recent=0")
    plans = _run_static(cfg, wc, _uniform(2))
    assert {"illegal"} <= {r["outcome"] for p in plans for r in p.decisions.rows()}  # max_lod cannot collapse


def test_eviction_every_step_of_a_long_tight_stream(monkeypatch):
    plans = []

    def checked_and_kept(*args):
        plans.append(checked_plan(*args))
        return plans[-1]

    monkeypatch.setattr(allocsim, "plan", checked_and_kept)
    cfg = config("tree.block_size=8", "tree.max_lod=1", "wc.w_max=120", "wc.protect_recent=16",
                 "session.refocus_every=8")  # fmt: skip
    res = simulate(cfg, _stream(3, "uniform"), 1500)
    assert res.wc.evicted_upto > 0
    assert any((d.action == EVICT).any() for _, d in res.decisions)
    assert len(plans) == 1500 and all(p.compiled for p in plans)  # forced collapses and evictions ran compiled


@pytest.mark.parametrize("raw", [np.array([0.1, np.nan, 0.0]), np.array([0.1, 1.01, 0.0]), np.zeros(2)])
def test_bad_scores_raise_the_reference_error(raw):
    wc = WorkingContext.empty(32, 2).advance(3 * 32)
    args = (wc, raw, AllocatorState.initial(2), PlanKnobs(AllocatorConfig(), 4096, 1), 0)
    with pytest.raises(ValueError) as ref_err:
        plan(*args)
    with pytest.raises(ValueError) as jit_err:
        plan_jit(*args)
    assert str(ref_err.value) == str(jit_err.value)


def test_numpy_scalar_knobs_fall_back_to_the_reference():
    # np.float64 thresholds promote float32 scores to float64 in the reference: plan_jit hands them over.
    a = AllocatorConfig(tau_expand=np.float64(0.2), tau_collapse=np.float64(0.2))
    wc = WorkingContext.empty(32, 2).advance(30 * 32)
    p = checked_plan(wc, _uniform(4)(0, wc), AllocatorState.initial(2), PlanKnobs(a, 800, 1), 0)
    assert not p.compiled  # answered by the reference
    same = AllocatorConfig()  # equal thresholds as Python floats: compiled (the memo keys on the types too)
    assert checked_plan(wc, _uniform(4)(0, wc), AllocatorState.initial(2), PlanKnobs(same, 800, 1), 0).compiled


def test_read_only_inputs_share_the_one_compiled_specialisation():
    from engine.allocator_jit import _pipeline, _plan

    wc = WorkingContext.empty(32, 2).advance(30 * 32 + 5)
    raw, lod, index = _uniform(5)(0, wc), wc.lod.copy(), wc.index.copy()
    for x in (raw, lod, index):
        x.flags.writeable = False  # as arrays read zero-copy from Arrow would be
    wc = WorkingContext(32, 2, wc.tokens_seen, 0, lod, index)
    checked_plan(wc, raw, AllocatorState.initial(2), PlanKnobs(AllocatorConfig(), 800, 1), 0)
    assert len(_pipeline.signatures) == 1 and len(_plan.signatures) == 1
