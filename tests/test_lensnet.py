"""LensNet: entry features, score range, attention normalisation, determinism, view handling, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract import LensNetConfig
from engine import FEATURE_NAMES, N_FEATURES, LensNet, ScoreView, WorkingContext, check_invariants, entry_features

D = 32
CFG = LensNetConfig(hidden=32, layers=2, heads=4, query_gists=2)


def _wc() -> WorkingContext:
    """40 blocks + a 5-token tail; blocks 0..31 collapsed (via LOD1) into one LOD2 gist, 32..39 raw."""
    wc = WorkingContext.empty(32, 2).advance(32 * 40 + 5)
    lod = np.array([2] + [0] * 8, np.int8)
    index = np.array([0] + list(range(32, 40)), np.int64)
    wc = wc.with_entries(lod, index)
    check_invariants(wc, w_max=2048, protect_blocks=4)
    return wc


def _view(wc: WorkingContext, m: int = 5, g: int | None = 3, seed: int = 0) -> ScoreView:
    gen = torch.Generator().manual_seed(seed)
    return ScoreView(
        wc=wc,
        step=3,
        w_max=2048,
        prev_score=np.linspace(-1, 1, wc.n).astype(np.float32),
        age_steps=np.arange(wc.n, dtype=np.int32),
        entry_vecs=torch.randn(wc.n, D, generator=gen),
        query_vecs=torch.randn(m, D, generator=gen),
        recent_gists=None if g is None else torch.randn(g, D, generator=gen),
    )


def test_features_plain_lod0_wc():
    wc = WorkingContext.empty(32, 2).advance(32 * 40)
    view = ScoreView(wc, 0, 2048, np.zeros(40, np.float32), np.zeros(40, np.int32))
    f = entry_features(view)
    assert f.shape == (40, N_FEATURES) and f.dtype == torch.float32 and len(FEATURE_NAMES) == N_FEATURES
    col = {name: f[:, i] for i, name in enumerate(FEATURE_NAMES)}
    assert torch.all(col["lod_is_0"] == 1) and torch.all(col["lod_frac"] == 0) and torch.all(col["cost_frac"] == 1)
    assert col["log_distance"][-1] == 0 and torch.all(col["log_distance"][:-1] > col["log_distance"][1:])
    assert col["rel_end"][-1] == 1 and torch.isfinite(f).all()


def test_features_mixed_wc():
    view = _view(_wc())
    f = entry_features(view)
    col = {name: f[:, i] for i, name in enumerate(FEATURE_NAMES)}
    assert col["lod_is_2"][0] == 1 and col["lod_frac"][0] == 1 and col["cost_frac"][0] == pytest.approx(1 / 32)
    assert col["log_span"][0] == pytest.approx(np.log1p(1024) / 10)
    assert col["log_span"][1] == pytest.approx(np.log1p(32) / 10)
    assert torch.allclose(col["prev_score"], torch.from_numpy(view.prev_score))
    assert torch.equal(entry_features(view), f)  # pure


def test_forward_shapes_range_and_attention():
    net = LensNet(D, CFG).eval()
    n, m = 9, 6
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        s, aux, q2e, e2q = net(
            torch.randn(n, D, generator=g), torch.randn(n, N_FEATURES, generator=g), torch.randn(m, D, generator=g)
        )
    assert s.shape == (n,) and aux.shape == (n,) and q2e.shape == (m, n) and e2q.shape == (n, m)
    assert torch.all(s.abs() <= 1) and torch.all(aux.abs() <= 1)
    assert torch.allclose(q2e.sum(-1), torch.ones(m), atol=1e-5)
    assert torch.allclose(e2q.sum(-1), torch.ones(n), atol=1e-5)


def test_score_view_and_determinism():
    view = _view(_wc())
    net = LensNet(D, CFG, seed=2).eval()
    r1, r2 = net.score_view(view), net.score_view(view)
    assert r1.scores.dtype == np.float32 and r1.scores.shape == (view.n,) and np.all(np.abs(r1.scores) <= 1)
    assert r1.attention.dtype == np.float32 and r1.attention.shape == (view.n,)
    assert r1.attention.sum() == pytest.approx(5 + CFG.query_gists, rel=1e-4)  # one unit of mass per query
    assert np.array_equal(r1.scores, r2.scores) and np.array_equal(r1.attention, r2.attention)
    other = LensNet(D, CFG, seed=2).eval().score_view(view)
    assert np.array_equal(r1.scores, other.scores)


def test_recent_gists_optional_and_capped():
    wc = _wc()
    net = LensNet(D, CFG).eval()
    none = net.score_view(_view(wc, g=None))
    empty = net.score_view(_view(wc, g=0))
    assert none.attention.sum() == pytest.approx(5, rel=1e-4) and empty.attention.sum() == pytest.approx(5, rel=1e-4)
    many = net.score_view(_view(wc, g=10))  # only the newest query_gists=2 join
    assert many.attention.sum() == pytest.approx(7, rel=1e-4)


def test_score_view_errors_and_empty():
    net = LensNet(D, CFG).eval()
    wc = _wc()
    bare = ScoreView(wc, 0, 2048, np.zeros(wc.n, np.float32), np.zeros(wc.n, np.int32))
    with pytest.raises(ValueError, match="entry_vecs"):
        net.score_view(bare)
    empty_wc = WorkingContext.empty(32, 2).advance(10)
    v = ScoreView(
        empty_wc, 0, 2048, np.zeros(0, np.float32), np.zeros(0, np.int32), torch.zeros(0, D), torch.zeros(10, D)
    )
    r = net.score_view(v)
    assert r.scores.shape == (0,) and r.attention.shape == (0,)
    with pytest.raises(ValueError, match="query"):
        net.score_view(_view(wc, m=0, g=None))


def test_init_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    LensNet(D, CFG, seed=0)
    assert torch.equal(torch.rand(2), expected)


def test_save_load(tmp_path):
    net = LensNet(D, CFG, seed=3).eval()
    p = tmp_path / "lensnet.safetensors"
    net.save(p)
    back = LensNet.load(p, D, CFG)
    view = _view(_wc())
    assert np.array_equal(net.score_view(view).scores, back.score_view(view).scores)
    with pytest.raises(ValueError, match="does not match"):
        LensNet.load(p, D, LensNetConfig(hidden=64, layers=2, heads=4))
    with pytest.raises(ValueError, match="does not exist"):
        LensNet.load(tmp_path / "nope.safetensors", D, CFG)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="corrupt"):
        LensNet.load(bad, D, CFG)
