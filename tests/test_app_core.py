"""The app's core pieces without a page: cell budgets, exact heatmap placement, figure builders,
export round trips, cache versions, labels and links; and the whole app through its navigation
(`app/streamlit_app.py`) once every page file exists."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from app import charts, charts_metrics, charts_step, export, widgets
from app import queries as q
from app import queries_runs as qr
from app import queries_step as qs
from tests.app_fixtures import PAGES, clean, decode, point_app_at, run_roots
from tests.app_fixtures import charts as page_charts
from tests.telemetry_fixtures import per_token_lod

ALL_PAGES = ("runs", "timeline", "step_inspector", "metrics", "knobs_lab", "compare", "gist_map", "live", "record")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return run_roots(tmp_path_factory.mktemp("app_core"))


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def _small(roots) -> tuple[str, str]:
    return q.key(q.get_run(roots["samples"] / "small"))


@pytest.mark.parametrize(
    "width, height, steps, tokens",
    [(1000, 250, 8192, 262144), (2000, 250, 8192, 262144), (500, 500, 10**6, 10**8), (1000, 250, 8, 352), (5, 5, 1, 1)],
)
def test_grid_size_never_exceeds_the_budget_or_the_data(width, height, steps, tokens):
    w, h = q.grid_size(width, height, steps, tokens)
    assert 1 <= w <= min(width, tokens) and 1 <= h <= min(height, steps)
    assert w * h <= q.MAX_CELLS
    w2, h2 = q.grid_size(width, height, steps, tokens, budget=q.MAX_CELLS // 2)
    assert w2 * h2 <= q.MAX_CELLS // 2


def test_heatmap_grid_is_exact_at_one_token_per_cell(roots):
    path, ver = _small(roots)
    cells = q.heatmap(path, ver, "lod", 1000, 250)
    ext = cells.attrs["extent"]
    assert (ext["w"], ext["h"], ext["t0"], ext["t1"], ext["s0"], ext["s1"]) == (352, 8, 0, 352, 0, 7)
    z, x, y = charts.grid(cells)
    want = per_token_lod(roots["events"], 0, 7, 0, 352).astype(np.float32)
    want[want < 0] = np.nan
    np.testing.assert_array_equal(z, want)
    assert x.tolist() == list(range(352)) and y.tolist() == list(range(8))


def test_coarse_heatmap_bins_match_the_reader_and_stay_in_budget(roots):
    path, ver = _small(roots)
    cells = q.heatmap(path, ver, "lod", 10, 3)
    z, x, y = charts.grid(cells)
    assert z.shape == (3, 10)
    assert x.tolist() == sorted(cells.drop_duplicates("x_bin")["token_lo"].tolist())  # same bin edges as the SQL
    assert y.tolist() == sorted(cells.drop_duplicates("y_bin")["step_lo"].tolist())
    fig = charts.lod_heatmap(cells, step=4)
    assert decode(json.loads(fig.to_json())["data"][0]["z"]).size == 30


def test_lod_heatmap_figure_marks_the_step_and_overlays_scores(roots):
    path, ver = _small(roots)
    cells = q.heatmap(path, ver, "lod", 1000, 250)
    over = q.heatmap(path, ver, "score", 1000, 250)
    fig = json.loads(charts.lod_heatmap(cells, step=5, overlay=over, pickable=True).to_json())
    assert [t["type"] for t in fig["data"]] == ["heatmap", "heatmap", "scatter"]  # the click layer last
    assert fig["data"][1]["zmin"] == -1 and fig["data"][1]["zmax"] == 1
    line = [s for s in fig["layout"]["shapes"] if s["type"] == "line"]
    assert line[0]["y0"] == line[0]["y1"] == 5
    empty = cells.iloc[0:0].copy()
    empty.attrs["extent"] = {"w": 0, "h": 0}
    assert decode(json.loads(charts.lod_heatmap(empty).to_json())["data"][0]["z"]).size == 0


def test_the_click_layer_covers_every_row_and_says_what_it_covers():
    """Invisible points over the heatmap: every row's step, in column groups whose hover gives the tokens
    they span and the mean LOD there."""
    rng = np.random.default_rng(0)
    z = rng.integers(0, 3, (50, 400)).astype(np.float32)
    z[:, 8:12] = np.nan  # no entry there
    x, y = np.arange(400) * 16, np.arange(50) * 3 + 7
    layer = charts.pick_layer(z, x, y, max_points=2000)
    px, py = np.asarray(layer.x), np.asarray(layer.y)
    assert px.size <= 2000 and set(py.tolist()) == set(y.tolist())
    stride = 400 // (px.size // 50)
    assert stride == 10 and set(px.tolist()) == set(x[::stride].tolist())
    data = np.asarray(layer.customdata)
    for i in (0, 37, px.size - 1):
        r, c = int(np.flatnonzero(y == py[i])[0]), int(np.flatnonzero(x == px[i])[0])
        want = np.nanmean(z[r, c : c + stride])
        assert data[i, 1] == pytest.approx(want, rel=1e-6)
        assert data[i, 0] == (x[c + stride] if c + stride < 400 else x[-1] + 16)
    assert layer.marker.opacity == 0 and data.shape[1] == 2
    with_scores = charts.pick_layer(z, x, y, max_points=2000, overlay=(-z, "score"))
    np.testing.assert_allclose(np.asarray(with_scores.customdata)[:, 2], -data[:, 1])
    assert "score %{customdata[2]" in with_scores.hovertemplate


def test_step_charts_and_metric_lines(roots):
    path, ver = _small(roots)
    wc = qs.step_entries(path, ver, 2)
    fig = charts_step.score_stages(wc, tau_expand=0.2, tau_collapse=0.2)
    assert len(fig.data) == 4 and [s.y0 for s in fig.layout.shapes] == [0.2, -0.2]
    att = qs.attention_at(path, ver, 2)
    assert charts_step.attention_heatmap(att).data[0].z.shape == (2, len(wc) + 1)
    assert att.loc[att["node_id"] == -1, "node"].eq("tail").all()
    df = pd.DataFrame({"step": [0, 1, 2], "a": [0.1, None, 0.3]})
    line = charts_metrics.metric_lines(df, ["a"], step=1)
    assert np.isnan(line.data[0].y[1]) and line.layout.shapes[0].x0 == 1


def test_export_round_trips_csv_and_parquet(roots):
    path, ver = _small(roots)
    dec = qs.step_decisions(path, ver, 3)
    back = pd.read_csv(io.BytesIO(export.to_csv(dec)))
    assert back["node_id"].tolist() == dec["node_id"].tolist() and back["outcome"].tolist() == dec["outcome"].tolist()
    cells = q.heatmap(path, ver, "lod", 1000, 250)
    pq = pd.read_parquet(io.BytesIO(export.to_parquet(cells)))
    want = cells.reset_index(drop=True)
    want.attrs = {}
    pd.testing.assert_frame_equal(pq, want, check_dtype=True)
    assert export.file_stem("my run", "step 3/4") == "my_run-step_3_4"


def test_version_changes_when_a_live_run_writes(roots):
    from tests.app_fixtures import heartbeat

    live = roots["samples"] / "live"
    v1 = q.version(live)
    assert q.version(live) == v1  # stable while nothing changes: caches stay hot
    heartbeat(live)
    assert q.version(live) != v1
    (live / "steps" / "part-999999.parquet").write_bytes(b"junk")  # a new part (even a bad one) too
    v2 = q.version(live)
    (live / "steps" / "part-999999.parquet").unlink()
    assert v2 != q.version(live)


def test_labels_links_nearest_and_compare_table():
    assert q.node_labels(np.array([0, (1 << 40) | 12, (2 << 40) | 3, -1])) == ["L0 #0", "L1 #12", "L2 #3", "tail"]
    assert widgets.link("timeline", run="runs/a b", step=3) == "./timeline?run=runs%2Fa+b&step=3"
    assert widgets.link("live") == "./live"
    assert qs.nearest(np.array([0, 2, 4, 6]), 3) == 2 and qs.nearest(np.array([0, 2, 4, 6]), 9) == 6
    assert qs.nearest(np.zeros(0, np.int64), 3) is None
    t = q.compare_table({"swap_rate": 0.5, "steps": 8}, {"swap_rate": 0.25, "steps": 8}, ("a", "b")).set_index("metric")
    assert t.loc["swap_rate", "delta"] == -0.25 and t.loc["steps", "delta"] == 0
    assert t.loc["swap_rate", "better"] == "b" and t.loc["steps", "better"] == ""  # lower swap rate is better
    assert t.loc["swap_rate", "label"] == "swap rate (applied edits / entries)"
    t = q.compare_table({"locality": 0.5}, {"locality": 0.25}, ("a", "b")).set_index("metric")
    assert t.loc["locality", "better"] == "a" and t.loc["coherence", "better"] == ""  # higher is; None: no side


def test_runs_table_lists_roots_in_order(roots):
    t = qr.runs_table()
    assert t["ref"].tolist() == [f"samples/{n}" for n in ("broken", "live", "replay", "scenario", "small", "stale")]
    assert t.set_index("ref").loc["samples/broken", "status"] == "invalid"


@pytest.mark.skipif(
    not all((PAGES / f"{p}.py").exists() for p in ALL_PAGES),
    reason="some page files of the navigation do not exist yet",
)
def test_whole_app_through_its_navigation(roots):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES.parent / "streamlit_app.py"), default_timeout=60)
    at.query_params["run"] = "samples/small"
    at.query_params["step"] = "3"
    at.run()
    clean(at)
    # the Runs page, with the URL's run: under navigation its links are page links carrying the query
    links = {(link.proto.page, link.proto.query_string) for link in at.page_link}
    assert ("timeline", "run=samples%2Fsmall&step=3") in links and ("metrics", "run=samples%2Fsmall") in links
    at.switch_page("views/timeline.py").run()
    clean(at)
    want = per_token_lod(roots["events"], 0, 7, 0, 352)[3].astype(float)
    want[want < 0] = np.nan
    np.testing.assert_array_equal(decode(page_charts(at)[0]["data"][0]["z"])[3], want)
    for page in ("views/step_inspector.py", "views/metrics.py", "views/live.py"):
        at.switch_page(page).run()
        assert not at.exception, page


def test_run_roots_add_folders_to_the_samples(roots, monkeypatch, tmp_path):
    """`MCS_RUN_ROOTS` adds folders (the README says so); the samples stay, the writable folder is last."""
    from app import paths

    other = tmp_path / "other"
    shutil.copytree(roots["samples"] / "small", other / "extra")
    monkeypatch.setenv("MCS_RUN_ROOTS", f"{other}{os.pathsep}{roots['samples']}")  # the samples twice: listed once
    assert paths.run_roots() == [roots["samples"].resolve(), other.resolve(), roots["mine"].resolve()]
    refs = qr.runs_table()["ref"].tolist()
    assert "other/extra" in refs and "samples/small" in refs
    assert refs.index("samples/small") < refs.index("other/extra")


def test_the_sidebar_keeps_the_run_and_step_across_pages(roots):
    """A sidebar link opens the bare page path: the entry point restores the run and step the session
    last had, and a parameter a page removes (run2 set to none) stays removed."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES.parent / "streamlit_app.py"), default_timeout=60)
    at.query_params.update({"run": "samples/small", "run2": "samples/replay", "step": "3"})
    at.run()
    clean(at)
    at.selectbox(key="runs_pick2").set_value("(none)").run()
    assert "run2" not in at.query_params
    at.query_params.clear()  # what a click in the sidebar sends
    at.switch_page("views/step_inspector.py").run()
    clean(at)
    assert at.query_params["run"] == "samples/small" and at.query_params["step"] == "3"
    assert "run2" not in at.query_params
    assert at.slider(key="step_scrubber").value == 3
    assert not any("Pick a run" in str(i.value) for i in at.info)


@pytest.mark.parametrize(
    ("page", "params"),
    [
        ("timeline", {"run": "samples/small", "step": 3}),
        ("step_inspector", {"run": "samples/small", "step": 2}),
        ("metrics", {"run": "samples/small"}),
        ("compare", {"run": "samples/small", "run2": "samples/replay"}),
        ("knobs_lab", {"run": "samples/small"}),
        ("gist_map", {"run": "samples/small"}),
    ],
)
def test_every_chart_has_csv_and_parquet_downloads_of_the_same_data(roots, monkeypatch, page, params):
    """Every chart (and table) offers its data as CSV and as Parquet, made when the page runs (a file
    made on click was forgotten by any rerun in between: a silent failure); both decode to the same
    frame. The Timeline's heatmap file is the chart's cells."""
    from tests.app_fixtures import capture_downloads, downloads, open_page
    from tests.lab_fixtures import stop_jobs

    files = capture_downloads(monkeypatch)
    try:
        at = open_page(page, **params)
    finally:
        stop_jobs()  # the Gist map starts UMAP in the background: end ours
    clean(at)
    got = downloads(at, files)
    assert len(got) >= len(page_charts(at)) >= 1, (len(got), len(page_charts(at)))
    for csv, parquet, name in got:
        assert list(csv.columns) == list(parquet.columns) and len(csv) == len(parquet), name
        same = parquet.replace("", np.nan)  # CSV cannot tell an empty text from a missing one
        pd.testing.assert_frame_equal(csv, same, check_dtype=False, check_exact=False, rtol=1e-6, obj=name)
    if page == "timeline":
        cells = got[0][1]
        z = decode(page_charts(at)[0]["data"][0]["z"]).astype(float)
        np.testing.assert_allclose(z[cells["y_bin"], cells["x_bin"]], cells["value"], rtol=1e-6)
        assert cells.size and np.count_nonzero(~np.isnan(z)) == len(cells)
