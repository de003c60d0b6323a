"""One focused test per allocator knob, each on a constructed score stream with a known effect."""

from __future__ import annotations

import numpy as np
import pytest

from contract import APPLIED, BUDGET, EDIT_CAP, EXPAND, ILLEGAL, PROTECTED, PlanKnobs, nodes
from engine import AllocatorState, WorkingContext
from engine.allocator import plan
from tests.allocsim import config, simulate

BS = 32


def collapsed_wc(n_blocks: int, gist_blocks: int) -> WorkingContext:
    """n_blocks read; the oldest `gist_blocks` are LOD1 gists, the rest raw."""
    wc = WorkingContext.empty(BS, 2).advance(n_blocks * BS)
    lod = np.where(np.arange(n_blocks) < gist_blocks, 1, 0).astype(np.int8)
    return wc.with_entries(lod, np.arange(n_blocks, dtype=np.int64))


def block_score(values: dict[int, float] | None = None):
    """Score every entry 0 except those covering the given blocks."""
    values = values or {}

    def at(wc: WorkingContext, per_block: dict[int, float]) -> np.ndarray:
        s = np.zeros(wc.n, np.float32)
        first_block = wc.start // BS
        for b, v in per_block.items():
            s[first_block == b] = v
        return s

    return at


def run_static(cfg, wc, scores_by_step):
    """Plan repeatedly on a WC that reads nothing new; returns [(plan)] per step."""
    knobs, state, out = PlanKnobs.from_config(cfg), AllocatorState.initial(cfg.tree.max_lod), []
    for step, fn in enumerate(scores_by_step):
        p = plan(wc, fn(wc), state, knobs, step)
        wc, state = p.wc, p.state
        out.append(p)
    return out


def lod_of_block(wc: WorkingContext, b: int) -> int:
    return int(wc.lod[np.flatnonzero(wc.start == b * BS)[0]])


CFG_STATIC = ("wc.w_max=4096", "wc.protect_recent=32", "allocator.max_edits=8")


@pytest.mark.parametrize(
    "cooldown,margin,expected",
    [(0, 0.0, 19), (2, 0.0, 6), (4, 0.0, 3), (0, 0.4, 2), (3, 0.4, 2)],
)
def test_cooldown_and_margin_cut_ping_pongs(cooldown, margin, expected):
    # Block 3's utility flips +0.5 / -0.5 every step: without hysteresis it thrashes every step (19
    # reversals in 20 steps); a cooldown of 2 cuts that to exactly 6, of 4 to 3. With a margin the
    # reversal waits until the edit is no longer recent (hysteresis_steps=8): 2 in 20 steps.
    cfg = config(*CFG_STATIC, f"allocator.cooldown_steps={cooldown}", f"allocator.hysteresis_margin={margin}",
                 "allocator.hysteresis_steps=8")  # fmt: skip
    at = block_score()
    stream = [lambda wc, t=t: at(wc, {3: 0.5 if t % 2 == 0 else -0.5}) for t in range(20)]
    plans = run_static(cfg, collapsed_wc(20, 10), stream)
    edits = [(t, int(p.decisions.action[k])) for t, p in enumerate(plans) for k in np.flatnonzero(p.decisions.applied)]
    assert sum(1 for a, b in zip(edits, edits[1:], strict=False) if a[1] != b[1]) == expected


def test_margin_lets_a_strong_reversal_through():
    cfg = config(*CFG_STATIC, "allocator.cooldown_steps=1", "allocator.hysteresis_margin=0.3")
    at = block_score()
    stream = [lambda wc: at(wc, {3: 0.9}), lambda wc: at(wc, {3: -0.4}), lambda wc: at(wc, {3: -0.6})]
    plans = run_static(cfg, collapsed_wc(20, 10), stream)
    assert [r["outcome"] for r in plans[1].decisions.rows() if r["node_id"] == int(nodes.node_id(1, 3))] == [
        "hysteresis"
    ]
    assert lod_of_block(plans[1].wc, 3) == 0
    assert lod_of_block(plans[2].wc, 3) == 1  # -0.6 clears tau 0.2 + margin 0.3


@pytest.mark.parametrize("gate,expanded", [(1.0, True), (0.2, False)])
def test_interpolation_gate_damps_a_one_step_spike(gate, expanded):
    cfg = config(*CFG_STATIC, f"allocator.interp_gate={gate}")
    at = block_score()
    stream = [lambda wc: at(wc, {2: 0.0})] * 5 + [lambda wc: at(wc, {2: 0.9})]
    plans = run_static(cfg, collapsed_wc(20, 10), stream)
    assert plans[-1].stages["interp"][2] == pytest.approx(gate * 0.9)
    assert (lod_of_block(plans[-1].wc, 2) == 0) == expanded


def test_interpolation_gate_still_follows_a_sustained_signal():
    cfg = config(*CFG_STATIC, "allocator.interp_gate=0.2")
    at = block_score()
    plans = run_static(cfg, collapsed_wc(20, 10), [lambda wc: at(wc, {2: 0.9})] * 6)
    assert lod_of_block(plans[-1].wc, 2) == 0


@pytest.mark.parametrize("kernel,expected", [("0,0", {4}), ("0.3,0.3", {3, 4, 5})])
def test_shift_kernel_pulls_neighbours_into_detail(kernel, expected):
    cfg = config(*CFG_STATIC, f"allocator.shift_kernel={kernel}")
    at = block_score()
    plans = run_static(cfg, collapsed_wc(20, 10), [lambda wc: at(wc, {4: 0.9})])
    detail = {b for b in range(10) if lod_of_block(plans[0].wc, b) == 0}
    assert detail == expected


def test_sharpening_widens_the_gap_between_strong_and_weak():
    at = block_score()
    stream = [lambda wc: at(wc, {2: 0.9, 6: 0.3})]
    flat = run_static(config(*CFG_STATIC), collapsed_wc(20, 10), stream)[0]
    sharp = run_static(config(*CFG_STATIC, "allocator.sharpen_gamma=2.0"), collapsed_wc(20, 10), stream)[0]
    gap = lambda p: p.stages["final"][2] / p.stages["final"][6]  # noqa: E731
    assert gap(sharp) > 2 * gap(flat)
    # The weak entry clears tau_expand=0.2 unsharpened (0.3) but not sharpened (0.09).
    assert lod_of_block(flat.wc, 6) == 0 and lod_of_block(sharp.wc, 6) == 1
    assert lod_of_block(sharp.wc, 2) == 0


@pytest.mark.parametrize("cap,iterations", [(1, 1), (3, 1), (2, 2)])
def test_edit_cap_holds_per_step_across_iterations(cap, iterations):
    cfg = config(*CFG_STATIC, f"allocator.max_edits={cap}", f"allocator.iterations={iterations}")
    knobs, state = PlanKnobs.from_config(cfg), AllocatorState.initial(2)
    wc = collapsed_wc(20, 10)
    applied = 0
    for _ in range(iterations):  # one step, several rounds
        p = plan(wc, np.where(wc.lod > 0, 0.9, 0.0).astype(np.float32), state, knobs, step=0)
        applied += int(p.decisions.applied.sum())
        wc, state = p.wc, p.state
    assert applied == cap
    assert (p.decisions.outcome == EDIT_CAP).sum() == 10 - cap if iterations == 1 else True


def test_budget_blocks_expansion_best_first():
    # Room for exactly one expansion: the best candidate gets it, the next is refused for budget.
    wc = collapsed_wc(20, 10)
    cfg = config("wc.w_max=" + str(wc.total_cost + 31), "wc.protect_recent=32")
    at = block_score()
    p = run_static(cfg, wc, [lambda wc: at(wc, {1: 0.5, 5: 0.9})])[0]
    rows = {r["node_id"]: r["outcome"] for r in p.decisions.rows()}
    assert rows[int(nodes.node_id(1, 5))] == "applied" and rows[int(nodes.node_id(1, 1))] == "budget"
    assert BUDGET in p.decisions.outcome and p.wc.total_cost <= cfg.wc.w_max


def test_protection_and_legality_are_explained():
    wc = collapsed_wc(20, 10)
    cfg = config(*CFG_STATIC, "wc.protect_recent=64")
    s = np.zeros(wc.n, np.float32)
    s[-1] = -0.9  # newest block: protected
    s[15] = 0.9  # a LOD0 block cannot expand
    p = run_static(cfg, wc, [lambda wc: s])[0]
    assert PROTECTED in p.decisions.outcome and ILLEGAL in p.decisions.outcome
    assert not p.decisions.applied.any()


def test_group_collapse_to_lod2_needs_all_siblings():
    # 40 blocks: blocks 0..31 are LOD1 (a complete group), 32..39 raw. All want less detail.
    cfg = config("wc.w_max=4096", "wc.protect_recent=32")
    wc = collapsed_wc(40, 32)
    p = run_static(cfg, wc, [lambda wc: np.full(wc.n, -0.9, np.float32)])[0]
    assert lod_of_block(p.wc, 0) == 2
    # Now with one sibling still raw: the group must not collapse.
    wc2 = collapsed_wc(40, 31)
    p2 = run_static(cfg, wc2, [lambda wc: np.where(wc.lod == 1, -0.9, 0.0).astype(np.float32)])[0]
    row = [r for r in p2.decisions.rows() if r["node_id"] == int(nodes.node_id(2, 0))]
    assert row and row[0]["outcome"] == "illegal"
    assert 2 not in set(p2.wc.lod.tolist())


def test_forced_collapses_restore_the_budget_after_appends():
    # Scores never ask for a collapse, yet the budget holds: the allocator forces collapses.
    cfg = config("wc.w_max=512", "allocator.max_edits=1")
    res = simulate(cfg, lambda step, wc: np.full(wc.n, 0.1, np.float32), 300)
    rows = [r for _, d in res.decisions for r in d.rows()]
    assert rows and all(r["forced"] for r in rows if r["outcome"] == "applied")
    assert res.wc.total_cost <= 512


def test_expand_then_recency_window_is_exact():
    from engine import RecencyScorer, ScoreView, window_blocks

    cfg = config("wc.w_max=700")
    scorer, state = RecencyScorer(cfg), AllocatorState.initial(2)

    def score(step, wc):
        view = ScoreView(wc, step, cfg.wc.w_max, state.prev_score(wc), state.age_steps(wc, step))
        return scorer.score(view).scores

    res = simulate(config("wc.w_max=700", "allocator.iterations=2"), score, 400)
    wc = res.wc
    w = window_blocks(wc, 700, 4)
    raw_blocks = set((wc.start[wc.lod == 0] // BS).tolist())
    assert raw_blocks == set(range(wc.complete_blocks() - w, wc.complete_blocks()))
    assert EXPAND not in {int(a) for _, d in res.decisions for a in d.action[d.outcome == APPLIED]}
