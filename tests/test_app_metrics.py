"""Metrics page (AppTest): every line is `telemetry.run_metrics.series` of the run, the tiles are its
summary, and the worst-oscillating nodes link to the Timeline at their first ping-pong step."""

from __future__ import annotations

import re

import numpy as np
import pytest

from telemetry import Run, metrics, registry, run_metrics
from tests.app_fixtures import charts, clean, decode, open_page, point_app_at, run_roots, texts


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return run_roots(tmp_path_factory.mktemp("app_metrics"))


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def _by_title(at) -> dict[str, dict]:
    return {f["layout"].get("title", {}).get("text"): f for f in charts(at)}


def test_lines_are_the_metric_series(roots):
    at = open_page("metrics", run="samples/small")
    clean(at)
    run = Run(roots["samples"] / "small")
    figs = _by_title(at)
    for title, name, col in (
        ("Swap rate", "swap_rate", "swap_rate"),
        ("Utilization", "utilization", "utilization"),
        ("Oscillation", "oscillation", "ping_pongs"),
        ("Locality", "locality", "locality"),
    ):
        want = run_metrics.series(run, name)
        tr = figs[title]["data"][0]
        assert decode(tr["x"]).tolist() == want.column("step").to_pylist(), title
        got = decode(tr["y"]).astype(float)
        exp = np.array([np.nan if v is None else v for v in want.column(col).to_pylist()], float)
        np.testing.assert_allclose(got, exp, rtol=1e-6, err_msg=title)
    dn = run_metrics.series(run, "delta_nll")
    steps = np.array(dn.column("step").to_pylist())
    for title, col, legend in (("ΔNLL", "d_full", "vs full context"), ("NLL", "nll", "this policy"),
                               ("NLL", "nll_full", "full context")):  # fmt: skip
        tr = {t["name"]: t for t in figs[title]["data"]}[legend]
        exp = np.array([np.nan if v is None else v for v in dn.column(col).to_pylist()], float)
        assert np.isnan(exp).any() and not np.isnan(exp).all()  # the fixture has NLL on odd steps only
        # Measured at some steps only: the line joins the measured steps (gaps would hide it).
        assert decode(tr["x"]).tolist() == steps[~np.isnan(exp)].tolist(), title
        np.testing.assert_allclose(decode(tr["y"]).astype(float), exp[~np.isnan(exp)], rtol=1e-6)


def test_tiles_are_the_summary(roots):
    at = open_page("metrics", run="samples/small")
    s = run_metrics.summary(Run(roots["samples"] / "small"))
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["swap rate"] == f"{s['swap_rate']:.3f}"
    assert tiles["ping-pongs per edit"] == f"{s['ping_pongs_per_edit']:.3f}"  # labels are the registry's
    assert set(tiles) - {"residency mean / p95"} <= {m.label for m in registry.METRICS}
    assert tiles["utilization"] == f"{s['utilization']:.3f}"
    assert f"{s['applied_edits']} applied edits, {s['ping_pongs']} ping-pongs" in texts(at.caption)


def test_worst_nodes_link_to_the_timeline_at_their_first_ping_pong(roots):
    at = open_page("metrics", run="samples/small", step=2)
    clean(at)
    run = Run(roots["samples"] / "small")
    ev = metrics.oscillation_events(run.table("decisions"), 5).to_pandas()
    worst = metrics.oscillation(run.table("decisions"), 5)["worst"].to_pylist()
    md = texts(at.markdown)
    links = re.findall(r"\[(L\d #\d+)[^\]]*\]\(\./timeline\?run=samples%2Fsmall&step=(\d+)\)", md)
    assert len(links) == len(worst) > 0
    for (label, step), w in zip(links, worst, strict=True):
        first = int(ev.loc[ev["node_id"] == w["node_id"], "step"].min())
        assert int(step) == first, label
    # the URL's step is marked on every line
    assert all(any(s.get("type") == "line" and s["x0"] == 2 for s in f["layout"]["shapes"]) for f in charts(at)[:3])


def test_a_worst_node_link_reopens_that_view(roots):
    at = open_page("metrics", run="samples/small")
    ref, step = re.findall(r"\(\./timeline\?run=([^&]+)&step=(\d+)\)", texts(at.markdown))[0]
    tl = open_page("timeline", run=ref.replace("%2F", "/"), step=step)
    clean(tl)
    assert tl.slider(key="step_scrubber").value == int(step)


def test_residency_distribution_on_request(roots):
    at = open_page("metrics", run="samples/small")
    n = len(charts(at))
    at.toggle(key="m_residency_on").set_value(True).run()
    clean(at)
    run = Run(roots["samples"] / "small")
    runs = metrics.residency_runs(run.table("entries")).to_pandas()
    closed = runs[~runs["open"]].groupby("length").size()
    bars = [f["data"][0] for f in charts(at) if f["data"] and f["data"][0]["type"] == "bar"]
    assert len(charts(at)) == n + 1 and len(bars) == 1
    bars = bars[0]
    assert decode(bars["x"]).tolist() == closed.index.tolist() and decode(bars["y"]).tolist() == closed.tolist()


@pytest.mark.parametrize(
    ("name", "with_nll", "nll_chart", "delta_note"),
    [
        ("no_baselines", True, True, "No baselines in this run: its NLL was measured"),
        ("no_nll", False, False, "No NLL in this run: it was recorded with `session.compute_nll=false`"),
    ],
)
def test_nll_shows_what_was_measured_and_says_what_is_missing(roots, name, with_nll, nll_chart, delta_note):
    """NLL measured without baselines: the NLL line is drawn and the ΔNLL panel says the baselines are
    missing (not that NLL was not computed); no NLL at all: both panels say how to record it."""
    import dataclasses

    from contract import StepRecorded
    from tests.telemetry_fixtures import events, record

    evs = [dataclasses.replace(e, nll_full=None, nll_recency=None) if isinstance(e, StepRecorded) else e
           for e in events(6, with_nll=with_nll)]  # fmt: skip
    record(roots["samples"] / name, evs)
    at = open_page("metrics", run=f"samples/{name}")
    clean(at)
    figs = _by_title(at)
    assert "ΔNLL" not in figs and ("NLL" in figs) == nll_chart
    if nll_chart:
        assert [t["name"] for t in figs["NLL"]["data"]] == ["this policy"]  # no empty baseline lines
    notes = texts(at.info)
    assert delta_note in notes and (nll_chart or notes.count("No NLL in this run") == 2)
