"""Sweep page (AppTest): on a constructed sweep the Pareto set is exactly the non-dominated settings
(each metric in its registry direction, recordings averaged or one alone), the heatmap is the mean
over the other knobs, a picked point links to the Knobs lab with its knobs; a bad grid in "Start a
sweep" is one line and starts nothing; a started sweep runs in the background and is then shown."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app import jobs
from studio import Grid, results_schema
from tests.app_fixtures import charts, clean, decode, open_page, point_app_at, texts
from tests.lab_fixtures import THRASH, record, stop_jobs

KNOBS = ("allocator.cooldown_steps", "allocator.hysteresis_margin")
# setting -> (ping_pongs_per_edit: lower is better, locality: higher is better), the mean of two runs
MEANS = {("0", "0"): (0.10, 0.5), ("0", "0.1"): (0.20, 0.9), ("2", "0"): (0.30, 0.4), ("2", "0.1"): (0.10, 0.4),
         ("4", "0"): (0.05, 0.2), ("4", "0.1"): (0.25, 0.6)}  # fmt: skip
FRONT = {("0", "0"), ("0", "0.1"), ("4", "0")}  # the others are dominated ((2,0.1) by (0,0): same x, worse y)


def _constructed(folder, runs):
    grid = Grid(KNOBS, (("0", "2", "4"), ("0", "0.1")))
    rows = []
    for (cd, mg), (pp, loc) in MEANS.items():
        for i, run in enumerate(runs):  # the two runs differ by +-0.01: their mean is MEANS
            d = 0.01 if i == 0 else -0.01
            rows.append({"cell": f"{run}-{cd}-{mg}", "run": run, "setting": f"{KNOBS[0]}={cd};{KNOBS[1]}={mg}",
                         "mode": "fast", KNOBS[0]: cd, KNOBS[1]: mg, "ping_pongs_per_edit": pp + d,
                         "locality": loc - d, "swap_rate": 0.1, "steps": 10, "wall_s": 0.1, "worker": "w"})  # fmt: skip
    (folder / "results").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=results_schema(grid)), folder / "results" / "part-000000.parquet")
    (folder / "sweep.json").write_text(json.dumps({"runs": runs, "grid": grid.as_dict(), "mode": "fast", "cells": 12,
                                                   "done": 12, "status": "complete", "engine": "ray local",
                                                   "workers": 2, "elapsed_s": 1.0}))  # fmt: skip


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_sweep")
    samples, mine = tmp / "samples", tmp / "mine"
    mine.mkdir()
    record(samples / "rec", *THRASH)
    _constructed(samples / "_sweeps" / "constructed", [str(samples / "rec"), str(samples / "other")])
    return {"samples": samples, "mine": mine}


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)
    yield
    stop_jobs()


def _front_rows(at) -> set:
    df = next(d.value for d in at.dataframe if "non_dominated" in d.value.columns)
    return {(r[KNOBS[0]], r[KNOBS[1]]) for r in df.to_dict("records") if r["non_dominated"]}


def test_the_pareto_set_is_the_non_dominated_settings(roots):
    at = open_page("sweep", sweep="samples/constructed")
    clean(at)
    at.selectbox(key="sw_x").set_value("ping_pongs_per_edit")
    at.selectbox(key="sw_y").set_value("locality").run()
    clean(at)
    assert _front_rows(at) == FRONT
    pareto = next(c for c in charts(at) if any(t.get("name") == "non-dominated" for t in c["data"]))
    red = next(t for t in pareto["data"] if t.get("name") == "non-dominated")
    np.testing.assert_allclose(sorted(decode(red["x"])), sorted(MEANS[s][0] for s in FRONT), rtol=1e-9)
    # One recording alone: its own values (run 0 is +0.01 / -0.01 everywhere: the same front).
    at.selectbox(key="sw_run").set_value("rec").run()
    clean(at)
    assert _front_rows(at) == FRONT
    # The heatmap of locality over the two knobs: the mean of the two recordings, per cell.
    at.selectbox(key="sw_run").set_value("every recording (mean)")
    at.selectbox(key="sw_hm_metric").set_value("locality").run()
    heat = next(c for c in charts(at) if c["data"][0].get("type") == "heatmap")["data"][0]
    z = decode(heat["z"]) if isinstance(heat["z"], dict) else np.array(heat["z"], float)
    assert list(heat["x"]) == ["0", "2", "4"] and list(heat["y"]) == ["0", "0.1"]
    np.testing.assert_allclose(z, [[MEANS[(c, m)][1] for c in ("0", "2", "4")] for m in ("0", "0.1")], rtol=1e-9)
    parcoords = next(c for c in charts(at) if c["data"][0].get("type") == "parcoords")["data"][0]
    assert [d["label"] for d in parcoords["dimensions"]][:2] == ["cooldown_steps", "hysteresis_margin"]


def test_a_bad_grid_is_one_line_and_starts_nothing(roots):
    at = open_page("sweep")
    at.multiselect(key="sw_runs").set_value(["samples/rec"])
    at.text_area(key="sw_grid").set_value("allocator.cooldown_steps=1,x")
    at.button(key="sw_go").click().run()
    assert "cannot parse 'x' as int" in texts(at.error) and len(at.error) == 1
    assert not jobs.processes() and not (roots["mine"] / "_sweeps").exists()


def test_a_sweep_started_on_the_page_runs_and_is_shown(roots):
    at = open_page("sweep", timeout=120)
    at.multiselect(key="sw_runs").set_value(["samples/rec"])
    at.text_area(key="sw_grid").set_value("allocator.cooldown_steps=0,4")
    at.text_input(key="sw_name").set_value("from-page")
    at.button(key="sw_go").click().run()
    assert len(jobs.processes()) == 1 and jobs.processes()[0].wait(timeout=240) == 0
    at.run()
    clean(at)
    assert at.query_params["sweep"] == ["mine/from-page"] or at.query_params["sweep"] == "mine/from-page"
    assert "2 of 2 cells" in texts(at.markdown)
    assert len(next(d.value for d in at.dataframe if "non_dominated" in d.value.columns)) == 2


def test_a_corrupt_results_part_is_one_line_and_loses_nothing(roots):
    import shutil

    bad = roots["samples"] / "_sweeps" / "corrupt"
    shutil.copytree(roots["samples"] / "_sweeps" / "constructed", bad)
    (bad / "results" / "part-000001.parquet").write_bytes(b"not parquet at all")
    before = (bad / "results" / "part-000000.parquet").read_bytes()
    at = open_page("sweep", sweep="samples/corrupt")
    assert not at.exception and len(at.error) == 1
    assert "Cannot read sweep samples/corrupt" in texts(at.error) and "part-000001.parquet" in texts(at.error)
    assert (bad / "results" / "part-000000.parquet").read_bytes() == before  # nothing recorded is touched
    shutil.rmtree(bad)
