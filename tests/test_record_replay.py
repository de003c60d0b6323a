"""`engine record` / `engine replay` end to end: Parquet runs, exact replays, SIGKILL, live reading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from contract import nodes
from engine import WorkingContext, check_invariants
from telemetry import Run, metrics
from tests.cli_fixtures import REPO, SAMPLE, engine

DECISION_COLS = ["step", "iteration", "node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One real recording with the random scorer (it thrashes: good for hysteresis checks)."""
    out = tmp_path_factory.mktemp("runs") / "rec"
    r = engine("record", "--quiet", "--model", "tiny", "--input", str(SAMPLE), "--out", str(out), "--scorer", "random",
               "--set", "wc.w_max=400", "--set", "allocator.cooldown_steps=0", "--set", "allocator.hysteresis_margin=0",
               "--set", "session.attention_every=10")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def assert_recorded_wcs_valid(run: Run) -> int:
    """Rebuild every recorded pre-edit WC from the entries table and check the invariants on it."""
    cfg = run.manifest["config"]
    bs, max_lod, w_max = cfg["tree"]["block_size"], cfg["tree"]["max_lod"], cfg["wc"]["w_max"]
    protect = -(-cfg["wc"]["protect_recent"] // bs)
    steps = run.table("steps", columns=["step", "tokens_seen", "wc_cost", "w_max"])
    tokens = dict(zip(steps["step"].to_pylist(), steps["tokens_seen"].to_pylist(), strict=True))
    assert all(c <= w for c, w in zip(steps["wc_cost"].to_pylist(), steps["w_max"].to_pylist(), strict=True))
    e = run.table("entries", columns=["step", "node_id", "start"], where="iteration = 0")
    step, nid, start = e["step"].to_numpy(), e["node_id"].to_numpy(), e["start"].to_numpy()
    checked = 0
    for t in np.unique(step):
        if int(t) not in tokens:
            continue  # entries flushed, step row not yet: the recorder died in between
        m = step == t
        o = np.argsort(start[m], kind="stable")
        ids = nid[m][o]
        first = int(start[m][o][0]) if ids.size else 0
        wc = WorkingContext(bs, max_lod, tokens[int(t)], first, nodes.node_lod(ids), nodes.node_index(ids))
        check_invariants(wc, w_max, protect, after_refocus=False, refocus_every=cfg["session"]["refocus_every"])
        checked += 1
    return checked


def test_record_writes_a_complete_readable_run(recorded):
    run = Run(recorded)
    m = run.manifest
    assert m["status"] == "complete" and run.status == "complete" and m["scorer"] == "random"
    assert m["config_flat"]["wc.w_max"] == 400 and m["tokens"] == len(SAMPLE.read_bytes())
    assert run.n_steps() == m["steps"] == -(-m["tokens"] // 32)
    assert set(run.tables()) >= {"steps", "entries", "decisions", "attention", "nodes", "gists", "text"}
    text = run.table("text")  # the document, block by block (the tiny model's tokens are bytes)
    assert "".join(text["text"].to_pylist()).encode() == SAMPLE.read_bytes()[: m["tokens"] // 32 * 32]
    g, n = run.table("gists"), run.table("nodes", where="lod >= 1")
    assert sorted(g["node_id"].to_pylist()) == sorted(n["node_id"].to_pylist()) and g.num_rows > 0
    assert {len(v) for v in g["vector"].to_pylist()} == {m["model"]["hidden_size"]}
    assert not run.problems
    assert assert_recorded_wcs_valid(run) == run.n_steps()
    summary = json.loads(subprocess.run([sys.executable, "-m", "telemetry", "metrics", str(recorded)], cwd=REPO,
                                        capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert summary


def test_fast_replay_with_recorded_knobs_is_exact(recorded, tmp_path):
    out = tmp_path / "same"
    r = engine("replay", str(recorded), "--out", str(out))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["approximate"] is False and info["changed_knobs"] == {}
    a, b = Run(recorded).table("decisions"), Run(out).table("decisions")
    assert a.num_rows == b.num_rows > 0
    for c in DECISION_COLS:
        assert a[c].to_pylist() == b[c].to_pylist(), c
    man = Run(out).manifest
    assert man["parent"] == str(recorded.resolve()) and man["replay"] == "fast" and man["status"] == "complete"
    for table in ("nodes", "gists"):  # the same tree: copied whole, each row keeping its first step
        a, b = Run(recorded).table(table), Run(out).table(table)
        assert a.num_rows == b.num_rows > 0
        for c in ("node_id", "step", "lod"):
            assert a[c].to_pylist() == b[c].to_pylist(), (table, c)
    assert Run(recorded).table("gists")["vector"].to_pylist() == Run(out).table("gists")["vector"].to_pylist()
    assert Run(recorded).table("text").to_pylist() == Run(out).table("text").to_pylist()  # the same document


@pytest.mark.parametrize("cooldown", [1, 3, 8])
def test_larger_cooldown_never_adds_ping_pongs(recorded, tmp_path, cooldown):
    out = tmp_path / f"cool{cooldown}"
    r = engine("replay", str(recorded), "--out", str(out), "--set", f"allocator.cooldown_steps={cooldown}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changed_knobs"] == {"allocator.cooldown_steps": cooldown}
    before = metrics.oscillation(Run(recorded).table("decisions"))["ping_pongs"]
    after = metrics.oscillation(Run(out).table("decisions"))["ping_pongs"]
    assert before > 0 and after <= before
    assert assert_recorded_wcs_valid(Run(out)) > 0


def test_replay_errors_are_one_line(recorded, tmp_path):
    r = engine("replay", str(recorded), "--out", str(tmp_path / "x"), "--set", "scorer.name=recency")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--exact" in r.stderr
    r = engine("replay", str(tmp_path / "missing"), "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0
    r = engine("record", "--quiet", "--model", "tiny", "--input", str(SAMPLE), "--out", str(recorded))
    assert r.returncode == 2 and "already holds" in r.stderr  # never overwrites a recording silently


def test_exact_replay_reruns_the_scorer(recorded, tmp_path):
    out = tmp_path / "exact"
    r = engine("replay", str(recorded), "--out", str(out), "--exact", "--set", "scorer.name=recency")
    assert r.returncode == 0, r.stderr
    run = Run(out)
    assert run.manifest["replay"] == "exact" and run.manifest["scorer"] == "recency"
    assert run.manifest["changed_knobs"] == {"scorer.name": "recency"}
    nll = run.table("steps", columns=["nll"])["nll"].to_pylist()
    assert all(x is not None for x in nll[:-1])  # exact mode has the model: NLL is measured


def _long_input(tmp_path: Path) -> Path:
    p = tmp_path / "long.txt"
    p.write_text(SAMPLE.read_text() * 40)  # ~480k tokens: far longer than the test lets it run
    return p


def test_sigkill_mid_run_leaves_a_readable_interrupted_run(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "record", "--quiet",
         "--model", "tiny", "--input", str(_long_input(tmp_path)), "--out",
         str(out), "--scorer", "recency", "--set", "wc.w_max=400", "--set", "session.compute_nll=false",
         "--flush-rows", "2000", "--flush-seconds", "0.2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if Run(out).manifest.get("steps", 0) >= 150:
                    break
            except Exception:
                pass  # not started yet
            time.sleep(0.2)
        else:
            pytest.fail("recorder never got going")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1.2)
    run = Run(out, stale_after=1.0)
    assert run.manifest["status"] == "recording" and run.status == "interrupted"
    # Every part file in every table folder is whole; staging leftovers are never read.
    for table in run.tables():
        for part in (out / table).glob("*.parquet"):
            pq.read_table(part)
    assert not run.problems
    n = run.n_steps()
    assert n >= 150 and run.table("steps")["step"].to_pylist() == list(range(n))
    assert assert_recorded_wcs_valid(run) >= n


def test_reader_polls_a_live_recording(tmp_path):
    out = tmp_path / "live"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "record", "--quiet",
         "--model", "tiny", "--input", str(SAMPLE), "--out", str(out), "--scorer",
         "recency", "--set", "wc.w_max=400", "--set", "session.max_tokens=6000", "--set", "session.compute_nll=false",
         "--flush-rows", "500", "--flush-seconds", "0.1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen, statuses = [], set()
    while proc.poll() is None:
        if (out / "manifest.json").exists():
            run = Run(out)
            statuses.add(run.status)
            seen.append(run.n_steps())
            run.steps()  # whole read, while parts land
            run.lod_timeline(64, 32)
        time.sleep(0.2)
    assert proc.wait() == 0, proc.stderr.read()
    assert seen == sorted(seen) and len(set(seen)) > 2  # steps only grow, and we saw them grow
    assert "recording" in statuses and Run(out).status == "complete"


def test_a_passkey_scenario_recording_names_its_needle_and_reports_the_answer(tmp_path):
    out = tmp_path / "pk"
    r = engine("record", "--quiet", "--model", "tiny", "--scenario", "passkey", "--length", "1500", "--depth", "0.3",
               "--input", str(SAMPLE), "--out", str(out), "--set", "wc.w_max=400")  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    sc = m["scenario"]
    assert m["status"] == "complete" and sc["name"] == "passkey" and m["input"].endswith("scenario-input.txt")
    text = (out / "scenario-input.txt").read_text()
    start, end = sc["needle_span"]
    assert (
        sc["passkey"] in text[start : end + 200] and 0 < start < end < sc["n_tokens"] == m["tokens"]
    )  # bytes = tokens
    assert set(sc["result"]) == {"answer_nll", "recovered", "needle_lod"} and sc["result"]["needle_lod"] in (
        -1,
        0,
        1,
        2,
    )
    assert not (out / "_staging").exists()
    # an exact replay re-reads the scenario's own text
    r = engine("replay", str(out), "--out", str(tmp_path / "again"), "--exact", "--set", "scorer.name=recency")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["tokens"] == m["tokens"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_second_recorder_is_refused_and_a_terminated_one_flushes_and_says_why(tmp_path, sig):
    out = tmp_path / "locked"
    # Large flush thresholds: nothing reaches a part file before the signal, so the test sees the flush.
    cmd = [sys.executable, "-m", "engine", "record", "--quiet", "--model", "tiny", "--input",
           str(_long_input(tmp_path)), "--out", str(out), "--scorer", "recency", "--set", "wc.w_max=400",
           "--set", "session.compute_nll=false", "--flush-rows", "100000", "--flush-seconds", "1000"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "manifest.json").exists():
            time.sleep(0.2)
        assert (out / "manifest.json").exists(), "recorder never got going"
        time.sleep(1.0)  # some steps into the buffer
        second = engine(*cmd[3:])  # the same command: refused by the lock, before any model loads
        assert second.returncode == 2
        assert second.stderr.strip() == f"error: {out}: another recorder (pid {proc.pid}) is writing this run"
        assert proc.poll() is None  # the first one is untouched
    finally:
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    assert rc == 128 + sig, proc.stderr.read()
    run = Run(out)
    assert run.manifest["status"] == "failed"
    assert run.manifest["error"] == f"stopped by {signal.Signals(sig).name}"
    # The buffer was flushed (nothing was before the signal). The step the signal cut may have no
    # `steps` row yet while the manifest counts it: the tables' agreement at the cut is still open.
    assert run.n_steps() > 0 and run.manifest["steps"] - run.n_steps() in (0, 1)
    again = engine(*cmd[3:])
    assert again.returncode == 2 and "already holds a failed run; pass --overwrite" in again.stderr
    assert Run(out).n_steps() == run.n_steps()  # nothing recorded was deleted
