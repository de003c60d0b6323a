"""`python -m engine add-text`: a run recorded without its text table gets it back from its input,
identical to what a recorder writes, and every way it can go wrong is one line that changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from telemetry import Run
from telemetry.amend import AmendError, add_table
from telemetry.writer import RunLock
from tests.cli_fixtures import SAMPLE, engine

TEXT = SAMPLE.read_text()[:3000]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    src = d / "input.txt"
    src.write_text(TEXT)
    r = engine("record", "--quiet", "--model", "tiny", "--input", str(src), "--out", str(d / "rec"),
               "--set", "wc.w_max=400")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d / "rec"


def without_text(recorded: Path, tmp_path: Path, input_text: str | None = TEXT) -> Path:
    """A copy of the recording as an older recorder left it (no text table), reading its own input copy."""
    run = tmp_path / "old"
    shutil.copytree(recorded, run)
    shutil.rmtree(run / "text")
    m = json.loads((run / "manifest.json").read_text())
    del m["tables"]["text"]
    m["input"] = str(tmp_path / "input.txt")
    (run / "manifest.json").write_text(json.dumps(m))
    if input_text is not None:
        (tmp_path / "input.txt").write_text(input_text)
    return run


def files(run: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock file's (it holds the pid of whoever took the lock last)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and p.name != ".recorder.lock"}  # fmt: skip


def test_add_text_rebuilds_what_the_recorder_wrote(recorded, tmp_path):
    run = without_text(recorded, tmp_path)
    before = files(run)
    r = engine("add-text", str(run))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = Run(recorded).table("text")
    assert out["blocks"] == want.num_rows > 0
    got = Run(run)
    assert got.table("text").to_pylist() == want.to_pylist()
    assert not got.problems  # the new part carries the run's id: the reader takes it as the run's own
    m = got.manifest
    assert m["tables"]["text"]["rows"] == want.num_rows and [a["table"] for a in m["amended"]] == ["text"]
    after = files(run)  # nothing recorded changed: only the manifest and the new table
    assert {k: v for k, v in after.items() if k != "manifest.json" and not k.startswith("text/")} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    again = engine("add-text", str(run))
    assert again.returncode == 2 and again.stderr.strip() == f"error: {run}: already has its text"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("edited", "its input changed since the recording (node L0 #"),
        ("gone", "is not a readable file any more"),
        ("short", "its input has"),
        ("stdin", "its text was read from stdin"),
    ],
)
def test_add_text_refuses_an_input_that_is_not_the_recordings(recorded, tmp_path, case, message):
    text = {"edited": TEXT[:1000] + "X" + TEXT[1001:], "gone": None, "short": TEXT[:1500], "stdin": TEXT}[case]
    run = without_text(recorded, tmp_path, text)
    if case == "stdin":
        m = json.loads((run / "manifest.json").read_text())
        m["input"] = "-"
        (run / "manifest.json").write_text(json.dumps(m))
    before = files(run)
    r = engine("add-text", str(run))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run}: ") and message in lines[0], r.stderr
    assert files(run) == before


def test_add_table_waits_for_no_recorder_and_never_replaces(recorded, tmp_path):
    run = without_text(recorded, tmp_path)
    data = Run(recorded).table("text")
    lock = RunLock(run)  # a recorder (or another add-text) at work on the folder
    try:
        with pytest.raises(FileExistsError, match="another recorder"):
            add_table(run, "text", data)
    finally:
        lock.release()
    m = json.loads((run / "manifest.json").read_text())
    m["status"] = "recording"
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AmendError, match="still recording"):
        add_table(run, "text", data)
    m["status"] = "complete"
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="text: column 'text'"):
        add_table(run, "text", data.set_column(4, "text", pa.array(range(data.num_rows), pa.int64())))
    with pytest.raises(AmendError, match="already has a nodes table"):
        add_table(run, "nodes", Run(recorded).table("nodes"))
    assert not (run / "text").exists()
