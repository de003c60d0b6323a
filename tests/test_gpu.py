"""Every path that puts tensors on an accelerator, on CUDA: training, labels, eval, scenarios, attention.

The tiny model keeps these fast; each test compares against the CPU where the two must agree, or
checks that the run completes with finite numbers where bf16 makes bit-equality meaningless. The last
tests use the default model (SmolLM2-135M) when its conversion is present. All skip without CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import MemorySink, RunConfig, StepRecorded, apply_overrides
from engine import GistNet, build_engine, load_model
from studio import cli
from studio.train import (
    GistTrainConfig,
    LabelConfig,
    LensTrainConfig,
    TokenDoc,
    generate_labels,
    tokenize_text,
    train_gistnet,
    train_lensnet,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DATA = Path(__file__).resolve().parent / "data" / "sample.txt"
TEXT = DATA.read_text()


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", device="cuda")


def test_tail_attention_on_cuda_matches_the_eager_maps(tiny):
    ids = torch.tensor(tiny.tokenize(TEXT[:300]))
    x, pos = tiny.embed(ids)[None], (torch.arange(ids.shape[0]) * 3)[None]
    _, mass = tiny.forward_tail(x, pos, tail=16)
    _, att = tiny.forward(x, pos, output_attentions=True)
    ref = torch.stack([a[:, :, -16:, :].mean(dim=(1, 2)) for a in att])
    assert mass.device.type == "cuda" and torch.allclose(mass, ref, atol=2e-2)


@pytest.mark.parametrize("scorer", ["attention", "sink", "lensnet", "hopfield"])
def test_every_scorer_runs_a_session_on_cuda(scorer):
    cfg = apply_overrides(RunConfig(), ["wc.w_max=400", f"scorer.name={scorer}", "session.attention_every=3",
                                        "session.nll_every=2"])  # fmt: skip
    eng = build_engine(cfg, "tiny", "cuda")
    sink = MemorySink()
    eng.session(sink, "t").run([TEXT[:4000]])
    steps = [e for e in sink.events if isinstance(e, StepRecorded)]
    assert sink.events[-1].status == "complete" and all(s.wc_cost <= s.w_max for s in steps)
    assert all(np.isfinite(s.nll) for s in steps[:-1:2]) and all(s.nll is None for s in steps[1:-1:2])


def test_gistnet_and_lensnet_train_on_cuda(tiny, tmp_path):
    toks = tokenize_text(TEXT, tiny.tokenize)
    engine_cfg = apply_overrides(RunConfig(), ["wc.w_max=384"])
    gcfg = GistTrainConfig(steps=4, batch_size=4, horizon=16, lod2_share=0.5, val_windows=4, save_every_s=3600)
    out = train_gistnet(gcfg, tiny, [toks], [toks], tmp_path / "g", tmp_path / "g.safetensors", engine_cfg,
                        base_model="tiny")  # fmt: skip
    assert out["steps"] == 4 and np.isfinite(out["val"]["lod1"]["kl"])
    g = GistNet.load(tmp_path / "g.safetensors", tiny.hidden_size, engine_cfg.gistnet, 2, 32).to("cuda")
    docs = [TokenDoc("a", TEXT[:6000], tokenize_text(TEXT[:6000], tiny.tokenize))]
    lcfg = LabelConfig(episodes=1, states_per_episode=2, candidates=4, horizon=8, w_max_min=320, w_max_max=384,
                       max_tokens=1400, policies=("recency",))  # fmt: skip
    states = generate_labels(tiny, g, docs, lcfg, engine_cfg, tmp_path / "labels.safetensors")
    assert states and all(torch.isfinite(s["aux"]).all() for s in states)
    res = train_lensnet(LensTrainConfig(steps=3, states_per_step=2, val_share=0.0), states, tiny.hidden_size,
                        tmp_path / "l", tmp_path / "l.safetensors", engine_cfg, device="cuda")  # fmt: skip
    assert res["steps"] == 3 and (tmp_path / "l.safetensors").is_file()


def test_eval_and_passkey_on_cuda(capsys):
    small = ["--model", "tiny", "--device", "cuda", "--set", "wc.w_max=320", "--set", "session.max_tokens=1280",
             "--nll-every", "4", "--gist-samples", "8", "--gist-horizon", "16", "--quiet"]  # fmt: skip
    assert cli.main(["eval", "--input", str(DATA), *small, "--policies", "lensnet,recency,attention,sink"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert all(np.isfinite(res["policies"][p]["nll"]) for p in ("lensnet", "recency", "attention", "sink"))
    assert cli.main(["eval", "--scenario", "passkey", "--input", str(DATA), *small, "--lengths", "600",
                     "--depths", "0.5", "--policies", "recency,retrieval"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert set(res["policies"]) >= {"recency", "retrieval", "oracle", "window"}


def test_gpu_benchmark_smoke():
    from bench.bench_gpu import main

    out = main(["--model", "tiny", "--device", "cuda", "--tokens", "8192", "--steps", "8", "--reps", "2"])
    assert out["device"].startswith("cuda") and out["focus_ms"] > 0 and out["forward_ms"] > 0


def _converted() -> bool:
    from engine import CACHE_DIR

    return (CACHE_DIR / "conversion.json").is_file()


@pytest.mark.skipif(not _converted(), reason="the default model is not converted (bash scripts/setup.sh)")
def test_default_model_on_cuda_agrees_with_the_cpu():
    gpu = load_model("default", device="cuda")
    cpu = load_model("default", device="cpu", dtype="float32")
    ids = torch.tensor(gpu.tokenize(TEXT[:2000]))[:256]
    x = gpu.embed(ids[:-32])[None]
    pos = torch.arange(x.shape[1])[None]
    tgt, tpos = ids[-32:], torch.arange(x.shape[1], x.shape[1] + 32)
    a = gpu.continuation_nlls(x, pos, tgt, tpos)
    b = cpu.continuation_nlls(cpu.embed(ids[:-32])[None], pos, tgt, tpos)
    assert gpu.dtype == torch.bfloat16 and abs(float(a.mean()) - float(b.mean())) < 0.05
