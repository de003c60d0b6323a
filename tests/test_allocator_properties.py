"""Property tests: random score streams, knobs, budgets and chunk sizes; every invariant, every step."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import APPLIED, COLLAPSE, EXPAND, RunConfig, TreeConfig, WorkingContextConfig, min_w_max
from tests.allocsim import config, simulate


def _stream(seed: int, kind: str):
    """A raw score stream: per-node values so the same node tends to get related scores."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 64)

    def score(step: int, wc) -> np.ndarray:
        if kind == "uniform":
            return rng.uniform(-1, 1, wc.n).astype(np.float32)
        if kind == "oscillating":  # each node flips sign every step: the worst case for thrash
            sign = np.where((wc.index + step) % 2 == 0, 1.0, -1.0)
            return (sign * rng.uniform(0.2, 1.0, wc.n)).astype(np.float32)
        # smooth: slowly drifting waves along the stream, plus noise
        base = np.sin(wc.start / 500.0 + phase[step % 64] + step / 7.0)
        return np.clip(base + rng.normal(0, 0.3, wc.n), -1, 1).astype(np.float32)

    return score


knob_sets = st.fixed_dictionaries(
    {
        "block_size": st.sampled_from([4, 8, 32]),
        "max_lod": st.integers(1, 3),
        "protect_recent": st.integers(0, 96),
        "extra_budget": st.integers(0, 600),
        "refocus_every": st.integers(1, 80),
        "interp_gate": st.sampled_from([1.0, 0.5, 0.2]),
        "shift": st.sampled_from(["0,0", "0.3,0.3", "0,0.5"]),
        "gamma": st.sampled_from([1.0, 0.5, 2.0]),
        "tau": st.sampled_from([0.0, 0.2, 0.5]),
        "cooldown": st.integers(0, 4),
        "margin": st.sampled_from([0.0, 0.1, 0.3]),
        "max_edits": st.integers(1, 12),
        "iterations": st.integers(1, 2),
        "kind": st.sampled_from(["uniform", "oscillating", "smooth"]),
        "seed": st.integers(0, 2**16),
    }
)


def _cfg(k: dict) -> RunConfig:
    tree = TreeConfig(block_size=k["block_size"], max_lod=k["max_lod"])
    lo = min_w_max(tree, WorkingContextConfig(protect_recent=k["protect_recent"]))
    return config(
        f"tree.block_size={k['block_size']}",
        f"tree.max_lod={k['max_lod']}",
        f"wc.protect_recent={k['protect_recent']}",
        f"wc.w_max={lo + k['extra_budget']}",
        f"session.refocus_every={k['refocus_every']}",
        f"allocator.interp_gate={k['interp_gate']}",
        f"allocator.shift_kernel={k['shift']}",
        f"allocator.sharpen_gamma={k['gamma']}",
        f"allocator.tau_expand={k['tau']}",
        f"allocator.tau_collapse={k['tau']}",
        f"allocator.cooldown_steps={k['cooldown']}",
        f"allocator.hysteresis_margin={k['margin']}",
        f"allocator.max_edits={k['max_edits']}",
        f"allocator.iterations={k['iterations']}",
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(knob_sets, st.integers(60, 200))
def test_invariants_cooldown_cap_and_determinism(k, steps):
    cfg = _cfg(k)
    res = simulate(cfg, _stream(k["seed"], k["kind"]), steps)  # checks all invariants after every step

    # No voluntary reversal inside the cooldown (forced collapses may, as a last resort, and say so).
    last: dict[int, tuple[int, int]] = {}
    for step, node, action, forced in res.applied():
        if action in (EXPAND, COLLAPSE):
            if node in last and last[node][1] != action and not forced:
                assert step - last[node][0] >= cfg.allocator.cooldown_steps, (node, step, last[node])
            last[node] = (step, action)

    # The edit cap holds per step, across iterations.
    per_step: dict[int, int] = {}
    for step, d in res.decisions:
        per_step[step] = per_step.get(step, 0) + int(((d.outcome == APPLIED) & ~d.forced).sum())
    assert max(per_step.values(), default=0) <= cfg.allocator.max_edits

    # Identical inputs give identical decisions.
    again = simulate(cfg, _stream(k["seed"], k["kind"]), steps)
    assert len(again.decisions) == len(res.decisions)
    for (s1, d1), (s2, d2) in zip(res.decisions, again.decisions, strict=True):
        assert s1 == s2
        for f in ("node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq"):
            assert np.array_equal(getattr(d1, f), getattr(d2, f)), f
    assert again.wc.same_as(res.wc)


def test_long_stream_with_eviction_keeps_every_invariant():
    # A tight budget over a long stream: forced collapses every step, then evictions.
    cfg = config("tree.block_size=8", "tree.max_lod=1", "wc.w_max=120", "wc.protect_recent=16",
                 "session.refocus_every=8")  # fmt: skip
    res = simulate(cfg, _stream(3, "uniform"), 3000)
    assert res.wc.evicted_upto > 0
    rows = [r for _, d in res.decisions for r in d.rows()]
    evictions = [r for r in rows if r["action"] == "evict"]
    assert evictions and all(r["forced"] and r["outcome"] == "applied" and r["lod_to"] == -1 for r in evictions)
    assert any(r["forced"] and r["action"] == "collapse" for r in rows)


def test_every_candidate_has_a_known_outcome():
    cfg = config("wc.w_max=400")
    res = simulate(cfg, _stream(1, "uniform"), 300)
    outcomes = {r["outcome"] for _, d in res.decisions for r in d.rows()}
    assert outcomes <= {"applied", "cooldown", "hysteresis", "illegal", "protected", "budget", "edit_cap"}
    assert {"applied", "illegal", "budget", "edit_cap"} <= outcomes
