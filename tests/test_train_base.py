"""Tokenizer and base-LM training on a tiny corpus: loss falls, resume is exact, checkpoints are safetensors only."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.model import ModelLoadError, load_model
from engine.train.__main__ import PRESETS, main
from engine.train.base_lm import BaseLMConfig, build_model, train_base_lm
from engine.train.common import (
    Budget,
    Checkpointer,
    CheckpointError,
    ProgressLog,
    cosine_lr,
    load_tensors,
    seeded_generator,
)
from engine.train.corpus import CorpusConfig, build_corpus, read_split
from engine.train.tokenizer import EOS, TokenizerConfig, save_tokenizer, train_tokenizer

TINY = BaseLMConfig(**{**PRESETS["tiny"], "max_steps": 8, "eval_every": 4, "log_every": 2})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny corpus (python-like text, ~60k characters) and a 300-token tokenizer trained on it."""
    root = tmp_path_factory.mktemp("train")
    lib = root / "lib"
    lib.mkdir()
    for i in range(30):
        body = "".join(f"def func_{i}_{j}(value):\n    return value * {j} + {i}\n\n" for j in range(40))
        (lib / f"mod{i:02d}.py").write_text(f'"""Module {i}."""\n\nimport os\n\n' + body)
    corpus = root / "corpus"
    build_corpus(
        CorpusConfig(stdlib=str(lib), include_topics=False, validation_fraction=0.2, test_fraction=0.2), corpus
    )
    tok = train_tokenizer((t for _, t in read_split(corpus, "train")), TokenizerConfig(vocab_size=300))
    save_tokenizer(tok, root / "tok")
    return root


def _train(workdir, name, cfg=TINY, **kw):
    run, out = workdir / f"run_{name}", workdir / f"out_{name}"
    return train_base_lm(cfg, workdir / "corpus", workdir / "tok", run, out, **kw), run, out


def test_tokenizer_round_trips_and_loads_with_auto(workdir):
    tok = AutoTokenizer.from_pretrained(str(workdir / "tok"), local_files_only=True)
    assert len(tok) == 300 and tok.convert_ids_to_tokens(tok.eos_token_id) == EOS
    text = "def f(x):\n\treturn 'caf\u00e9 \u2603'  # \U0001f600\r\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text  # byte-level: exact, even for characters never seen in training
    assert tok.eos_token_id not in ids
    with pytest.raises(ValueError):
        TokenizerConfig(vocab_size=100)


def test_training_lowers_loss_and_export_reloads_identically(workdir):
    log, run, out = _train(workdir, "a")
    curve = log["curve"]
    assert [p["step"] for p in curve] == [2, 4, 6, 8]
    assert curve[-1]["loss"] < curve[0]["loss"] - 0.3  # from ~ln(300)=5.7 it must fall clearly
    assert curve[3]["val_loss"] < curve[1]["val_loss"]  # validation loss (steps 4 and 8) falls too
    assert {"validation", "test"} <= set(log["final_eval"])
    assert json.loads((out / "train_log.json").read_text())["curve"] == curve
    # The exported folder is a standard HF folder: safetensors weights, no pickle files.
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    # The engine's loader, plain transformers and the training checkpoint give identical logits.
    x = torch.arange(40)[None] % 300  # [1, 40]
    engine_model = load_model(str(out), device="cpu").model
    hf_model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, use_safetensors=True)
    ckpt_model = build_model(TINY, 300, 0, seeded_generator(123))
    saved = load_tensors(run / "checkpoint.safetensors")
    ckpt_model.load_state_dict({k[6:]: v for k, v in saved.items() if k.startswith("model.")}, strict=False)
    with torch.no_grad():
        ref = engine_model(input_ids=x).logits  # [1, 40, 300]
        assert torch.equal(ref, hf_model.eval()(input_ids=x).logits)
        assert torch.equal(ref, ckpt_model.eval()(input_ids=x).logits)
    assert engine_model.config.max_position_embeddings == TINY.seq_len


def test_resumed_run_equals_uninterrupted_run(workdir):
    full, run_full, _ = _train(workdir, "full")
    part, run_part, _ = _train(workdir, "part", stop_after_step=3)
    assert part["interrupted"] and part["step"] == 3 and not (workdir / "out_part").exists()
    resumed, run_part, _ = _train(workdir, "part")
    a = load_tensors(run_full / "checkpoint.safetensors")
    b = load_tensors(run_part / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p["loss"] for p in resumed["curve"]] == [p["loss"] for p in full["curve"]]
    # A run folder trained with another shape is refused, with one line.
    other = dataclasses.replace(TINY, hidden=64)
    with pytest.raises(CheckpointError, match="other hidden"):
        train_base_lm(other, workdir / "corpus", workdir / "tok", run_part, None)


def test_corrupt_or_missing_checkpoint_gives_one_clear_line(workdir, capsys):
    _, run, out = _train(workdir, "c", stop_after_step=2)
    (run / "checkpoint.safetensors").write_bytes(b"\x00garbage, not safetensors")
    capsys.readouterr()  # drop the progress lines of the training above
    argv = ["base", "--preset", "tiny", "--corpus", str(workdir / "corpus"), "--tokenizer", str(workdir / "tok")]
    assert main([*argv, "--run-dir", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "corrupt" in err and "\n" not in err
    (run / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state file .* is corrupt"):
        Checkpointer(run).load()
    with pytest.raises(CheckpointError, match="missing"):
        load_tensors(run / "nope.safetensors")
    assert Checkpointer(workdir / "never_trained").load() is None
    assert main(["eval-base", "--model", str(workdir / "no_such_model"), "--corpus", str(workdir / "corpus")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err


def test_model_folder_loads_only_through_safetensors(workdir, monkeypatch):
    _, run, out = _train(workdir, "s", cfg=dataclasses.replace(TINY, max_steps=2))

    def no_unpickling(*a, **k):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    load_model(str(out), device="cpu")
    Checkpointer(run).load()
    # Pickled weights beside (or instead of) safetensors are never read.
    weights = out / "model.safetensors"
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buf)
    (out / "pytorch_model.bin").write_bytes(buf.getvalue())
    weights.rename(out / "moved.st")
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        load_model(str(out), device="cpu")
    (out / "moved.st").rename(weights)
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: corrupt
    with pytest.raises(ModelLoadError, match="cannot load weights"):
        load_model(str(out), device="cpu")


def test_budget_schedule_and_progress_log():
    with pytest.raises(ValueError):
        Budget()
    b = Budget(max_steps=10, max_tokens=100)
    for _ in range(4):
        b.advance(tokens=20)
    assert b.fraction() == pytest.approx(0.8) and not b.done()
    b.advance(tokens=20)
    assert b.done()
    assert cosine_lr(0.0, 1.0, warmup=0.1) < 0.1 and cosine_lr(0.1, 1.0, warmup=0.1) == pytest.approx(1.0)
    assert cosine_lr(1.0, 1.0, warmup=0.1, floor=0.1) == pytest.approx(0.1)
    stream = io.StringIO()
    log = ProgressLog(every=5, stream=stream)
    b = Budget(max_steps=10)
    for i in range(10):
        b.advance(tokens=8)
        log.step(b, loss=10.0 - i)
    assert [p["step"] for p in log.curve] == [5, 10] and log.curve[0]["loss"] == 8.0
    assert stream.getvalue().count("\n") == 2 and "tok/s" in stream.getvalue()
    state = log.state(b, {"a": 1})
    assert state["step"] == 10 and state["tokens"] == 80 and state["curve"] == log.curve


def test_reexport_swaps_folder_and_marks_companions_stale(workdir):
    cfg = dataclasses.replace(TINY, max_steps=2)
    _, run, out = _train(workdir, "k", cfg=cfg)
    (out / "gistnet.safetensors").write_bytes(b"trained against the old base model")
    (out / "notes.txt").write_text("kept")
    log, _, _ = _train(workdir, "k", cfg=cfg)  # the run is already finished: it only exports again
    names = {p.name for p in out.iterdir()}
    assert "gistnet.safetensors.stale" in names and "gistnet.safetensors" not in names
    assert (out / "notes.txt").read_text() == "kept" and "model.safetensors" in names
    assert not (workdir / "out_k.old").exists() and not (workdir / "out_k.staging").exists()
    assert log["training"]["step"] == 2
