"""Runs page (AppTest): every run folder with its status and problem, replay lineage, headline
metrics from the summary, picking one or two runs into the URL, and the empty state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from telemetry import Run, run_metrics
from tests.app_fixtures import clean, decode, frame_with, heartbeat, open_page, point_app_at, run_roots, texts


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return run_roots(tmp_path_factory.mktemp("app_runs"))


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def test_lists_every_run_with_status_problem_lineage_and_metrics(roots):
    heartbeat(roots["samples"] / "live")
    at = open_page("runs")
    clean(at)
    t = frame_with(at, "run", "status").set_index("run")
    assert sorted(t.index) == [f"samples/{n}" for n in ("broken", "live", "replay", "scenario", "small", "stale")]
    assert list(t.columns[:2]) == ["status", "swap_rate"]  # status in words, metrics next to the run
    state = t["status"].to_dict()
    assert state == {
        "samples/broken": "invalid",
        "samples/live": "recording",
        "samples/replay": "complete",
        "samples/scenario": "complete",
        "samples/small": "complete",
        "samples/stale": "interrupted",
    }
    assert "no manifest.json" in t.loc["samples/broken", "problem"]
    assert t.loc["samples/replay", "parent"].endswith("small")
    assert t.loc["samples/replay", "changed_knobs"] == "allocator.cooldown_steps=4"
    assert t.loc["samples/small", "steps"] == 8 and t.loc["samples/small", "scorer"] == "recency"
    assert t.loc["samples/small", "size_mb"] > 0
    s = run_metrics.summary(Run(roots["samples"] / "small"))
    assert t.loc["samples/small", "swap_rate"] == pytest.approx(s["swap_rate"])
    assert t.loc["samples/small", "ping_pongs_per_edit"] == pytest.approx(s["ping_pongs_per_edit"])
    assert t.loc["samples/live", "swap_rate"] is None or t["swap_rate"].isna()["samples/live"]  # live: not summarised
    # with no run in the URL the first finished one is picked, and its links carry it
    assert at.query_params["run"] == "samples/replay"
    assert "./timeline?run=samples%2Freplay" in texts(at.markdown)


def test_the_list_filters_by_text_and_status_and_shows_chosen_columns(roots):
    """A text filter and a status filter narrow the list; metric and knob columns are the user's choice;
    every run has its creation time and duration."""
    at = open_page("runs")
    at.text_input(key="runs_filter").set_value("cooldown").run()  # the replay's changed knob
    clean(at)
    assert frame_with(at, "run", "status")["run"].tolist() == ["samples/replay"]
    assert "1 of 6 runs shown." in texts(at.caption)
    at.text_input(key="runs_filter").set_value("").run()
    at.multiselect(key="runs_status").set_value(["interrupted", "invalid"]).run()
    assert sorted(frame_with(at, "run", "status")["run"]) == ["samples/broken", "samples/stale"]
    at.multiselect(key="runs_status").set_value(["complete"]).run()
    at.multiselect(key="runs_metric_cols").set_value(["applied_edits"]).run()
    at.multiselect(key="runs_knob_cols").set_value(["allocator.cooldown_steps"]).run()
    t = frame_with(at, "run", "status").set_index("run")
    assert "swap_rate" not in t.columns
    s = run_metrics.summary(Run(roots["samples"] / "small"))
    assert t.loc["samples/small", "applied_edits"] == s["applied_edits"]
    for ref in t.index:  # each run's own config value
        flat = Run(roots["samples"] / ref.split("/")[1]).manifest["config_flat"]
        assert t.loc[ref, "allocator.cooldown_steps"] == flat["allocator.cooldown_steps"]
    m = Run(roots["samples"] / "small").manifest
    assert t.loc["samples/small", "created_at"] == pd.Timestamp(m["created_at"])
    assert t["duration_s"].notna().all() and (t["duration_s"] >= 0).all()


def test_any_number_of_runs_overlay_on_one_per_step_metric(roots):
    import json

    at = open_page("runs", run="samples/small")
    at.multiselect(key="runs_overlay").set_value(["samples/small", "samples/replay", "samples/scenario"]).run()
    clean(at)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in fig["data"]] == ["samples/small", "samples/replay", "samples/scenario"]
    want = run_metrics.series(Run(roots["samples"] / "replay"), "swap_rate")
    tr = fig["data"][1]
    np.testing.assert_allclose(decode(tr["y"]).astype(float), want.column("swap_rate").to_numpy(zero_copy_only=False))


def test_picking_runs_sets_the_url(roots):
    at = open_page("runs")
    at.selectbox(key="runs_pick").set_value("samples/stale").run()
    clean(at)
    assert at.query_params["run"] == "samples/stale"
    assert "interrupted" in texts(at.warning)
    at.selectbox(key="runs_pick2").set_value("samples/small").run()
    assert at.query_params["run2"] == "samples/small"
    assert "./compare?run=samples%2Fstale&run2=samples%2Fsmall" in texts(at.markdown)
    assert "samples/broken" not in at.selectbox(key="runs_pick").options  # invalid runs cannot be opened
    at.selectbox(key="runs_pick2").set_value("(none)").run()
    assert "run2" not in at.query_params


def test_url_run_is_kept_and_a_recording_run_points_to_live(roots):
    heartbeat(roots["samples"] / "live")
    at = open_page("runs", run="samples/live")
    clean(at)
    assert at.selectbox(key="runs_pick").value == "samples/live"
    assert "still recording" in texts(at.info) and "./live?run=samples%2Flive" in texts(at.markdown)


def test_empty_state_says_how_to_record(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    point_app_at(monkeypatch, {"samples": tmp_path / "a", "mine": tmp_path / "b"})
    at = open_page("runs")
    clean(at)
    info = texts(at.info)
    assert "No runs yet" in info and "python -m engine record" in info and "Record" in info
    assert not at.dataframe


def test_a_bad_manifest_field_and_a_symlink_are_invalid_rows(roots, tmp_path, monkeypatch):
    import json
    import os
    import shutil

    src = tmp_path / "a"
    shutil.copytree(roots["samples"] / "small", src / "good")
    shutil.copytree(roots["samples"] / "small", src / "lots")
    m = json.loads((src / "lots" / "manifest.json").read_text())
    (src / "lots" / "manifest.json").write_text(json.dumps({**m, "tokens": "lots"}))
    os.symlink("/etc", src / "link")
    point_app_at(monkeypatch, {"samples": src, "mine": tmp_path / "b"})
    at = open_page("runs")
    clean(at)  # no exception, no error box: the good run is listed and opened as usual
    t = frame_with(at, "run", "status").set_index("run")
    assert sorted(t.index) == ["a/good", "a/link", "a/lots"]
    assert t.loc["a/good", "status"] == "complete" and at.query_params["run"] == "a/good"
    assert "manifest.json: field 'tokens' is 'lots'" in t.loc["a/lots", "problem"]
    assert t.loc["a/link", "problem"].endswith("link: a symbolic link, not followed")
    assert t.loc["a/link", "size_mb"] == 0 and pd.isna(t.loc["a/link", "duration_s"])
