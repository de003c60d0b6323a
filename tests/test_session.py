"""The streaming session on the tiny model: events, invariants, baselines, recency window, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import (
    SCORER_NAMES,
    AttentionRecorded,
    DecisionsRecorded,
    EntriesRecorded,
    GistsRecorded,
    LensAttention,
    MemorySink,
    NodesAdded,
    RunConfig,
    RunFinished,
    RunStarted,
    StepRecorded,
    TextRecorded,
    apply_overrides,
)
from engine import FULL_CONTEXT_MAX, InputError, build_engine, read_text, token_chunks, window_blocks
from engine.materialize import materialize

REPO = Path(__file__).resolve().parents[1]
TEXT = (Path(__file__).resolve().parent / "data" / "sample.txt").read_text()
SHORT = TEXT[:4000]  # ~125 refocus steps: enough for gists, LOD2 groups and forced collapses


def run(sets=(), text=SHORT, device="cpu"):
    cfg = apply_overrides(RunConfig(), ["wc.w_max=400", *sets])
    eng = build_engine(cfg, "tiny", device)
    sink = MemorySink()
    eng.session(sink, "test").run([text])
    return eng, sink


@pytest.mark.parametrize("scorer", SCORER_NAMES)
def test_every_scorer_runs_a_session(scorer):
    eng, sink = run([f"scorer.name={scorer}", "session.attention_every=5"])
    ev = sink.events
    assert isinstance(ev[0], RunStarted) and isinstance(ev[-1], RunFinished) and ev[-1].status == "complete"
    steps = sink.of(StepRecorded)
    n_tokens = len(SHORT.encode())
    assert ev[-1].tokens == n_tokens
    assert [s.step for s in steps] == list(range(len(steps))) == list(range(-(-n_tokens // 32)))
    assert all(s.wc_cost <= s.w_max for s in steps)
    nll = [s.nll for s in steps]
    assert all(np.isfinite(x) for x in nll[:-1]) and nll[-1] is None  # the last step has no next block
    assert sink.of(DecisionsRecorded) and sink.of(EntriesRecorded) and sink.of(NodesAdded)
    att = sink.of(AttentionRecorded)
    assert att and {int(x) for x in att[-1].layer} == {0, 1}
    # Attention mass of the newest block's queries sums to 1 per layer over entries + tail.
    a = att[-1]
    for layer in (0, 1):
        assert a.mass[a.layer == layer].sum() == pytest.approx(1.0, abs=1e-4)
    if scorer == "lensnet":
        assert sink.of(LensAttention)


def test_recency_session_is_an_exact_sliding_window():
    cfg = apply_overrides(RunConfig(), ["wc.w_max=400", "scorer.name=recency", "allocator.iterations=2"])
    eng = build_engine(cfg, "tiny", "cpu")
    sink = MemorySink()
    sess = eng.session(sink)
    sess.run([TEXT])
    # Each step's first-round WC is the previous step's WC plus the block just read: its raw blocks
    # must always be one contiguous run ending at the newest block (a sliding window).
    for e in sink.of(EntriesRecorded):
        if e.iteration == 0 and e.step > 0:
            raw = sorted((e.start[e.lod == 0] // 32).tolist())
            assert raw == list(range(raw[-1] - len(raw) + 1, raw[-1] + 1)) and e.end.max() == (raw[-1] + 1) * 32
    # And at the end the window is exactly as wide as the budget allows.
    wc = sess.wc
    raw = (wc.start[wc.lod == 0] // 32).tolist()
    w = window_blocks(wc, 400, 4)
    assert raw == list(range(wc.complete_blocks() - w, wc.complete_blocks()))
    assert w * 32 < 400 and (wc.lod > 0).any()


def test_baselines_and_determinism():
    _, a = run(["scorer.name=random", "session.baselines=true"])
    _, b = run(["scorer.name=random", "session.baselines=true"])
    sa, sb = a.of(StepRecorded), b.of(StepRecorded)
    assert [x.nll for x in sa] == [x.nll for x in sb]
    assert all(s.nll_recency is not None for s in sa[:-1])
    # The full-history baseline is quadratic, so it stops once history + next block pass FULL_CONTEXT_MAX.
    assert all((s.nll_full is not None) == (s.tokens_seen + 32 <= FULL_CONTEXT_MAX) for s in sa[:-1])
    # Whenever the WC holds the whole history raw (cost == tokens), its NLL is the full-context NLL.
    early = [s for s in sa if s.wc_cost == s.tokens_seen and s.nll is not None]
    assert early and all(s.nll == pytest.approx(s.nll_full, abs=1e-4) for s in early)
    da, db = a.of(DecisionsRecorded), b.of(DecisionsRecorded)
    assert len(da) == len(db)
    for x, y in zip(da, db, strict=True):
        assert np.array_equal(x.decisions.node_id, y.decisions.node_id)
        assert np.array_equal(x.decisions.outcome, y.decisions.outcome)


def test_compact_baselines_number_positions_from_zero():
    # In compact mode a short-context model never sees a position beyond the budget, baselines included.
    seen = []
    eng, _ = run(["scorer.name=recency", "wc.position_mode=compact", "session.baselines=true",
                  "session.max_tokens=1500"])  # fmt: skip
    orig = eng.model.nll_of_continuation

    def spy(prefix, pos, target, tpos):
        seen.append((prefix.shape[1], int(max(pos.max(), tpos.max()))))
        return orig(prefix, pos, target, tpos)

    eng.model.nll_of_continuation = spy
    eng.session(MemorySink()).run([SHORT[:1500]])
    # The WC and the recency window hold at most w_max positions: numbered from 0, never past w_max + a block.
    bounded = [p for n, p in seen if n <= 400]
    assert bounded and max(bounded) < 400 + 32
    # Only the full-history baseline goes further, and only while it fits the model's own context.
    assert all(p < eng.model.max_positions for _, p in seen)
    eng.model.model.config.max_position_embeddings = 600  # a short-context model
    sink = MemorySink()
    eng.session(sink).run([SHORT[:1500]])
    steps = sink.of(StepRecorded)[:-1]
    assert all((s.nll_full is not None) == (s.tokens_seen + 32 <= 600) for s in steps)
    assert any(s.nll_full is None for s in steps) and all(s.nll_recency is not None for s in steps)


def test_materialize_global_and_compact_positions():
    eng, sink = run(["scorer.name=recency", "session.max_tokens=3000"])
    sess = eng.session(MemorySink())
    sess.run([TEXT[:3000]])
    wc, tree = sess.wc, sess.tree
    assert (wc.lod > 0).any() and (wc.lod == 0).any()
    g = materialize(wc, tree, eng.model, "global")
    c = materialize(wc, tree, eng.model, "compact")
    T = wc.total_cost
    assert g.inputs_embeds.shape == (1, T, eng.model.hidden_size) and g.position_ids.shape == (1, T)
    assert torch.equal(c.position_ids[0], torch.arange(T)) and c.next_position == T
    pos = g.position_ids[0].numpy()
    k = int(np.flatnonzero(wc.lod > 0)[0])  # a gist sits at the centre of its span
    row = int(wc.cost[:k].sum())
    assert pos[row] == (wc.start[k] + wc.end[k] - 1) // 2
    assert np.array_equal(pos[-wc.tail_len :] if wc.tail_len else pos[:0], np.arange(wc.tail_start, wc.tokens_seen))
    gist = torch.from_numpy(tree.gists(int(wc.lod[k]), wc.index[k : k + 1]))[0]
    assert torch.allclose(g.inputs_embeds[0, row], gist)
    r = int(np.flatnonzero(wc.lod == 0)[0])  # raw rows are the token embeddings at their true positions
    row = int(wc.cost[:r].sum())
    ids = torch.from_numpy(tree.tokens(int(wc.start[r]), int(wc.end[r])).astype(np.int64))
    assert torch.equal(g.inputs_embeds[0, row : row + 32], eng.model.embed(ids))
    assert np.array_equal(pos[row : row + 32], np.arange(wc.start[r], wc.end[r]))


def test_streaming_tokenisation_matches_whole(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(TEXT * 3)
    from engine import ByteTokenizer

    tok = ByteTokenizer()
    pieces = list(token_chunks(read_text(str(p), chunk_bytes=97), tok.encode))
    assert len(pieces) > 10
    assert np.concatenate(pieces).tolist() == tok.encode(TEXT * 3)


def test_failure_mid_run_emits_failed():
    cfg = apply_overrides(RunConfig(), ["wc.w_max=400", "scorer.name=recency"])
    eng = build_engine(cfg, "tiny", "cpu")
    sink = MemorySink()

    def texts():
        yield TEXT[:2000]
        raise OSError("disk went away")

    with pytest.raises(OSError):
        eng.session(sink).run(texts())
    fin = sink.events[-1]
    assert isinstance(fin, RunFinished) and fin.status == "failed" and "disk went away" in fin.error
    assert sink.of(StepRecorded)  # what was done before the failure is still there


@pytest.mark.parametrize(
    "content,expect",
    [(b"", "empty"), (b"  \n\n ", "empty"), (b"abc\x00def", "binary"), (b"\xff\xfe\xfa bad", "not UTF-8")],
)
def test_bad_input_is_one_clear_error(tmp_path, content, expect):
    p = tmp_path / "in.txt"
    p.write_bytes(content)
    with pytest.raises(InputError, match=expect):
        list(read_text(str(p)))


def cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True, input=stdin, timeout=300
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--input", "/nonexistent/x.txt"], "input file not found"),
        (["--input", "tests"], "directory"),
        (["--input", "tests/data/sample.txt", "--set", "allocator.sharpen_gamma=0"], "allocator.sharpen_gamma"),
        (["--input", "tests/data/sample.txt", "--set", "allocator.nope=1"], "unknown knob"),
        (["--input", "tests/data/sample.txt", "--set", "wc.w_max=abc"], "cannot parse"),
        (["--input", "tests/data/sample.txt", "--set", "wc.w_max=100"], "wc.w_max"),
        (["--input", "tests/data/sample.txt", "--scorer", "oracle"], "scorer.name"),
        (["--input", "tests/data/sample.txt", "--model", "/nonexistent/model"], "does not exist"),
        (["--input", "tests/data/sample.txt", "--model", "tests"], "config.json"),
    ],
)
def test_cli_errors_are_one_line(args, needle):
    r = cli("run", "--quiet", "--model", "tiny", *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_cli_run_reads_stdin():
    r = cli(
        "run",
        "--quiet",
        "--model",
        "tiny",
        "--input",
        "-",
        "--scorer",
        "recency",
        "--set",
        "wc.w_max=400",
        stdin=TEXT[:5000],
    )
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["status"] == "complete" and out["tokens"] == len(TEXT[:5000].encode()) and out["mean_nll"] > 0
    r = cli("run", "--quiet", "--model", "tiny", "--input", "-", stdin="")
    assert r.returncode == 2 and "empty" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scorer", ["lensnet", "retrieval", "recency"])
def test_session_on_cuda(scorer):
    eng, sink = run([f"scorer.name={scorer}", "session.attention_every=4", "session.baselines=true"], device="cuda")
    assert eng.model.device.type == "cuda" and eng.model.dtype == torch.bfloat16
    steps = sink.of(StepRecorded)
    assert sink.events[-1].status == "complete" and all(s.wc_cost <= s.w_max for s in steps)
    assert all(np.isfinite(s.nll) for s in steps[:-1])
    # Same decisions as on the CPU for a structure-only scorer (the allocator is device-independent).
    if scorer == "recency":
        _, cpu = run([f"scorer.name={scorer}"], device="cpu")
        a = [d.decisions.node_id.tolist() for d in sink.of(DecisionsRecorded)]
        b = [d.decisions.node_id.tolist() for d in cpu.of(DecisionsRecorded)]
        assert a == b


def test_gists_recorded_are_the_trees_and_can_be_turned_off():
    cfg = apply_overrides(RunConfig(), ["wc.w_max=400"])
    eng = build_engine(cfg, "tiny", "cpu")
    sink = MemorySink()
    session = eng.session(sink, "test")
    session.run([SHORT])
    gists = [e for e in sink.events if isinstance(e, GistsRecorded)]
    added = [e for e in sink.events if isinstance(e, NodesAdded)]
    ids = np.concatenate([e.node_id for e in gists])
    lod = np.concatenate([e.lod for e in gists])
    want = np.concatenate([e.node_id[e.lod >= 1] for e in added])
    assert sorted(ids.tolist()) == sorted(want.tolist()) and ids.size > 0 and {1, 2} <= set(lod.tolist())
    for e in gists:  # each event's vectors are the tree's, row for row, and arrive with their nodes' step
        assert e.vector.shape == (e.node_id.size, eng.model.hidden_size)
        for v in np.unique(e.lod):
            m = e.lod == v
            idx = e.node_id[m] & ((1 << 40) - 1)
            np.testing.assert_array_equal(e.vector[m], session.tree.gists(int(v), idx))
    steps_of = {int(i): e.step for e in added for i in e.node_id}
    assert all(steps_of[int(i)] == e.step for e in gists for i in e.node_id)

    _, off = run(["session.record_gists=false"])
    assert not [e for e in off.events if isinstance(e, GistsRecorded)]


def test_text_recorded_is_the_document_block_by_block():
    text = "Café au lait, naïve façade. " * 40  # multi-byte characters: the tiny model's tokens are bytes
    _, sink = run(text=text)
    blocks = sink.of(TextRecorded)
    added = {int(i): e.step for e in sink.of(NodesAdded) for i, lod in zip(e.node_id, e.lod, strict=True) if lod == 0}
    ids = np.concatenate([e.node_id for e in blocks])
    assert sorted(ids.tolist()) == sorted(added)  # one row per block, with its node's first step
    assert all(added[int(i)] == e.step for e in blocks for i in e.node_id)
    starts = np.concatenate([e.start for e in blocks])
    assert np.array_equal(starts, np.arange(starts.size) * 32)
    raw = text.encode()
    # Each block is decoded on its own: a character cut at a block edge decodes as U+FFFD, the rest is the text.
    assert [x for e in blocks for x in e.text] == [raw[s : s + 32].decode(errors="replace") for s in starts.tolist()]
    n_full = len(raw) // 32 * 32  # the last, incomplete block (the tail) is never a node
    assert starts[-1] + 32 == n_full
    ascii_text = "plain words, no accents. " * 40
    _, sink = run(text=ascii_text)
    assert "".join(x for e in sink.of(TextRecorded) for x in e.text) == ascii_text[: len(ascii_text) // 32 * 32]
