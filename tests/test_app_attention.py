"""The Step inspector's attention detail (AppTest, tiny model, LensNet scorer): "Compute the attention
by head" runs `engine attention` in the background, then the page draws the heads (their mean is the
recorded attention; one layer shows one row per head) and LensNet's queries x entries, each with its
export; a run whose model is missing says so and starts nothing."""

from __future__ import annotations

import numpy as np
import pytest

from app import attention, jobs
from telemetry import Run
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
EVERY = 5


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_attention")
    samples, mine = tmp / "samples", tmp / "mine"
    samples.mkdir()
    mine.mkdir()
    (tmp / "input.txt").write_text(TEXT)
    r = engine("record", "--quiet", "--model", "tiny", "--input", str(tmp / "input.txt"), "--out", str(samples / "rec"),
               "--scorer", "lensnet", "--set", "wc.w_max=600", "--set", f"session.attention_every={EVERY}",
               "--set", "session.compute_nll=false")  # fmt: skip
    assert r.returncode == 0, r.stderr
    copy_with_model(samples / "rec", samples / "lost-model", str(tmp / "gone-model"))
    return {"samples": samples, "mine": mine}


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)
    yield
    stop_jobs()


def _chart(at, title_word: str) -> dict:
    return next(c for c in charts(at) if c["layout"].get("yaxis", {}).get("title", {}).get("text") == title_word)


def test_attention_by_head_and_by_query_at_a_step(roots, monkeypatch):
    files = capture_downloads(monkeypatch)
    step = 6 * EVERY
    at = open_page("step_inspector", run="samples/rec", step=step)
    clean(at)
    at.button(key="si_detail_go").click().run()
    clean(at)
    assert any(f"Computing the attention of step {step}" in str(i.value) for i in at.info)
    assert len(jobs.processes()) == 1 and jobs.processes()[0].wait(timeout=300) == 0
    at.run()
    clean(at)
    detail = attention.read_detail(roots["samples"] / "rec", step)
    meta = detail.attrs["meta"]
    # Every layer, mean of the heads: the recorded attention of the step, drawn on the log scale.
    rec = Run(roots["samples"] / "rec").table("attention", where=f"step = {step}").to_pandas()
    z = decode(_chart(at, "layer")["data"][0]["z"])
    assert z.shape == (meta["layers"], rec["node_id"].nunique())
    np.testing.assert_allclose(np.sort(10 ** z[np.isfinite(z)]), np.sort(np.maximum(rec["mass"], 1e-6)), rtol=1e-4)
    # One layer: a row per head.
    at.selectbox(key="si_detail_layer").set_value(0).run()
    clean(at)
    assert decode(_chart(at, "head")["data"][0]["z"]).shape[0] == meta["heads"]
    # LensNet: one row per query, labelled; each row's mass sums to 1 over the entries.
    lens = _chart(at, "LensNet query")["data"][0]
    zq = decode(lens["z"])
    assert zq.shape[0] == detail[detail["kind"] == "lens"]["query"].nunique()
    assert list(lens["y"])[-1].startswith("token ")
    np.testing.assert_allclose(np.nansum(10**zq, axis=1), 1.0, atol=1e-3 * zq.shape[1])
    assert meta["lens_max_abs_diff"] < 1e-5 and "differ from the recorded ones by at most" in texts(at.caption)
    got = downloads(at, files)
    assert any("head" in parquet.columns and len(parquet) == len(csv) > 0 for csv, parquet, _ in got)
    assert any("query_label" in parquet.columns for _, parquet, _ in got)
    # Cached: a fresh session shows it at once, starts nothing, and has no button.
    jobs.processes().clear()
    again = open_page("step_inspector", run="samples/rec", step=step)
    clean(again)
    assert not jobs.processes() and not [b for b in again.button if b.key == "si_detail_go"]


def test_a_run_whose_model_is_missing_says_so_and_starts_nothing(roots):
    at = open_page("step_inspector", run="samples/lost-model", step=10)
    clean(at)
    assert "cannot be re-run" in texts(at.info) and "gone-model is not on this machine" in texts(at.info)
    assert at.button(key="si_detail_go").disabled and not jobs.processes()
