"""Live page (AppTest): follows a run while it records (new parts show on the next refresh), and
says clearly when a run is finished, interrupted or failed, or when none is recording."""

from __future__ import annotations

import shutil

import pytest

from tests.app_fixtures import charts, clean, decode, heartbeat, open_page, point_app_at, run_roots, texts
from tests.telemetry_fixtures import events


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return run_roots(tmp_path_factory.mktemp("app_live"))


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_follows_a_recording_run_as_it_grows(roots):
    from telemetry import ParquetSink

    run_dir = roots["mine"] / "growing"
    evs = events(6, finish=False)
    cut = next(i for i, e in enumerate(evs) if type(e).__name__ == "StepRecorded" and e.step == 2) + 1
    sink = ParquetSink(run_dir, flush_rows=10**9, flush_seconds=10**9)
    try:
        for e in evs[:cut]:
            sink.emit(e)
        sink.flush()
        at = open_page("live", run="mine/growing")
        clean(at)
        assert _metrics(at)["steps so far"] == "3"
        assert decode(charts(at)[0]["data"][0]["z"]).shape[0] == 3
        for e in evs[cut:]:
            sink.emit(e)
        sink.flush()
        at.run()  # what the refresh timer does
        clean(at)
        assert _metrics(at)["steps so far"] == "6"
        assert decode(charts(at)[0]["data"][0]["z"]).shape[0] == 6
        assert len(charts(at)) == 3  # timeline, utilization, swap rate
        labels = [b.proto.label for b in at.get("download_button")]
        assert labels.count("CSV") == labels.count("Parquet") == 3  # each chart's data
    finally:
        sink.close()
    at.run()
    assert "failed" in texts(at.error)  # closed without RunFinished: the page stops following


def test_offers_the_runs_recording_now(roots):
    heartbeat(roots["samples"] / "live")
    at = open_page("live")
    clean(at)
    assert at.selectbox(key="live_pick").options == ["samples/live"]
    assert at.query_params["run"] == "samples/live" and _metrics(at)["steps so far"] == "3"


def test_messages_for_runs_that_are_not_recording(roots):
    at = open_page("live", run="samples/small")
    assert "finished recording (8 steps)" in texts(at.success)
    assert "./timeline?run=samples%2Fsmall" in texts(at.markdown)
    at = open_page("live", run="samples/stale")
    assert "interrupted" in texts(at.warning)
    assert not at.get("plotly_chart") and not at.exception


def test_none_recording(tmp_path, monkeypatch, roots):
    shutil.copytree(roots["samples"] / "small", tmp_path / "a" / "small")
    (tmp_path / "b").mkdir()
    point_app_at(monkeypatch, {"samples": tmp_path / "a", "mine": tmp_path / "b"})
    at = open_page("live")
    clean(at)
    assert "No run is recording now" in texts(at.info) and "python -m engine record" in texts(at.info)


def test_waits_for_a_recording_started_here_until_its_folder_appears(roots):
    """Right after Start on the Record page the run has no folder (the recorder loads its model
    first): the page waits and says so, then follows the run once it is there."""
    import json
    import subprocess
    import sys

    from app import recorder

    name = "starting_now"
    logs = roots["mine"] / "_logs"
    logs.mkdir(parents=True, exist_ok=True)
    # A live process whose command line names the engine, as a real recorder's does.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "engine", "record"])
    try:
        (logs / f"{name}.json").write_text(json.dumps({"pid": proc.pid, "out": str(roots["mine"] / name)}))
        (logs / f"{name}.log").write_text("loading model tiny\n")
        assert recorder.job_for(f"mine/{name}")["state"] == "starting"
        assert recorder.job_for("samples/small") is None  # not recorded from here
        at = open_page("live", run=f"mine/{name}")
        clean(at)
        shown = texts(at.info)
        assert f"Waiting for `mine/{name}` to start" in shown and "loading model tiny" in shown
    finally:
        proc.kill()
        proc.wait()
    # The recorder died before writing anything: its error line, not "no run folder".
    (logs / f"{name}.log").write_text("loading model tiny\nerror: model 'nope' not found\n")
    at = open_page("live", run=f"mine/{name}")
    assert [e.value for e in at.error] == [
        f"The recording `mine/{name}` failed before it wrote anything: error: model 'nope' not found"
    ]
    shutil.rmtree(logs)
