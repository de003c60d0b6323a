"""Gist map: PCA of a hand-written gists table drawn at once, one point per gist; the empty state
when a run has no gists; the sample cap; and the UMAP cache written by the background process."""

from __future__ import annotations

import time

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import jobs, projection
from contract import nodes
from telemetry import Run
from tests.lab_fixtures import REPO, plotly_points, stop_jobs, synthetic_run

PAGE = str(REPO / "app" / "views" / "gist_map.py")


@pytest.fixture
def roots(tmp_path, monkeypatch):
    src = tmp_path / "src"
    n = synthetic_run(src / "with")
    synthetic_run(src / "without", gists=False)
    monkeypatch.setenv("MCS_SAMPLE_RUNS", str(src))
    monkeypatch.setenv("MCS_RUNS_DIR", str(tmp_path / "runs"))
    yield src, n
    stop_jobs()  # the page starts UMAP in the background: end ours, by their handles


def page(run: str, colour: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = run
    at.run()
    if colour:
        at.radio(key="gist_colour").set_value(colour)
        at.run()
    return at


def charts(at: AppTest) -> dict:
    import json

    return {json.loads(c.proto.spec)["layout"]["title"]["text"]: c for c in at.get("plotly_chart")}


@pytest.mark.parametrize("colour", [None, "position", "score", "step of last expansion"])
def test_pca_has_one_point_per_gist(roots, colour):
    src, n = roots
    at = page("src/with", colour)
    assert not at.exception and not at.error, [e.value for e in at.error]
    pca = charts(at)["PCA"]
    assert plotly_points(pca) == n == 16
    assert f"{n} gists" in at.caption[0].value


def test_colours_are_the_runs_own_values(roots):
    src, _ = roots
    run = Run(src / "with")
    g = projection.load_gists(run)
    c = projection.gist_colours(run, g.node_id)
    assert (c["start"].to_numpy() == nodes.node_start(g.lod, nodes.node_index(g.node_id), 32)).all()
    # Fixture: the detail window walks over blocks 0..3, so those LOD1 nodes were expanded; later ones never.
    expanded = c.dropna(subset=["last_expand"])
    assert set(nodes.node_index(expanded["node_id"].to_numpy()).tolist()) <= {0, 1, 2, 3, 4}
    assert len(expanded) > 0 and c["last_expand"].isna().sum() > 0


def test_run_without_gists_shows_the_empty_state(roots):
    at = page("src/without")
    assert not at.exception and not at.error
    assert "this run has no recorded gists" in at.info[0].value.lower()
    assert "session.record_gists" in at.info[0].value
    assert not at.get("plotly_chart") and not jobs.processes()  # nothing to project: no UMAP started


def test_sample_is_capped_seeded_and_sorted(roots):
    src, n = roots
    run = Run(src / "with")
    a, b = projection.load_gists(run, max_points=5), projection.load_gists(run, max_points=5)
    assert a.node_id.size == 5 and a.total == n and (np.diff(a.node_id) > 0).all()
    assert (a.node_id == b.node_id).all() and (a.vectors == b.vectors).all()
    full = projection.load_gists(run)
    rows = np.searchsorted(full.node_id, a.node_id)
    assert (full.vectors[rows] == a.vectors).all()  # the sampled rows carry their own vectors


def test_pca_is_the_top_two_components():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * np.array([10, 3, 0.1, 0.1, 0.1, 0.1])
    xy = projection.pca_2d(x.astype(np.float32))
    assert xy.shape == (200, 2)
    assert np.corrcoef(np.abs(xy[:, 0]), np.abs(x[:, 0]))[0, 1] > 0.99
    assert projection.pca_2d(np.zeros((1, 4), np.float32)).tolist() == [[0.0, 0.0]]


def test_cache_lives_in_the_users_runs_else_under_runs_dir(roots, tmp_path, monkeypatch):
    src, _ = roots
    shipped = projection.cache_path(src / "with")  # not one of the user's runs: left as shipped
    assert shipped == tmp_path / "runs" / "_cache" / "src" / "with" / "gist_map" / "umap.parquet"
    synthetic_run(tmp_path / "runs" / "mine", gists=False)
    assert projection.cache_path(tmp_path / "runs" / "mine") == tmp_path / "runs" / "mine" / "gist_map" / "umap.parquet"
    monkeypatch.setattr(jobs.os, "access", lambda *a: False)  # a read-only run folder
    fallback = tmp_path / "runs" / "_cache" / "runs" / "mine" / "gist_map"
    assert projection.cache_path(tmp_path / "runs" / "mine").parent == fallback


@pytest.mark.slow
def test_umap_is_computed_in_the_background_and_cached(roots):
    src, n = roots
    t0 = time.monotonic()
    at = page("src/with")
    assert time.monotonic() - t0 < 20  # the page does not wait for UMAP
    assert "UMAP is being computed" in at.info[0].value and len(jobs.processes()) == 1
    at.run()  # a rerun while it computes does not start a second one
    assert len(jobs.processes()) == 1
    cache = projection.cache_path(src / "with")
    jobs.processes()[0].wait(timeout=300)
    assert cache.exists() and projection.umap_error(src / "with") is None
    um = projection.read_umap(src / "with", n)
    assert len(um) == n and np.isfinite(um[["x", "y"]].to_numpy()).all()
    assert projection.read_umap(src / "with", n + 1) is None  # made from fewer gists: stale
    at.run()
    assert plotly_points(charts(at)["UMAP"]) == n


def test_points_carry_node_span_and_text_and_the_axes_are_named(roots):
    """A hover names the gist (level, token span) and shows its text; the axes have titles and ticks
    (the equal-aspect band without axes is gone)."""
    import json

    src, n = roots
    at = page("src/with")
    spec = json.loads(charts(at)["PCA"].proto.spec)
    import html

    from contract import nodes

    run = Run(src / "with")
    previews = run.table("nodes", ["node_id", "preview"]).to_pandas().set_index("node_id")["preview"]
    rows = [r for tr in spec["data"] for r in tr["customdata"]]
    assert len(rows) == n and sum(r[0] in previews.index for r in rows) >= n // 2  # not all empty
    for node_id, lod, start, end, text in rows:
        lv, ix = nodes.node_lod(node_id), nodes.node_index(node_id)
        assert (lod, start) == (lv, nodes.node_start(lv, ix, 32)) and end - start == nodes.span_tokens(lv, 32)
        assert text == html.escape(previews.get(node_id, "")[:80].replace("\n", " "))
    assert "tokens %{customdata[2]}-%{customdata[3]}" in spec["data"][0]["hovertemplate"]
    assert spec["layout"]["xaxis"]["title"]["text"] == "PC1" and "scaleanchor" not in spec["layout"]["yaxis"]


def test_a_click_opens_the_timeline_at_the_gists_last_expansion_else_its_creation():
    import pandas as pd

    from app import projection

    assert projection.jump_step(pd.Series({"last_expand": 12.0, "created": 3})) == 12
    assert projection.jump_step(pd.Series({"last_expand": float("nan"), "created": 3})) == 3
    assert projection.jump_step(pd.Series({"last_expand": None, "created": None})) == 0
