"""GistNet: shapes, determinism, mean-pool at init, safetensors round trip and load errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contract import GistNetConfig
from engine import GistNet

D, BS, MAX_LOD = 32, 8, 2
CFG = GistNetConfig(hidden=32, layers=2, heads=4, pooling="query")


def _children(b: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, BS, D, generator=g) + 0.5  # [B, BS, D]; offset so the mean is not ~0


@pytest.mark.parametrize("pooling", ["mean", "query"])
def test_shapes_and_levels(pooling):
    net = GistNet(D, GistNetConfig(hidden=32, layers=1, heads=4, pooling=pooling), MAX_LOD, BS).eval()
    for level in (1, 2):
        assert net(_children(), level).shape == (3, D)
    with pytest.raises(ValueError, match="level"):
        net(_children(), 3)
    with pytest.raises(ValueError, match="children"):
        net(torch.zeros(2, BS + 1, D), 1)


def test_dtype_follows_children():
    net = GistNet(D, CFG, MAX_LOD, BS).eval()
    out = net(_children().to(torch.bfloat16), 1)
    assert out.dtype == torch.bfloat16


def test_deterministic_and_seeded():
    x = _children()
    a, b = GistNet(D, CFG, MAX_LOD, BS, seed=1).eval(), GistNet(D, CFG, MAX_LOD, BS, seed=1).eval()
    with torch.no_grad():
        assert torch.equal(a(x, 1), a(x, 1))
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    c = GistNet(D, CFG, MAX_LOD, BS, seed=2)
    assert not torch.equal(a.pos_emb, c.pos_emb)


def test_init_leaves_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    GistNet(D, CFG, MAX_LOD, BS, seed=0)
    assert torch.equal(torch.rand(2), expected)


def test_rows_are_independent():
    """No batch-dependent state: a row's gist does not depend on the other rows."""
    net = GistNet(D, CFG, MAX_LOD, BS).eval()
    x = _children(4)
    with torch.no_grad():
        full = net(x, 1)
        alone = torch.cat([net(x[i : i + 1], 1) for i in range(4)])
    assert torch.allclose(full, alone, atol=1e-6)


def test_random_init_is_mean_pool():
    x = _children()
    net = GistNet(D, CFG, MAX_LOD, BS).eval()
    with torch.no_grad():
        out = net(x, 2)
    assert F.cosine_similarity(out, x.mean(dim=1), dim=-1).min() > 0.9


def test_learned_correction_changes_output():
    net = GistNet(D, CFG, MAX_LOD, BS).eval()
    with torch.no_grad():
        net.out_proj.weight.normal_(generator=torch.Generator().manual_seed(0))
        x = _children()
        assert not torch.allclose(net(x, 1), x.mean(dim=1))
        assert not torch.allclose(net(x, 1), net(x, 2))  # the level embedding matters


def test_save_load_round_trip(tmp_path):
    net = GistNet(D, CFG, MAX_LOD, BS, seed=4).eval()
    with torch.no_grad():
        net.out_proj.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    p = tmp_path / "gistnet.safetensors"
    net.save(p)
    back = GistNet.load(p, D, CFG, MAX_LOD, BS)
    x = _children()
    with torch.no_grad():
        assert torch.equal(net(x, 1), back(x, 1))


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        GistNet.load(tmp_path / "missing.safetensors", D, CFG, MAX_LOD, BS)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"definitely not safetensors")
    with pytest.raises(ValueError, match="corrupt"):
        GistNet.load(bad, D, CFG, MAX_LOD, BS)
    p = tmp_path / "g.safetensors"
    GistNet(D, CFG, MAX_LOD, BS).save(p)
    with pytest.raises(ValueError, match="does not match"):
        GistNet.load(p, D + 8, CFG, MAX_LOD, BS)
    with pytest.raises(ValueError, match="does not match"):
        GistNet.load(p, D, GistNetConfig(hidden=32, layers=2, heads=4, pooling="mean"), MAX_LOD, BS)
