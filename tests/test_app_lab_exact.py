"""The Knobs lab's exact re-plan (AppTest, tiny model): "Start exact re-plan" runs `engine replay
--exact` in the background with the page's knobs, the page follows it, then shows the recorded and
re-planned metrics (NLL included) and NLL over steps, exactly those of the new run folder; the
folder is found again for the same knobs; a run that cannot be re-run says why, and a failed
re-plan shows its one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app import exact, jobs
from telemetry import METRIC, Run, run_metrics
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
from tests.lab_fixtures import record, stop_jobs

# NLL on every step: the exact re-plan's point is its effect on NLL.
SETS = ("wc.w_max=400", "allocator.cooldown_steps=0", "session.compute_nll=true", "session.max_tokens=2000",
        "session.record_gists=false")  # fmt: skip
KNOB = "allocator.cooldown_steps"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab_exact")
    samples, mine = tmp / "samples", tmp / "mine"
    mine.mkdir()
    record(samples / "rec", *SETS, scorer="recency")
    copy_with_model(samples / "rec", samples / "lost-model", str(tmp / "gone"))
    copy_with_model(samples / "rec", samples / "bad-model", str(tmp / "empty-model"))
    (tmp / "empty-model").mkdir()  # there, but no model in it: the job itself fails
    return {"samples": samples, "mine": mine}


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)
    yield
    stop_jobs()


def _finish(at):
    assert len(jobs.processes()) == 1
    assert jobs.processes()[0].wait(timeout=300) is not None
    return at.run()


def test_exact_replan_runs_in_the_background_and_shows_its_nll(roots, monkeypatch):
    files = capture_downloads(monkeypatch)
    at = open_page("knobs_lab", run="samples/rec", **{f"k.{KNOB}": "4"})
    clean(at)
    assert at.button(key="lab_exact_go").label == "Start exact re-plan"
    at.button(key="lab_exact_go").click().run()
    clean(at)
    assert at.get("progress") and "Follow it on the Live page" in texts(at.markdown)
    at = _finish(at)
    clean(at)
    sets = exact.exact_sets([f"{KNOB}=4"], baselines=False)
    out = exact.exact_dir(roots["samples"] / "rec", sets)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["replay"] == "exact" and m["changed_knobs"] == {KNOB: 4}
    want = run_metrics.summary(Run(out))
    table = next(d.value for d in at.dataframe if "exact re-plan" in d.value.columns).set_index("metric")
    nll, edits = METRIC["nll"].title, METRIC["applied_edits"].title
    assert table.index[0] == nll  # what only an exact re-plan measures comes first
    assert want["nll"] is not None and table.loc[nll, "exact re-plan"] == pytest.approx(want["nll"], rel=1e-9)
    assert table.loc[nll, "recorded"] == pytest.approx(run_metrics.summary(Run(roots["samples"] / "rec"))["nll"])
    assert table.loc[edits, "exact re-plan"] == want["applied_edits"]
    # NLL over steps: the exact run's own per-step NLL, beside the recording's.
    fig = next(f for f in charts(at) if any(t.get("name") == "exact re-plan" for t in f["data"]))
    lines = {t["name"]: t for t in fig["data"]}
    steps = Run(out).table("steps", ["step", "nll"]).to_pandas().dropna()
    np.testing.assert_allclose(decode(lines["exact re-plan"]["y"]), steps.sort_values("step")["nll"], rtol=1e-6)
    assert "recorded" in lines
    nll_file = next(pq_ for _, pq_, _ in downloads(at, files) if "exact re-plan" in pq_.columns and "step" in pq_)
    got = nll_file.dropna(subset=["exact re-plan"]).sort_values("step")
    np.testing.assert_allclose(got["exact re-plan"], steps.sort_values("step")["nll"], rtol=1e-6)  # the chart's data
    # Found again for the same knobs: a fresh page shows it at once and starts nothing.
    jobs.processes().clear()
    again = open_page("knobs_lab", run="samples/rec", **{f"k.{KNOB}": "4"})
    clean(again)
    assert not jobs.processes() and not [b for b in again.button if b.key == "lab_exact_go"]
    assert any("exact re-plan" in d.value.columns for d in again.dataframe)


def test_a_run_whose_model_is_missing_says_so_and_starts_nothing(roots):
    at = open_page("knobs_lab", run="samples/lost-model")
    clean(at)
    assert "cannot be re-planned exactly" in texts(at.info) and "gone is not on this machine" in texts(at.info)
    assert not [b for b in at.button if b.key == "lab_exact_go"] and not jobs.processes()


def test_a_failed_exact_replan_says_why_and_can_be_retried(roots):
    at = open_page("knobs_lab", run="samples/bad-model")
    at.button(key="lab_exact_go").click().run()
    at = _finish(at)
    clean(at)
    assert "The exact re-plan failed" in texts(at.warning) and "empty-model" in texts(at.warning)
    assert at.button(key="lab_exact_go").label == "Start exact re-plan"
