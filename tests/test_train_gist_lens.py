"""GistNet and LensNet training on the tiny model: losses fall, resume is exact, labels mean what they say,
shipped weights reload identically, errors are one line, and nothing is ever unpickled."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from contract import RunConfig, apply_overrides, protected_blocks
from engine import FEATURE_NAMES, GistNet, LensNet, Session, attention_utility, build_scorer, load_model, protected_from
from studio.train import (
    PREV,
    GistTrainConfig,
    LabelConfig,
    LensTrainConfig,
    TokenDoc,
    generate_labels,
    gistnet_train,
    horizon_logits,
    label_view,
    lensnet_train,
    run_episode,
    sample_windows,
    tokenize_text,
    train_gistnet,
    train_lensnet,
    wc_scores,
)
from studio.train.lens_labels import _NullSink, _Snapshotting

TEXT = (Path(__file__).resolve().parent / "data" / "sample.txt").read_text()
ENGINE = apply_overrides(RunConfig(), ["tree.block_size=8", "gistnet.hidden=32"])
LENS_ENGINE = apply_overrides(RunConfig(), ["wc.w_max=384"])
GIST_CFG = GistTrainConfig(steps=30, batch_size=8, horizon=16, lod2_share=0.0, max_gisted=1, prefix_blocks_max=4,
                           log_every=10, val_windows=8, lr=3e-3, save_every_s=3600)  # fmt: skip
LABELS = LabelConfig(episodes=3, states_per_episode=2, candidates=6, horizon=8, w_max_min=320, w_max_max=384,
                     max_tokens=1400, policies=("recency", "random"))  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    # The dev machine is shared: one thread is faster than two fighting, and makes timings steady.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def toks(tiny):
    return tokenize_text(TEXT, tiny.tokenize)


@pytest.fixture(scope="module")
def lens_docs(tiny):
    return [TokenDoc(n, t, tokenize_text(t, tiny.tokenize)) for n, t in (("a", TEXT[:6000]), ("b", TEXT[6000:]))]


@pytest.fixture(scope="module")
def label_states(tiny, lens_docs, tmp_path_factory):
    g = GistNet(tiny.hidden_size, LENS_ENGINE.gistnet, 2, 32)
    path = tmp_path_factory.mktemp("labels") / "labels.safetensors"
    return generate_labels(tiny, g, lens_docs, LABELS, LENS_ENGINE, path), path


# ---------------------------------------------------------------------------------------------
# GistNet


def test_gist_windows_and_variants_line_up(tiny, toks):
    net = GistNet(tiny.hidden_size, ENGINE.gistnet, 2, 8)
    gen = torch.Generator().manual_seed(0)
    win = sample_windows([toks], 4, level=1, n_gisted=2, prefix=16, horizon=8, block_size=8, gen=gen)
    assert win.tokens.shape == (4, 16 + 16 + 8) and (win.start + 16).remainder(8).eq(0).all()
    for mode in ("global", "compact"):
        full = horizon_logits(tiny.model, net, win, "full", mode)
        assert full.shape == (4, 8, tiny.vocab_size)
    # An untrained GistNet is exactly a mean-pool, so the two variants give the same predictions.
    a = horizon_logits(tiny.model, net, win, "gist", "global")
    b = horizon_logits(tiny.model, net, win, "mean_pool", "global")
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="no document has 80 tokens"):
        sample_windows([toks[:40]], 2, level=2, n_gisted=1, prefix=8, horizon=8, block_size=8, gen=gen)


def test_gistnet_training_lowers_the_kl(tiny, toks, tmp_path):
    docs = [toks[:80]]  # a handful of windows: the loss must fall on data it can fit
    out = train_gistnet(GIST_CFG, tiny, docs, docs, tmp_path / "run", tmp_path / "g.safetensors", ENGINE)
    before, after = out["val_initial"]["lod1"]["kl"], out["val"]["lod1"]["kl"]
    assert after < 0.5 * before, (before, after)
    assert out["steps"] == GIST_CFG.steps and out["curve"][-1]["step"] == GIST_CFG.steps


def test_gistnet_resume_is_exact_and_shipped_weights_reload(tiny, toks, tmp_path):
    cfg = GistTrainConfig(**{**GIST_CFG.__dict__, "steps": 6, "lod2_share": 0.5, "max_gisted": 2})
    docs = [toks[:3000], toks[3000:]]
    train_gistnet(cfg, tiny, docs, docs, tmp_path / "a", tmp_path / "a.safetensors", ENGINE)
    train_gistnet(cfg, tiny, docs, docs, tmp_path / "b", None, ENGINE, max_new_steps=3)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["step"] == 3
    out = train_gistnet(cfg, tiny, docs, docs, tmp_path / "b", tmp_path / "b.safetensors", ENGINE)
    assert out["steps"] == 6
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    net = GistNet.load(tmp_path / "a.safetensors", tiny.hidden_size, ENGINE.gistnet, 2, 8)
    ref = GistNet(tiny.hidden_size, ENGINE.gistnet, 2, 8)
    x = torch.randn(3, 8, tiny.hidden_size)
    assert not torch.equal(net(x, 1), ref(x, 1))  # trained weights, not the init
    again = GistNet.load(tmp_path / "a.safetensors", tiny.hidden_size, ENGINE.gistnet, 2, 8)
    assert torch.equal(net(x, 2), again(x, 2))


# ---------------------------------------------------------------------------------------------
# LensNet labels


def _snapshot(tiny, doc: TokenDoc, step: int):
    cfg = apply_overrides(LENS_ENGINE, ["wc.w_max=320", "scorer.name=random", "session.compute_nll=false"])
    cfg = apply_overrides(cfg, [f"session.max_tokens={(step + 1) * 32}"])
    g = GistNet(tiny.hidden_size, cfg.gistnet, 2, 32)
    snap = _Snapshotting(build_scorer(cfg), {step})
    sess = Session(cfg, tiny, g, snap, _NullSink(), "t")
    sess.run([doc.text])
    return cfg, sess, snap.views[0]


def test_label_is_the_counterfactual_nll_change_per_cost(tiny, lens_docs):
    doc = lens_docs[0]
    cfg, sess, view = _snapshot(tiny, doc, 30)
    c = view.wc.tokens_seen
    targets = doc.tokens[c : c + 8]
    lcfg = LabelConfig(candidates=8, horizon=8, position_mode="global")
    protect = protected_blocks(cfg.tree, cfg.wc)
    u, aux = label_view(tiny, sess.tree, view, targets, protect, lcfg, torch.Generator().manual_seed(1))
    wc = view.wc
    # The auxiliary target: where the 8 predicting queries looked, per entry, as attention_utility.
    res = wc_scores(tiny, sess.tree, [wc], targets, "global", attention=True)
    assert res.entry_mass[0].shape == (wc.n + 1,) and 0 < res.entry_mass[0].sum() <= 1
    assert np.allclose(aux, attention_utility(res.entry_mass[0][: wc.n], wc.cost), atol=1e-6)
    assert np.isfinite(aux).all() and (np.abs(aux) <= 1).all() and aux.std() > 0
    measured = np.flatnonzero(np.isfinite(u))
    assert measured.size == 8 and (wc.end[measured] <= protected_from(wc, protect)).all()
    assert {0, 1} <= set(wc.lod[measured].tolist())  # both raw blocks and gists are compared
    from studio.train import one_level_edit

    for i in measured[:3]:
        edited, finer = one_level_edit(wc, int(i))
        assert edited.total_cost - wc.total_cost == (31 if finer else -31)
        nll = wc_scores(tiny, sess.tree, [wc, edited], targets, "global").nll.mean(axis=1)
        want = (nll[0] - nll[1]) / 31 if finer else (nll[1] - nll[0]) / 31
        assert u[i] == pytest.approx(want, abs=1e-6)


def test_labels_resume_per_episode_and_skip_protected(tiny, lens_docs, label_states, tmp_path):
    states, path = label_states
    assert len(states) == LABELS.episodes * LABELS.states_per_episode
    protect = protected_blocks(LENS_ENGINE.tree, LENS_ENGINE.wc)
    for s in states:
        lab = s["label"]
        assert int(torch.isfinite(lab).sum()) == LABELS.candidates
        assert torch.isnan(lab[-protect:]).all()  # the newest blocks are protected: never measured
        assert s["feats"].shape == (lab.shape[0], len(FEATURE_NAMES)) and s["entry_vecs"].shape[0] == lab.shape[0]
        assert s["aux"].shape == lab.shape and torch.isfinite(s["aux"]).all()
    g = GistNet(tiny.hidden_size, LENS_ENGINE.gistnet, 2, 32)
    part = tmp_path / "part.safetensors"
    generate_labels(tiny, g, lens_docs, LabelConfig(**{**LABELS.__dict__, "episodes": 2}), LENS_ENGINE, part)
    resumed = generate_labels(tiny, g, lens_docs, LABELS, LENS_ENGINE, part)
    assert len(resumed) == len(states)
    for a, b in zip(states, resumed, strict=True):
        assert all(torch.equal(a[k], b[k]) or torch.allclose(a[k], b[k], equal_nan=True) for k in a if k != "meta")
    assert run_episode(tiny, g, TokenDoc("short", "x" * 300, np.zeros(300, np.int32)), LABELS, LENS_ENGINE, 0) == []


# ---------------------------------------------------------------------------------------------
# LensNet training


def test_lensnet_training_fits_the_rankings_and_resumes_exactly(tiny, label_states, tmp_path):
    states, _ = label_states
    cfg = LensTrainConfig(steps=40, states_per_step=4, lr=3e-3, val_share=0.0, log_every=10, save_every_s=3600)
    out = train_lensnet(cfg, states, tiny.hidden_size, tmp_path / "a", tmp_path / "a.safetensors", LENS_ENGINE)
    assert out["val"]["reg"] < out["val_initial"]["reg"]
    assert out["val"]["pair_acc"] > out["val_initial"]["pair_acc"]
    net = LensNet.load(tmp_path / "a.safetensors", tiny.hidden_size, LENS_ENGINE.lensnet)
    assert torch.count_nonzero(net.feat_proj.weight[:, PREV]) == 0  # prev_score is ignored (see the trainer)
    short = LensTrainConfig(**{**cfg.__dict__, "steps": 6})
    train_lensnet(short, states, tiny.hidden_size, tmp_path / "c", tmp_path / "c.safetensors", LENS_ENGINE)
    train_lensnet(short, states, tiny.hidden_size, tmp_path / "d", None, LENS_ENGINE, max_new_steps=4)
    train_lensnet(short, states, tiny.hidden_size, tmp_path / "d", tmp_path / "d.safetensors", LENS_ENGINE)
    c, d = load_file(str(tmp_path / "c.safetensors")), load_file(str(tmp_path / "d.safetensors"))
    assert all(torch.equal(c[k], d[k]) for k in c)


def test_configs_refuse_bad_values():
    with pytest.raises(ValueError, match="horizon"):
        GistTrainConfig(horizon=1)
    with pytest.raises(ValueError, match="baseline policies"):
        LabelConfig(policies=("lensnet",))
    with pytest.raises(ValueError, match="scale_quantile"):
        LensTrainConfig(scale_quantile=1.0)


@pytest.mark.parametrize(
    ("cls", "bad", "line"),
    [
        (GistTrainConfig, {"steps": 0}, "gistnet_train.steps must be >= 1, got 0"),
        (GistTrainConfig, {"lr": "a"}, "gistnet_train.lr must be a number, got 'a'"),
        (
            GistTrainConfig,
            {"position_mode": "x"},
            "gistnet_train.position_mode must be one of global, compact, got 'x'",
        ),
        (LensTrainConfig, {"scale_quantile": 1.0}, "lensnet_train.scale_quantile must be in (0, 1), got 1.0"),
        (LabelConfig, {"w_max_min": 2000}, "lens_labels.w_max_max must be >= w_max_min, got 1536"),
    ],
)
def test_training_knobs_are_declared_like_the_engine_s_and_named_in_one_line(cls, bad, line):
    """The trainers' configs declare range and help on each field (contract.config.knob), so their
    errors read like the engine's: the knob's full name, what it allows, the value refused."""
    with pytest.raises(ValueError) as e:
        cls(**bad)
    assert str(e.value) == line
    assert all("knob" in f.metadata and f.metadata["knob"].help for f in dataclasses.fields(cls))


# ---------------------------------------------------------------------------------------------
# command lines: one-line errors, end to end on a tiny corpus folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for split, part in (("train", TEXT[:9000]), ("validation", TEXT[9000:])):
        rows = [{"name": f"{split}{i}", "text": part} for i in range(2)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_gistnet_cli_trains_then_refuses_a_corrupt_checkpoint(corpus, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "g.safetensors"
    argv = ["--model", "tiny", "--corpus", str(corpus), "--run-dir", str(run), "--out", str(out),
            "--set", "steps=2", "--set", "batch_size=2", "--set", "val_windows=2", "--set", "horizon=8"]  # fmt: skip
    assert gistnet_train.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2 and out.is_file()
    (run / "checkpoint.safetensors").write_bytes(b"\x00garbage")
    assert gistnet_train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checkpoint") and "corrupt" in err[-1]
    (run / "checkpoint.safetensors").unlink()
    assert gistnet_train.main(argv) == 2
    assert "missing" in capsys.readouterr().err.strip().splitlines()[-1]


def test_lensnet_cli_end_to_end_and_missing_gistnet(corpus, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "l.safetensors"
    argv = ["--model", "tiny", "--corpus", str(corpus), "--run-dir", str(run), "--out", str(out),
            "--set", "steps=3", "--set-labels", "episodes=1", "--set-labels", "candidates=4",
            "--set-labels", "horizon=8", "--set-labels", "max_tokens=1000", "--set-labels", "w_max_min=320",
            "--set-labels", "w_max_max=352", "--set-labels", "policies=recency"]  # fmt: skip
    assert lensnet_train.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["steps"] == 3 and res["states"] >= 1 and out.is_file()
    assert lensnet_train.main([*argv, "--gistnet", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: GistNet weights file") and "does not exist" in err[0]


def test_training_code_never_unpickles():
    root = Path(__file__).resolve().parents[1] / "studio" / "train"
    for name in ("gistnet_train", "lensnet_train", "lens_labels", "gist_task", "wc_nll", "token_docs", "knob_sets"):
        src = (root / f"{name}.py").read_text()
        assert "torch.load" not in src and "pickle" not in src, name


def test_recall_episodes_label_the_step_before_each_answer_and_the_fact(tiny, lens_docs):
    from engine import recall_text

    rt = recall_text(lens_docs[0].tokens[:3000], tiny.tokenize, tiny.decode, np.random.default_rng(3), asks=3)
    ids = tokenize_text(rt.text, tiny.tokenize)
    key = tiny.decode(ids[rt.fact_start : rt.fact_end].tolist())
    digits = "".join(ch for ch in key if ch.isdigit())
    assert len(rt.answer_starts) == 3 and rt.fact_end <= rt.answer_starts[0]
    for a in rt.answer_starts:  # each answer is the key, right where the question ends
        assert tiny.decode(ids[a : a + len(digits) + 1].tolist()).strip() == digits
    cfg = LabelConfig(**{**LABELS.__dict__, "recall_share": 1.0, "max_tokens": 6000, "states_per_episode": 3})
    g = GistNet(tiny.hidden_size, LENS_ENGINE.gistnet, 2, 32)
    states = run_episode(tiny, g, lens_docs[0], cfg, LENS_ENGINE, 0)
    assert states and all(s["meta"]["recall"] for s in states)
    again = recall_text(lens_docs[0].tokens[: 6000 - 384], tiny.tokenize, tiny.decode, np.random.default_rng([0, 0]))
    seen = {s["meta"]["tokens_seen"] for s in states}
    asked = {(a // 32) * 32 for a in again.answer_starts if a // 32 * 32 >= 32 * -(-(384 + 64) // 32)}
    assert asked and asked <= seen  # every answer step inside the episode's window was snapshotted
