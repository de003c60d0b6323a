"""The Step inspector's probe (AppTest, tiny model): "Probe this step" runs `engine probe` in the
background, the page shows its progress, then the scatter and table of exactly what it measured,
cached for the step; a run whose model or input is missing says so, and a failed probe says why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app import jobs, probe
from tests.app_fixtures import (
    capture_downloads,
    charts,
    clean,
    copy_with_model,
    decode,
    downloads,
    open_page,
    point_app_at,
    texts,
)
from tests.cli_fixtures import SAMPLE, engine
from tests.lab_fixtures import stop_jobs

TEXT = SAMPLE.read_text()[:4000]
STEP = 110  # late enough that gists exist (expands) beside blocks (collapses)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_probe")
    samples, mine = tmp / "samples", tmp / "mine"
    samples.mkdir()
    mine.mkdir()
    (tmp / "input.txt").write_text(TEXT)
    r = engine("record", "--quiet", "--model", "tiny", "--input", str(tmp / "input.txt"), "--out", str(samples / "rec"),
               "--scorer", "recency", "--set", "wc.w_max=2000")  # fmt: skip
    assert r.returncode == 0, r.stderr
    copy_with_model(samples / "rec", samples / "lost-model", str(tmp / "gone-model"))
    return {"samples": samples, "mine": mine}


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)
    yield
    stop_jobs()


def _finish(at):
    """Wait for the background probe this page started, then rerun the page (the poll would)."""
    assert len(jobs.processes()) == 1
    jobs.processes()[0].wait(timeout=300)
    return at.run()


def test_probe_this_step_runs_in_the_background_and_shows_what_it_measured(roots, monkeypatch):
    files = capture_downloads(monkeypatch)
    at = open_page("step_inspector", run="samples/rec", step=STEP)
    clean(at)
    assert at.button(key="si_probe_go").label == "Probe this step" and not at.button(key="si_probe_go").disabled
    at.number_input(key="si_probe_k").set_value(6)
    at.button(key="si_probe_go").click().run()
    clean(at)
    assert any(f"Probing step {STEP} in the background" in str(i.value) for i in at.info)
    at = _finish(at)
    clean(at)
    got = probe.read_probe(roots["samples"] / "rec", STEP)
    assert got is not None and len(got) == 6 and {"expand", "collapse"} <= set(got["edit"])
    scatter = charts(at)[-1]
    xs = np.concatenate([decode(t["x"]) for t in scatter["data"] if t.get("mode") == "markers"])
    ys = np.concatenate([decode(t["y"]) for t in scatter["data"] if t.get("mode") == "markers"])
    order = np.concatenate([np.flatnonzero(got["edit"] == e) for e in ("expand", "collapse")])
    np.testing.assert_allclose(xs, got["raw_score"].to_numpy()[order], rtol=1e-6)
    np.testing.assert_allclose(ys, got["utility"].to_numpy()[order], rtol=1e-6)
    rho = got.attrs["meta"]["spearman_raw"]
    assert "Spearman" in scatter["layout"]["title"]["text"]
    assert (f"{rho:+.2f}" if rho is not None else "n/a") in scatter["layout"]["title"]["text"]
    *_, (csv, parquet, _) = downloads(at, files)
    np.testing.assert_allclose(parquet["utility"], got["utility"], rtol=1e-6)
    assert list(parquet["node_id"]) == list(got["node_id"]) and len(csv) == len(parquet)
    assert at.button(key="si_probe_go").label == "Probe again"
    # Cached: a fresh session shows it at once and starts nothing.
    jobs.processes().clear()
    again = open_page("step_inspector", run="samples/rec", step=STEP)
    clean(again)
    assert not jobs.processes() and len(charts(again)[-1]["data"]) >= 2


def test_a_probe_that_fails_says_why(roots):
    last = json.loads((roots["samples"] / "rec" / "manifest.json").read_text())["steps"] - 1
    at = open_page("step_inspector", run="samples/rec", step=last)
    at.button(key="si_probe_go").click().run()
    at = _finish(at)
    clean(at)
    assert f"The probe of step {last} failed" in texts(at.warning) and "is the last one" in texts(at.warning)
    assert at.button(key="si_probe_go").label == "Probe this step"  # it can be retried


def test_a_run_whose_model_is_missing_says_so_and_starts_nothing(roots):
    at = open_page("step_inspector", run="samples/lost-model", step=STEP)
    clean(at)
    assert "cannot be probed" in texts(at.info) and "gone-model is not on this machine" in texts(at.info)
    assert at.button(key="si_probe_go").disabled and not jobs.processes()
