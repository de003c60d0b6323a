"""Tests for engine/scorers.py: the shared contract of every scorer, then each policy's behaviour."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from engine.config import SCORER_NAMES, RunConfig, ScorerConfig, WorkingContextConfig, protected_blocks
from engine.scorers import (
    CompressiveScorer,
    HopfieldScorer,
    LensNetScorer,
    RandomScorer,
    RecencyScorer,
    RetrievalScorer,
    build_scorer,
    prefix_cost,
    window_blocks,
)
from engine.view import ScoreResult, ScoreView
from engine.working_context import WorkingContext, check_invariants

BS, MAX_LOD, D = 32, 2, 16
HAVE_LENSNET = importlib.util.find_spec("engine.lensnet") is not None


def cfg_for(name: str = "recency", w_max: int = 512, **scorer) -> RunConfig:
    return RunConfig(wc=WorkingContextConfig(w_max=w_max), scorer=ScorerConfig(name=name, **scorer))


def make_view(wc: WorkingContext, step: int = 0, w_max: int = 512, seed: int = 0, vecs: bool = True) -> ScoreView:
    g = torch.Generator().manual_seed(seed)
    n = wc.n
    return ScoreView(
        wc=wc,
        step=step,
        w_max=w_max,
        prev_score=np.zeros(n, np.float32),
        age_steps=np.zeros(n, np.int32),
        entry_vecs=torch.randn(n, D, generator=g) if vecs else None,  # [n, D]
        query_vecs=torch.randn(3, D, generator=g) if vecs else None,  # [3, D]
        recent_gists=torch.randn(2, D, generator=g) if vecs else None,  # [2, D]
    )


def mixed_wc() -> WorkingContext:
    """100 blocks + 7 tail tokens: LOD2 node 0 (blocks 0..31), LOD1 32..79, LOD0 80..85, LOD1 86..87, LOD0 88..99."""
    wc = WorkingContext.empty(BS, MAX_LOD).advance(100 * BS + 7)
    lod = np.array([2] + [1] * 48 + [0] * 6 + [1] * 2 + [0] * 12, np.int8)
    index = np.array([0] + list(range(32, 80)) + list(range(80, 86)) + [86, 87] + list(range(88, 100)), np.int64)
    wc = wc.with_entries(lod, index)
    check_invariants(wc, 10_000, 4)
    return wc


def greedy_apply(wc: WorkingContext, scores: np.ndarray) -> WorkingContext:
    """A toy allocator with no budget or edit cap (the real one is engine/allocator.py).

    Expands every gist scoring > 0 (LOD l -> its children at l-1), collapses every LOD0 entry
    scoring < 0 into its LOD1 gist, and collapses a sibling group of `block_size` LOD-l entries
    (l >= 1), all present and all scoring < 0, into their parent.
    """
    bs, lod, idx = wc.block_size, wc.lod, wc.index
    groups: dict[tuple[int, int], int] = {}
    for i in range(wc.n):
        if 1 <= lod[i] < wc.max_lod and scores[i] < 0:
            key = (int(lod[i]), int(idx[i]) // bs)
            groups[key] = groups.get(key, 0) + 1
    full = {k for k, c in groups.items() if c == bs}
    out_lod: list[int] = []
    out_idx: list[int] = []
    emitted: set[tuple[int, int]] = set()
    for i in range(wc.n):
        lv, ix = int(lod[i]), int(idx[i])
        if lv >= 1 and (lv, ix // bs) in full:
            if (lv, ix // bs) not in emitted:
                emitted.add((lv, ix // bs))
                out_lod.append(lv + 1)
                out_idx.append(ix // bs)
        elif scores[i] > 0 and lv == 1:
            out_lod.append(0)
            out_idx.append(ix)
        elif scores[i] > 0 and lv > 1:
            out_lod += [lv - 1] * bs
            out_idx += range(ix * bs, (ix + 1) * bs)
        elif scores[i] < 0 and lv == 0:
            out_lod.append(1)
            out_idx.append(ix)
        else:
            out_lod.append(lv)
            out_idx.append(ix)
    return wc.with_entries(np.array(out_lod, np.int8), np.array(out_idx, np.int64))


def settle(wc: WorkingContext, scorer, w_max: int, step: int = 0, rounds: int = MAX_LOD + 1) -> WorkingContext:
    """Score-and-apply rounds until nothing changes (a parent collapse needs its children's collapse first)."""
    for _ in range(rounds):
        new = greedy_apply(wc, scorer.score(make_view(wc, step, w_max, vecs=False)).scores)
        if new.same_as(wc):
            return wc
        wc = new
    raise AssertionError(f"no fixpoint within {rounds} rounds")


# -- the contract every scorer shares ------------------------------------------------------------


def _build(name: str, **scorer):
    if name == "lensnet" and not HAVE_LENSNET:
        pytest.skip("engine/lensnet.py not written yet")
    return build_scorer(cfg_for(name, **scorer), d_embed=D)


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_contract_shape_range_determinism(name):
    scorer = _build(name)
    assert scorer.name == name
    for wc in (mixed_wc(), WorkingContext.empty(BS, MAX_LOD).advance(40 * BS)):
        view = make_view(wc, step=3)
        a, b = scorer.score(view), scorer.score(view)
        assert isinstance(a, ScoreResult)
        assert a.scores.shape == (wc.n,) and a.scores.dtype == np.float32
        assert np.isfinite(a.scores).all() and (np.abs(a.scores) <= 1.0).all()
        np.testing.assert_array_equal(a.scores, b.scores)  # replays depend on this
        if a.attention is not None:
            np.testing.assert_array_equal(a.attention, b.attention)


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_empty_wc_gives_empty_scores(name):
    scorer = _build(name)
    for vecs in (True, False):
        res = scorer.score(make_view(WorkingContext.empty(BS, MAX_LOD).advance(5), vecs=vecs))
        assert res.scores.shape == (0,) and res.scores.dtype == np.float32


@pytest.mark.parametrize("name", ["retrieval", "hopfield", "lensnet"])
def test_vector_scorer_without_vectors_raises(name):
    scorer = _build(name)
    assert scorer.needs_vectors
    with pytest.raises(ValueError, match="needs view.entry_vecs and view.query_vecs"):
        scorer.score(make_view(mixed_wc(), vecs=False))


def test_structure_scorers_need_no_vectors():
    for name in ("recency", "compressive", "random"):
        scorer = build_scorer(cfg_for(name))
        assert not scorer.needs_vectors
        scorer.score(make_view(mixed_wc(), vecs=False))


def test_vector_shape_mismatch_raises():
    view = dataclasses.replace(make_view(mixed_wc()), entry_vecs=torch.zeros(3, D))
    with pytest.raises(ValueError, match="entry_vecs must be"):
        RetrievalScorer(cfg_for("retrieval")).score(view)


# -- recency ---------------------------------------------------------------------------------------


def brute_window(wc: WorkingContext, w_max: int, protect: int) -> int:
    """Try every W, tiling the older blocks left to right with the largest aligned group that fits."""

    def tile_cost(lo: int, hi: int) -> int:
        cost, b = 0, lo
        while b < hi:
            size = next(s for s in (BS ** (lv - 1) for lv in range(MAX_LOD, 0, -1)) if b % s == 0 and b + s <= hi)
            cost, b = cost + 1, b + size
        return cost

    n, first = wc.complete_blocks(), wc.evicted_upto // BS
    ok = [w for w in range(n - first + 1) if w * BS + wc.tail_len + tile_cost(first, n - w) <= w_max]
    return min(n - first, max(max(ok, default=0), protect))


def test_prefix_cost_hand_cases():
    assert prefix_cost(0, 85, BS, MAX_LOD) == 2 + 21  # two LOD2 gists + 21 LOD1
    assert prefix_cost(5, 70, BS, MAX_LOD) == 27 + 1 + 6  # 5..31 as LOD1, one LOD2 (32..63), 64..69
    assert prefix_cost(0, 0, BS, MAX_LOD) == 0
    assert prefix_cost(0, 64, BS, 1) == 64


def test_window_blocks_hand_cases():
    empty = WorkingContext.empty(BS, MAX_LOD)
    # 100 blocks, tail 0, w_max 512. W=15: window 85..99 = 480, prefix 0..84 = 2 LOD2 + 21 LOD1 = 23;
    # 503 <= 512. W=16: 512 + (2 + 20) = 534 > 512. So W = 15.
    assert window_blocks(empty.advance(100 * BS), 512, 4) == 15
    # 40 blocks, tail 10: W=14: 448 + 10 + 26 LOD1 = 484 fits; W=15: 480 + 10 + 25 = 515 does not.
    assert window_blocks(empty.advance(40 * BS + 10), 512, 4) == 14
    # Everything fits raw: 10 blocks = 320 <= 512.
    assert window_blocks(empty.advance(10 * BS), 512, 4) == 10
    # Budget below the protected blocks: W=2 (64 + 8 = 72; W=3 is 96 + 7 = 103 > 100), raised to 4.
    assert window_blocks(empty.advance(10 * BS), 100, 4) == 4
    # After an eviction of the first LOD2 group: blocks 32..99 remain, prefix 32..84 = 1 LOD2 + 21 LOD1.
    wc = empty.advance(100 * BS)
    wc = wc.with_entries(np.array([1] * 68, np.int8), np.arange(32, 100), evicted_upto=32 * BS)
    assert window_blocks(wc, 512, 4) == 15  # 480 + 22 = 502 fits, 512 + 21 does not
    for case in (empty.advance(100 * BS), empty.advance(40 * BS + 10), wc):
        for w_max in (100, 285, 512, 777, 2048, 5000):
            assert window_blocks(case, w_max, 4) == brute_window(case, w_max, 4)


def test_window_blocks_matches_brute_force_on_many_streams():
    rng = np.random.default_rng(7)
    for _ in range(60):
        wc = WorkingContext.empty(BS, MAX_LOD).advance(int(rng.integers(0, 200 * BS)))
        w_max = int(rng.integers(1, 3000))
        assert window_blocks(wc, w_max, 4) == brute_window(wc, w_max, 4)


def test_recency_exact_scores_on_mixed_wc():
    # mixed_wc: 100 blocks, tail 7, w_max 512 -> W = 15 (480 + 7 + 23 = 510), window = blocks 85..99.
    wc = mixed_wc()
    assert window_blocks(wc, 512, 4) == 15
    scores = RecencyScorer(cfg_for()).score(make_view(wc, vecs=False)).scores
    expected = np.array(
        [0.0]  # LOD2 0..31: already the coarsest
        + [-1.0] * 32  # LOD1 32..63: a whole group older than the window -> collapse to LOD2
        + [0.0] * 16  # LOD1 64..79: their group reaches into the window, LOD1 is as coarse as legal
        + [-1.0] * 5  # LOD0 80..84: older than the window
        + [0.0]  # LOD0 85: first window block, already raw
        + [1.0] * 2  # LOD1 86..87: inside the window -> expand
        + [0.0] * 12,  # LOD0 88..99
        np.float32,
    )
    np.testing.assert_array_equal(scores, expected)


def test_recency_expands_a_gist_straddling_the_window():
    # 40 blocks, LOD2 0..31 then LOD0 32..39: W = 15 (480 + 25 = 505), window 25..39 cuts the LOD2 gist.
    wc = WorkingContext.empty(BS, MAX_LOD).advance(40 * BS)
    wc = wc.with_entries(np.array([2] + [0] * 8, np.int8), np.array([0] + list(range(32, 40)), np.int64))
    scores = RecencyScorer(cfg_for()).score(make_view(wc, vecs=False)).scores
    np.testing.assert_array_equal(scores, np.array([1.0] + [0.0] * 8, np.float32))


def test_recency_gists_wait_for_their_whole_group():
    # Blocks 32..63 are older than the window (85..99) but block 63 is still raw: collapsing the
    # LOD1 group 32..62 into LOD2 node 1 would be illegal now, so those gists score 0, not -1.
    wc = WorkingContext.empty(BS, MAX_LOD).advance(100 * BS)
    lod = np.array([2] + [1] * 31 + [0] + [1] * 21 + [0] * 15, np.int8)
    wc = wc.with_entries(lod, np.array([0] + list(range(32, 100)), np.int64))
    scores = RecencyScorer(cfg_for()).score(make_view(wc, vecs=False)).scores
    expected = np.array([0.0] + [0.0] * 31 + [-1.0] + [0.0] * 21 + [0.0] * 15, np.float32)
    np.testing.assert_array_equal(scores, expected)


@pytest.mark.parametrize("w_max", [285, 512, 1000])
def test_recency_simulation_lod0_is_exactly_the_window(w_max):
    cfg = cfg_for(w_max=w_max)
    scorer, protect = RecencyScorer(cfg), protected_blocks(cfg.tree, cfg.wc)
    wc = WorkingContext.empty(BS, MAX_LOD)
    for step in range(200):
        wc = wc.advance((step + 1) * BS)
        wc = settle(wc, scorer, w_max, step)
        n, w = wc.complete_blocks(), window_blocks(wc, w_max, protect)
        np.testing.assert_array_equal(np.sort(wc.index[wc.lod == 0]), np.arange(n - w, n))
        check_invariants(wc, w_max, protect)  # coarsest-legal prefix + window fits the budget


def test_recency_converges_when_the_budget_grows():
    # A WC settled under a small budget, re-scored under a larger one, must expand LOD2 gists back.
    wc = WorkingContext.empty(BS, MAX_LOD).advance(150 * BS)
    wc = settle(wc, RecencyScorer(cfg_for(w_max=285)), 285)
    assert (wc.lod == 2).sum() == 4
    wc = settle(wc, RecencyScorer(cfg_for(w_max=3000)), 3000)
    n, w = wc.complete_blocks(), window_blocks(wc, 3000, 4)
    np.testing.assert_array_equal(np.sort(wc.index[wc.lod == 0]), np.arange(n - w, n))
    check_invariants(wc, 3000, 4)


# -- compressive -----------------------------------------------------------------------------------


def test_compressive_three_bands_in_order():
    cfg = cfg_for("compressive", w_max=512)  # raw: 256 tokens = 8 blocks; LOD1 band: 128 blocks
    scorer = CompressiveScorer(cfg)
    wc = settle(WorkingContext.empty(BS, MAX_LOD).advance(300 * BS + 5), scorer, 512)
    lod = wc.lod.astype(int)
    assert (np.diff(lod) <= 0).all(), "detail must not decrease with recency"
    assert set(lod.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(wc.index[lod == 0], np.arange(292, 300))  # newest 8 blocks raw
    # LOD1 band = blocks 164..291; older = 0..163: five whole groups (0..159) as LOD2 gists, and
    # 160..163 cannot form a whole group, so they stay LOD1.
    assert wc.index[lod == 2].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(wc.index[lod == 1], np.arange(160, 292))
    assert (scorer.score(make_view(wc, w_max=512, vecs=False)).scores == 0).all()  # settled


def test_compressive_band_membership_by_last_block():
    cfg = cfg_for("compressive", w_max=512)
    # 140 blocks: raw band = newest 8 blocks (132..139), LOD1 band = 128 blocks (4..131), old = 0..3.
    wc = WorkingContext.empty(BS, MAX_LOD).advance(140 * BS)
    lod = np.array([2] + [1] * 68 + [0] * 4 + [1] * 32 + [0] * 4, np.int8)
    index = np.array([0] + list(range(32, 140)), np.int64)
    wc = wc.with_entries(lod, index)
    scores = CompressiveScorer(cfg).score(make_view(wc, w_max=512, vecs=False)).scores
    expected = np.array(
        [1.0]  # LOD2 0..31: its last block lies in the LOD1 band -> expand
        + [0.0] * 68  # LOD1 32..99: LOD1 band
        + [-1.0] * 4  # LOD0 100..103: LOD1 band -> collapse
        + [0.0] * 28  # LOD1 104..131: LOD1 band
        + [1.0] * 4  # LOD1 132..135: raw band -> expand
        + [0.0] * 4,  # LOD0 136..139: raw band
        np.float32,
    )
    np.testing.assert_array_equal(scores, expected)


# -- retrieval and hopfield ----------------------------------------------------------------------


def test_retrieval_top_k():
    wc = mixed_wc()
    view = make_view(wc, seed=1)
    target = 20
    view.entry_vecs[target] = view.query_vecs.mean(0)
    scores = RetrievalScorer(cfg_for("retrieval", retrieval_top_k=5)).score(view).scores
    assert int(np.argmax(scores)) == target and scores[target] == pytest.approx(1.0)
    assert (scores > 0).sum() == 5
    assert (scores[scores > 0] >= 0.5).all() and (scores[scores < 0] <= -0.5).all()  # clear tau = 0.2
    cos = torch.nn.functional.cosine_similarity(view.entry_vecs, view.query_vecs.mean(0)[None], dim=1).numpy()
    rest = scores < 0
    order = np.argsort(cos[rest])
    assert (np.diff(scores[rest][order]) >= 0).all()  # less similar = more negative


def test_retrieval_ties_go_to_newest():
    wc = WorkingContext.empty(BS, MAX_LOD).advance(10 * BS)
    view = dataclasses.replace(make_view(wc), entry_vecs=torch.ones(10, D), query_vecs=torch.ones(1, D))
    scores = RetrievalScorer(cfg_for("retrieval", retrieval_top_k=3)).score(view).scores
    np.testing.assert_array_equal(np.flatnonzero(scores > 0), [7, 8, 9])


def test_hopfield_recalls_the_matching_entry():
    view = make_view(mixed_wc(), seed=2)
    target = 40
    view.entry_vecs[target] = view.query_vecs.mean(0) * 3.0  # scale must not matter: vectors are normalised
    scores = HopfieldScorer(cfg_for("hopfield")).score(view).scores
    assert int(np.argmax(scores)) == target and scores[target] > 0.9
    others = np.delete(scores, target)
    assert others.max() < 0.5 and np.median(others) < -0.9  # a near match may keep a little mass


def test_hopfield_uniform_vectors_score_zero():
    wc = mixed_wc()
    view = dataclasses.replace(make_view(wc), entry_vecs=torch.ones(wc.n, D))
    scores = HopfieldScorer(cfg_for("hopfield")).score(view).scores
    np.testing.assert_allclose(scores, 0.0, atol=1e-5)


# -- random ----------------------------------------------------------------------------------------


def test_random_depends_only_on_seed_step_n():
    wc = mixed_wc()
    a = RandomScorer(cfg_for("random", seed=3))
    b = RandomScorer(cfg_for("random", seed=3))
    np.testing.assert_array_equal(a.score(make_view(wc, step=5)).scores, b.score(make_view(wc, step=5, seed=9)).scores)
    assert not np.array_equal(a.score(make_view(wc, step=5)).scores, a.score(make_view(wc, step=6)).scores)
    c = RandomScorer(cfg_for("random", seed=4))
    assert not np.array_equal(a.score(make_view(wc, step=5)).scores, c.score(make_view(wc, step=5)).scores)


# -- lensnet ---------------------------------------------------------------------------------------


class _FakeLens:
    """Stands in for LensNet: scores = tanh of each entry vector's first feature."""

    def __init__(self):
        self.calls = 0

    def score_view(self, view):
        self.calls += 1
        s = torch.tanh(view.entry_vecs[:, 0])  # [n]
        return ScoreResult(scores=s.numpy(), attention=torch.softmax(s, 0).numpy())


def test_lensnet_scorer_wraps_the_module():
    fake = _FakeLens()
    scorer = build_scorer(cfg_for("lensnet"), lensnet=fake)
    assert isinstance(scorer, LensNetScorer) and scorer.needs_vectors
    view = make_view(mixed_wc())
    res = scorer.score(view)
    np.testing.assert_allclose(res.scores, torch.tanh(view.entry_vecs[:, 0]).numpy())
    assert res.scores.dtype == np.float32 and res.attention.shape == (view.n,)
    empty = scorer.score(make_view(WorkingContext.empty(BS, MAX_LOD)))
    assert empty.scores.shape == (0,) and fake.calls == 1  # empty WC never reaches the module


def test_build_scorer_lensnet_needs_d_embed():
    with pytest.raises(ValueError, match="d_embed"):
        build_scorer(cfg_for("lensnet"))


@pytest.mark.skipif(not HAVE_LENSNET, reason="engine/lensnet.py not written yet")
def test_random_init_lensnet_is_seeded_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a = build_scorer(cfg_for("lensnet", seed=5), d_embed=D)
    b = build_scorer(cfg_for("lensnet", seed=5), d_embed=D)
    c = build_scorer(cfg_for("lensnet", seed=6), d_embed=D)
    assert torch.equal(before, torch.get_rng_state())
    view = make_view(mixed_wc())
    np.testing.assert_array_equal(a.score(view).scores, b.score(view).scores)
    assert not np.array_equal(a.score(view).scores, c.score(view).scores)  # the seed is the scorer's seed
