"""`engine replay` on sources that are not a clean, finished run: a manifest edited by hand, a run
still recording, an interrupted or failed one, and one whose part files the reader skips."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from studio import EXIT_SKIPPED, cli
from telemetry import Run

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample.txt"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A short tiny-model recording flushed often, so that each table has several part files."""
    tmp = tmp_path_factory.mktemp("src")
    text = tmp / "in.txt"
    text.write_text(SAMPLE.read_text()[:3000])
    out = tmp / "rec"
    r = subprocess.run([sys.executable, "-m", "engine", "record", "--quiet", "--model", "tiny", "--input", str(text),
                        "--out", str(out), "--scorer", "recency", "--set", "wc.w_max=400", "--flush-rows", "300"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(list((out / "steps").glob("part-*.parquet"))) >= 4
    return out


@pytest.fixture
def source(recorded, tmp_path) -> Path:
    """A copy of the recording this test may damage."""
    return Path(shutil.copytree(recorded, tmp_path / "src"))


def _edit_manifest(run: Path, **fields) -> None:
    path = run / "manifest.json"
    m = json.loads(path.read_text())
    m.update(fields)
    path.write_text(json.dumps(m))


def replay(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["replay", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_clean_replay_records_its_source_status_and_no_problems(source, tmp_path, capsys):
    code, out, err = replay(capsys, source, "--out", tmp_path / "out")
    assert code == 0 and "warning" not in err, err
    summary, man = json.loads(out), Run(tmp_path / "out").manifest
    assert summary["source_status"] == man["source_status"] == "complete"
    assert summary["source_problems"] == man["source_problems"] == []


def test_a_manifest_with_a_knob_of_the_wrong_type_is_one_line_naming_the_file_and_the_knob(source, tmp_path, capsys):
    m = json.loads((source / "manifest.json").read_text())
    m["config"]["tree"]["block_size"] = "abc"
    m["config_flat"]["tree.block_size"] = "abc"
    (source / "manifest.json").write_text(json.dumps(m))
    code, out, err = replay(capsys, source, "--out", tmp_path / "out", "--set", "allocator.tau_expand=0.3")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(source / "manifest.json") in lines[0] and "tree.block_size" in lines[0], err
    assert not (tmp_path / "out").exists()


def test_a_run_still_recording_is_refused(source, tmp_path, capsys):
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    _edit_manifest(source, status="recording", heartbeat_at=now, updated_at=now)
    assert Run(source).status == "recording"
    code, out, err = replay(capsys, source, "--out", tmp_path / "out")
    assert code == 2 and err.strip() == f"error: {source} is still recording; replay it after it ends", err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("status", ["interrupted", "failed"])
def test_an_interrupted_or_failed_run_is_replayed_and_says_so(source, tmp_path, capsys, status):
    if status == "interrupted":  # a recording whose heartbeat stopped long ago
        _edit_manifest(source, status="recording", heartbeat_at="2000-01-01T00:00:00+00:00")
    else:
        _edit_manifest(source, status="failed", error="stopped by SIGTERM")
    assert Run(source).status == status
    code, out, err = replay(capsys, source, "--out", tmp_path / "out")
    assert code == 0, err
    man = Run(tmp_path / "out").manifest
    assert json.loads(out)["source_status"] == man["source_status"] == status and man["status"] == "complete"


def test_exact_replay_records_the_source_status_too(source, tmp_path, capsys):
    _edit_manifest(source, status="failed", error="stopped by SIGTERM")
    code, out, err = replay(capsys, source, "--out", tmp_path / "out", "--exact", "--device", "cpu")
    assert code == 0, err
    man = Run(tmp_path / "out").manifest
    assert man["replay"] == "exact" and man["source_status"] == "failed" and man["source_problems"] == []


def test_skipped_parts_are_warned_recorded_and_exit_3(source, tmp_path, capsys):
    parts = sorted((source / "steps").glob("part-*.parquet"))
    i = len(parts) // 2
    before = sum(pq.read_metadata(p).num_rows for p in parts[:i])  # steps 0..before-1 stay readable
    bad = parts[i]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a truncated part, as a full disk leaves
    code, out, err = replay(capsys, source, "--out", tmp_path / "out")
    assert code == EXIT_SKIPPED == 3
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: skipped ")]
    assert len(warnings) == 1 and str(bad) in warnings[0], err
    summary, man = json.loads(out), Run(tmp_path / "out").manifest
    assert len(man["source_problems"]) == 1 and str(bad) in man["source_problems"][0]
    assert summary["source_problems"] == man["source_problems"] and man["status"] == "complete"
    # The replay stops before the gap the lost part leaves, so that each step keeps its own scores.
    assert summary["steps"] == before > 0
    a = Run(source).table("decisions", where=f"step < {before}")
    b = Run(tmp_path / "out").table("decisions")
    for c in ("step", "node_id", "action", "outcome"):
        assert a[c].to_pylist() == b[c].to_pylist(), c


def test_exact_replay_carries_the_source_problems(source, tmp_path, capsys):
    part = sorted((source / "entries").glob("part-*.parquet"))[0]
    part.write_bytes(b"not parquet")
    code, out, err = replay(capsys, source, "--out", tmp_path / "out", "--exact", "--device", "cpu")
    assert code == 3 and f"warning: skipped {part}" in err, err
    assert str(part) in Run(tmp_path / "out").manifest["source_problems"][0]
