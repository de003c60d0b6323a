"""Base model adapter: loading (tiny, local folder, every user error), forward, attention, NLL."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from engine import BaseModel, ByteTokenizer, ModelLoadError, build_tiny, load_model

TEXTS = ["the cat sat on the mat", "hello world, hello gists", "a long context needs a small working set"]


def _hf_tokenizer():
    """A byte-level BPE tokenizer trained in memory (no hub) that prepends <s> by default; vocab <= 256."""
    from tests.hf_fixtures import bpe_tokenizer

    return bpe_tokenizer(TEXTS * 4, vocab_size=200)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny_hf"
    build_tiny(seed=3).save_pretrained(d)
    _hf_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny() -> BaseModel:
    return load_model("tiny", device="cpu", seed=0)


def _copy(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# -- tokenizer and tiny model --


def test_byte_tokenizer_round_trip():
    t = ByteTokenizer()
    ids = t.encode("héllo ✓")
    assert all(0 <= i < 256 for i in ids) and len(ids) == len("héllo ✓".encode())
    assert t.decode(ids) == "héllo ✓"
    assert t.decode([0xFF]) == "\ufffd"  # invalid UTF-8 is replaced, never raises


def test_tiny_properties(tiny):
    assert (tiny.hidden_size, tiny.vocab_size) == (32, 256)
    assert tiny.device.type == "cpu" and tiny.dtype == torch.float32
    assert tiny.model_id == "tiny-llama-seed0"
    assert tiny.tokenize("ab") == [97, 98] and tiny.decode([97, 98]) == "ab"
    assert not any(p.requires_grad for p in tiny.model.parameters()) and not tiny.model.training


def test_tiny_determinism_by_seed():
    a, b, c = build_tiny(5).state_dict(), build_tiny(5).state_dict(), build_tiny(6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_build_tiny_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(0)
    assert torch.equal(torch.rand(3), expected)


# -- forward --


def _inputs(m: BaseModel, text: str = "working context!"):
    ids = torch.tensor(m.tokenize(text))
    x = m.embed(ids)[None]  # [1, T, d]
    pos = torch.arange(ids.shape[0])[None] * 7 + 1000  # [1, T]: sparse, far positions are legal
    return ids, x, pos


def test_forward_without_attentions(tiny):
    _, x, pos = _inputs(tiny)
    logits, att = tiny.forward(x, pos)
    assert logits.shape == (1, x.shape[1], 256) and logits.dtype == torch.float32 and att is None
    assert torch.isfinite(logits).all()


def test_forward_with_attentions_matches_sdpa(tiny):
    _, x, pos = _inputs(tiny)
    T = x.shape[1]
    logits_sdpa, _ = tiny.forward(x, pos)
    logits_eager, att = tiny.forward(x, pos, output_attentions=True)
    assert len(att) == 2
    for a in att:
        assert a.shape == (1, 4, T, T) and a.dtype == torch.float32
        assert torch.allclose(a.sum(-1), torch.ones(1, 4, T), atol=1e-5)
        assert torch.all(a.triu(diagonal=1) == 0)  # causal
    assert (logits_sdpa - logits_eager).abs().max() < 1e-4
    # Switched back: the next plain call runs SDPA again.
    assert tiny.model.config._attn_implementation == "sdpa"


def test_huge_global_positions(tiny):
    _, x, _ = _inputs(tiny)
    pos = torch.arange(x.shape[1])[None] + 900_000
    logits, _ = tiny.forward(x, pos)
    assert torch.isfinite(logits).all()


def test_nll_of_continuation_matches_manual(tiny):
    ids, x, pos = _inputs(tiny, "prefix then target")
    P = 7
    got = tiny.nll_of_continuation(x[:, :P], pos[:, :P], ids[P:], pos[0, P:])
    logits, _ = tiny.forward(x, pos)
    want = F.cross_entropy(logits[0, P - 1 : -1], ids[P:]).item()
    assert got == pytest.approx(want, abs=1e-5)
    per = tiny.continuation_nlls(x[:, :P], pos[:, :P], ids[P:], pos[0, P:])
    assert per.shape == (ids.shape[0] - P,) and per.mean() == pytest.approx(want, abs=1e-5)


def test_nll_edge_cases(tiny):
    ids, x, pos = _inputs(tiny)
    assert math.isnan(tiny.nll_of_continuation(x, pos, ids[:0], pos[0, :0]))
    one = tiny.nll_of_continuation(x[:, :3], pos[:, :3], ids[3:4], pos[0, 3:4])
    logits, _ = tiny.forward(x[:, :3], pos[:, :3])
    assert one == pytest.approx(F.cross_entropy(logits[0, 2:3], ids[3:4]).item(), abs=1e-5)
    with pytest.raises(ValueError):
        tiny.nll_of_continuation(x[:, :0], pos[:, :0], ids[:2], pos[0, :2])


# -- local Hugging Face folders --


def test_load_local_folder(hf_dir):
    m = load_model(str(hf_dir), device="cpu", dtype="float32")
    assert m.hidden_size == 32 and m.vocab_size == 256 and m.model_id == str(hf_dir.resolve())
    ids = m.tokenize("the cat sat")
    assert m.decode(ids) == "the cat sat"
    # The tokenizer adds <s> by default; the adapter must not.
    assert m.tokenizer.encode("the cat sat")[0] == m.tokenizer.bos_token_id
    assert m.tokenizer.bos_token_id not in ids
    # Same weights as the seed that wrote them.
    ref = build_tiny(3).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in m.model.state_dict().items())
    _, x, pos = _inputs(m, "the mat")
    _, att = m.forward(x, pos, output_attentions=True)
    assert att[0].shape[-1] == x.shape[1]


def test_auto_dtype_is_bf16_on_a_bf16_cpu_except_for_tiny(hf_dir):
    from engine import cpu_has_bf16, resolve_device

    want = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert load_model(str(hf_dir), device="cpu").dtype == want
    assert resolve_device("cpu", "auto", "default") == (torch.device("cpu"), want)
    assert resolve_device("cpu", "auto", "tiny")[1] == torch.float32
    assert resolve_device("cpu", "float32", "default")[1] == torch.float32
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_device("cpu", "fp8", "default")


def test_tail_attention_equals_the_eager_maps(tiny):
    _, x, pos = _inputs(tiny, "the cat sat on the mat and looked")
    logits, mass = tiny.forward_tail(x, pos, tail=3)
    ref_logits, att = tiny.forward(x, pos, output_attentions=True)
    ref = torch.stack([a[:, :, -3:, :].mean(dim=(1, 2)) for a in att])  # [L, 1, T]
    assert mass.shape == ref.shape and torch.allclose(mass, ref, atol=1e-6)
    assert torch.allclose(logits, tiny.forward(x, pos)[0]) and torch.allclose(mass.sum(-1), torch.ones(2, 1))
    _, by_head = tiny.forward_tail(x, pos, tail=3, heads=True)  # one row per head, the same maps
    ref_h = torch.stack([a[:, :, -3:, :].mean(dim=2) for a in att])  # [L, 1, H, T]
    assert by_head.shape == ref_h.shape and torch.allclose(by_head, ref_h, atol=1e-6)
    assert torch.allclose(by_head.mean(dim=2), mass, atol=1e-6)
    ids = torch.tensor(tiny.tokenize("ok then"))
    tpos = torch.arange(x.shape[1], x.shape[1] + ids.shape[0])
    nll, per_pos = tiny.continuation(x, pos, ids, tpos, attention=True)
    assert per_pos.shape == (2, x.shape[1]) and (per_pos.sum(-1) < 1).all()  # the block's own keys are left out
    assert torch.allclose(torch.from_numpy(nll), torch.from_numpy(tiny.continuation_nlls(x, pos, ids, tpos)))


def test_error_folder_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"), device="cpu")


def test_error_default_missing(tmp_path, monkeypatch):
    import engine.default_model as dm

    monkeypatch.setattr(dm, "CACHE_DIR", tmp_path / "cache" / "smollm2")
    with pytest.raises(ModelLoadError, match="not converted yet.*scripts/setup.sh"):
        load_model("default", device="cpu")


def test_error_no_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"), device="cpu")


def test_error_bad_config(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path, "bad")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(str(d), device="cpu")


def test_error_not_causal(tmp_path):
    from transformers import BertConfig, BertModel

    d = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(d)
    with pytest.raises(ModelLoadError, match="not a causal"):
        load_model(str(d), device="cpu")


def test_error_weights_missing(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path, "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load_model(str(d), device="cpu")


def test_error_weights_corrupt(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path, "corrupt")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cannot load weights"):
        load_model(str(d), device="cpu")


def test_error_weights_incomplete(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path, "incomplete")
    state = load_file(d / "model.safetensors")
    state.pop("lm_head.weight")
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="incomplete"):
        load_model(str(d), device="cpu")


def test_error_tokenizer_missing(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path, "notok")
    for f in d.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            f.unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_model(str(d), device="cpu")


def test_error_messages_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tmp_path / "nope"), device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_is_bf16_and_attention_switch_works():
    m = load_model("tiny", device="auto", seed=0)
    assert m.device.type == "cuda" and m.dtype == torch.bfloat16
    _, x, pos = _inputs(m)
    logits, _ = m.forward(x, pos)
    logits_eager, att = m.forward(x, pos, output_attentions=True)
    assert logits.dtype == torch.float32 and att[0].dtype == torch.float32
    assert (logits - logits_eager).abs().max() < 0.1  # bf16 kernels differ more than float32 ones
    cpu = load_model("tiny", device="cpu", seed=0)
    assert all(
        torch.equal(v.float().cpu(), cpu.model.state_dict()[k].to(torch.bfloat16).float())
        for k, v in m.model.state_dict().items()
    )


def test_tokens_attend_across_position_jumps(tiny):
    """Gists sit at their span's centre, so WC positions jump; transformers must not read the jumps as
    separate packed sequences (which would stop attention at every jump)."""
    _, x, pos = _inputs(tiny)  # positions 1000, 1007, 1014, ...: a jump before every token
    other = x.clone()
    other[0, 0] += 1.0
    assert not torch.allclose(tiny.forward(x, pos)[0][0, -1], tiny.forward(other, pos)[0][0, -1])
    _, att = tiny.forward(x, pos, output_attentions=True)
    assert float(att[0][0, :, -1, 0].min()) > 0  # the last query sees the first key in every head
