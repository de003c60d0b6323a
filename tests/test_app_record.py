"""Record page: a real background recording started from the page, refusals with one-line reasons,
and the engine's own error shown when the input turns out to be bad."""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from app import recorder
from app.widgets import link
from telemetry import Run
from tests.lab_fixtures import REPO, SAMPLE

PAGE = str(REPO / "app" / "views" / "record.py")
FAST = "session.compute_nll=false\nsession.max_tokens=2000\nsession.record_gists=false"


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MCS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MCS_INPUT_ROOTS", f"{REPO}:{tmp_path / 'inputs'}")
    (tmp_path / "inputs").mkdir()
    yield tmp_path / "runs"
    for name, proc in list(recorder._PROCS.items()):  # only the recorders this test started
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=60)
        del recorder._PROCS[name]


def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def start(at: AppTest, name: str, *, path: str | None = None, text: str | None = None, sets: str = FAST,
          model: str = "tiny") -> AppTest:  # fmt: skip
    at.text_input(key="rec:name").set_value(name)
    at.selectbox(key="rec:model").set_value(model)
    if text is not None:
        at.radio(key="rec:source").set_value("paste text")
        at.run()
        at.text_area(key="rec:text").set_value(text)
    else:
        at.text_input(key="rec:path").set_value(path)
    at.text_area(key="rec:sets").set_value(sets)
    at.button(key="rec:start").click()
    return at.run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_recording_from_a_file_runs_in_the_background_and_completes(runs):
    at = start(page(), "t1", path=str(SAMPLE))
    assert not at.exception and not errors(at), errors(at)
    assert "Started recording runs/t1" in at.success[0].value and link("live", run="runs/t1") in at.success[0].value
    # A second click while it records is refused, whatever stage the recorder is at.
    at = start(at, "t1", path=str(SAMPLE))
    assert any("already" in e for e in errors(at)), errors(at)
    info = recorder.wait("t1", timeout=300)
    assert info["state"] == "complete" and info["tokens"] == 2000 and info["returncode"] == 0, info
    run = Run(runs / "t1")
    assert run.status == "complete" and run.n_steps() == run.manifest["steps"] >= 2000 // 32
    assert run.manifest["scorer"] == "lensnet" and run.manifest["input"] == str(SAMPLE)  # the page's default scorer
    at = page()
    assert any("t1: complete" in s.value and link("runs", run="runs/t1") in s.value for s in at.success)
    # Once it exists, the name stays taken.
    at = start(at, "t1", path=str(SAMPLE))
    assert "run folder 'runs/t1' already exists; pick another name" in errors(at)


@pytest.mark.slow  # a second engine start (10-25 s on the 2-core machine); the first test covers the process path
def test_pasted_text_is_recorded_with_the_chosen_knobs(runs):
    at = page()
    at.number_input(key="rec:wc.w_max").set_value(512)
    at = start(at, "pasted", text=SAMPLE.read_text()[:3000])
    assert not errors(at), errors(at)
    assert recorder.wait("pasted", timeout=300)["state"] == "complete"
    m = Run(runs / "pasted").manifest
    assert m["config"]["wc"]["w_max"] == 512 and m["input"].endswith("_inputs/pasted.txt")


def test_input_outside_the_allowed_folders_is_refused(runs):
    at = start(page(), "etc", path="/etc/hostname")
    assert len(errors(at)) == 1 and "outside the allowed folders" in errors(at)[0]
    assert not (runs / "etc").exists() and not recorder._PROCS


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_refused(runs, text):
    at = start(page(), "empty", text=text)
    assert errors(at) == ["the pasted text is empty: nothing to record"]
    assert not recorder._PROCS


def test_bad_name_and_bad_knob_are_refused(runs):
    at = start(page(), "../up", path=str(SAMPLE))
    assert "bad run name" in errors(at)[0]
    at = start(page(), "k", path=str(SAMPLE), sets="allocator.tau_expand=3")
    assert errors(at) == ["allocator.tau_expand must be in [0, 1), got 3.0"]
    assert not recorder._PROCS


SPILL_REFUSED = "tree.spill_dir names a path on the server; it cannot be set from the app (use the CLI)"


@pytest.mark.parametrize("item", ["tree.spill_dir={where}", "  tree.spill_dir = {where}", "tree.spill_dir="])
def test_a_path_knob_is_refused_and_nothing_is_created_there(runs, tmp_path, item):
    where = tmp_path / "elsewhere" / "spill"
    sets = ["wc.w_max=400", item.format(where=where)]
    assert recorder.PATH_KNOBS == ("tree.spill_dir",)
    with pytest.raises(recorder.RecordError) as refused:
        recorder.check_knobs("random", sets)
    assert str(refused.value) == SPILL_REFUSED
    with pytest.raises(recorder.RecordError, match="^tree.spill_dir names a path"):
        recorder.start("spill", SAMPLE, "tiny", "random", sets)
    assert not (tmp_path / "elsewhere").exists() and not (runs / "spill").exists() and not recorder._PROCS


def test_the_page_shows_the_path_knob_refusal_before_writing_anything(runs, tmp_path):
    where = tmp_path / "elsewhere"
    at = start(page(), "spill", text="some text to record", sets=f"{FAST}\ntree.spill_dir={where}")
    assert errors(at) == [SPILL_REFUSED] and not at.success
    assert not where.exists() and not (runs / "spill").exists() and not recorder._PROCS
    assert not (runs / "_inputs" / "spill.txt").exists()  # the pasted text was not written either


def test_binary_file_shows_the_engines_one_line_error(runs, tmp_path):
    bad = tmp_path / "inputs" / "bin.dat"
    bad.write_bytes(b"abc\x00def" * 10)
    at = start(page(), "bin", path=str(bad))
    assert not errors(at)
    info = recorder.wait("bin", timeout=120)
    assert info["returncode"] == 2 and info["state"] == "failed"
    at = page()
    assert any("looks binary" in e and e.count("\n") == 0 for e in errors(at)), errors(at)
    # A failed start does not hold the name: the same name with a good input starts.
    assert recorder.check_name("bin") == runs / "bin"


def test_size_limits_and_uploads(runs):
    with pytest.raises(recorder.RecordError, match="over the 20 MB limit"):
        recorder.input_from_text("big", "x" * (recorder.MAX_INPUT_BYTES + 1))
    with pytest.raises(recorder.RecordError, match="empty"):
        recorder.input_from_upload("up", "a.txt", b"")
    p = recorder.input_from_upload("up", "../../evil name.txt", b"hello")
    assert p.parent == runs / "_inputs" and p.name == "up-evil_name.txt" and p.read_bytes() == b"hello"


def test_wait_returns_at_its_timeout_for_an_unknown_name(runs):
    t0 = time.monotonic()
    assert recorder.wait("nobody", timeout=0.5)["state"] == "unknown"
    assert time.monotonic() - t0 < 5


def test_the_baselines_switch_asks_the_recorder_for_them(runs):
    """The Record page's `session.baselines` switch (off by default: it costs two more forwards per
    measured step) passes the knob to the recorder, so that the run's Metrics page can show ΔNLL."""
    import json

    at = page()
    assert at.toggle(key="rec:baselines").value is False
    at.toggle(key="rec:baselines").set_value(True)
    at = start(at, "with-baselines", path=str(SAMPLE))
    assert not errors(at), errors(at)
    command = json.loads((runs / "_logs" / "with-baselines.json").read_text())["command"]
    assert "session.baselines=true" in command
