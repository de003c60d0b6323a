"""Compare page (AppTest): two timelines under one scrubber, their cells the recorded LODs, and a
metric table whose deltas are run2 minus run."""

from __future__ import annotations

import numpy as np
import pytest

from telemetry import Run, run_metrics
from tests.app_fixtures import charts, clean, decode, frame_with, open_page, point_app_at, run_roots, texts
from tests.telemetry_fixtures import per_token_lod


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return run_roots(tmp_path_factory.mktemp("app_compare"))


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def test_two_timelines_one_scrubber(roots):
    at = open_page("compare", run="samples/small", run2="samples/stale", step=2)
    clean(at)
    assert len(at.slider) == 1 and at.slider[0].max == 7  # one scrubber over the longer run
    heat = [f for f in charts(at) if f["data"][0]["type"] == "heatmap"]
    assert len(heat) == 2
    want = per_token_lod(roots["events"], 0, 7, 0, 352).astype(float)
    want[want < 0] = np.nan
    np.testing.assert_array_equal(decode(heat[0]["data"][0]["z"]), want)
    assert decode(heat[1]["data"][0]["z"]).shape[0] == 3  # the interrupted run's three steps
    for f in heat:
        assert [s["y0"] for s in f["layout"].get("shapes", []) if s.get("type") == "line"] == [2]
    at.slider[0].set_value(6).run()
    clean(at)
    heat = [f for f in charts(at) if f["data"][0]["type"] == "heatmap"]
    assert [s["y0"] for s in heat[0]["layout"].get("shapes", []) if s.get("type") == "line"] == [6]
    assert not [s for s in heat[1]["layout"].get("shapes", []) if s.get("type") == "line"]  # past its last step
    assert at.query_params["step"] == "6"


def test_metric_table_deltas(roots):
    at = open_page("compare", run="samples/small", run2="samples/replay", step=1)
    clean(at)
    t = frame_with(at, "metric", "delta").set_index("metric")
    a = run_metrics.summary(Run(roots["samples"] / "small"))
    b = run_metrics.summary(Run(roots["samples"] / "replay"))
    for m in ("swap_rate", "utilization", "ping_pongs_per_edit", "applied_edits"):
        assert t.loc[m, "samples/small"] == pytest.approx(a[m])
        assert t.loc[m, "delta"] == pytest.approx(b[m] - a[m])
    lines = next(f for f in charts(at) if f["data"][0]["type"] == "scatter")
    assert [tr["name"] for tr in lines["data"]] == ["samples/small", "samples/replay"]


def test_needs_a_second_run(roots):
    at = open_page("compare", run="samples/small")
    assert not at.exception and "second run" in texts(at.info)
    at = open_page("compare", run="samples/small", run2="/etc")
    assert not at.exception and "outside the configured run folders" in texts(at.error)
