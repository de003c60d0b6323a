"""Timeline page (AppTest): the heatmap's cells are the recorded LODs, the decisions table is the
recorded decisions, the scrubber and the URL move together, play advances, bad runs are refused."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from app import queries as q
from contract import ACTIONS, OUTCOMES, DecisionsRecorded, EntriesRecorded
from tests.app_fixtures import (
    charts,
    clean,
    decode,
    frame_with,
    heartbeat,
    open_page,
    point_app_at,
    run_roots,
    shown_rows,
    texts,
)
from tests.telemetry_fixtures import per_token_lod

T1 = (7 + 4) * 32  # tokens covered by the WC at the last step of the 8-step fixture


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return run_roots(tmp_path_factory.mktemp("app_timeline"))


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def per_token(evs, column: str, n_steps: int = 8) -> np.ndarray:
    grid = np.full((n_steps, T1), np.nan)
    for e in evs:
        if isinstance(e, EntriesRecorded) and e.iteration == 0:
            for v, s, end in zip(getattr(e, column), e.start, e.end, strict=True):
                grid[e.step, int(s) : int(end)] = v
    return grid


def heat_z(fig: dict, trace: int = 0) -> np.ndarray:
    return decode(fig["data"][trace]["z"]).astype(float)


def test_heatmap_cells_are_the_recorded_lods_and_the_step_is_marked(roots):
    at = open_page("timeline", run="samples/small", step=3)
    clean(at)
    fig = charts(at)[0]
    assert fig["data"][0]["type"] == "heatmap"
    z = heat_z(fig)
    want = per_token_lod(roots["events"], 0, 7, 0, T1).astype(float)
    want[want < 0] = np.nan
    assert z.shape == (8, T1)
    np.testing.assert_array_equal(z[3], want[3])  # the selected step, token by token
    np.testing.assert_array_equal(z, want)  # and every other step
    assert decode(fig["data"][0]["y"]).tolist() == list(range(8))
    marker = [s for s in fig["layout"]["shapes"] if s.get("type") == "line"]
    assert marker and marker[0]["y0"] == 3 and marker[0]["y1"] == 3
    assert at.query_params["step"] == "3"


def test_decisions_table_is_the_recorded_decisions_of_the_step(roots):
    at = open_page("timeline", run="samples/small", step=3)
    clean(at)
    d = next(e.decisions for e in roots["events"] if isinstance(e, DecisionsRecorded) and e.step == 3)
    rows = shown_rows(d)
    table = frame_with(at, "outcome", "change")
    assert table["node_id"].tolist() == d.node_id[rows].tolist()
    assert table["action"].tolist() == [ACTIONS[d.action[k]] for k in rows]
    assert table["outcome"].tolist() == [OUTCOMES[d.outcome[k]] for k in rows]
    assert table["forced"].tolist() == d.forced[rows].tolist()
    assert table["change"].tolist() == [f"{d.lod_from[k]}->{'out' if d.lod_to[k] < 0 else d.lod_to[k]}" for k in rows]
    assert "evict" in table["action"].tolist()  # step 3 of the fixture has the forced eviction
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("CSV") >= 2 and labels.count("Parquet") >= 2  # heatmap cells and decisions


def test_scrubber_and_url_move_together(roots):
    at = open_page("timeline", run="samples/small", step=6)
    assert at.slider(key="step_scrubber").value == 6  # a shared link opens on its step
    at.slider(key="step_scrubber").set_value(2).run()
    clean(at)
    assert at.query_params["step"] == "2"
    assert [s for s in charts(at)[0]["layout"]["shapes"] if s.get("type") == "line"][0]["y0"] == 2
    at.query_params["step"] = "5"  # another page (or play) moved the URL: the slider follows
    at.run()
    assert at.slider(key="step_scrubber").value == 5
    d = next(e.decisions for e in roots["events"] if isinstance(e, DecisionsRecorded) and e.step == 5)
    assert frame_with(at, "outcome", "change")["node_id"].tolist() == d.node_id[shown_rows(d)].tolist()


def test_play_keeps_to_the_chosen_speed_stops_at_the_end_and_restarts_from_the_first_step(roots):
    at = open_page("timeline", run="samples/small", step=1)
    at.selectbox(key="tl_speed").set_value(5).run()
    at.button(key="tl_play_btn").click().run()
    assert at.session_state["tl_playing"] is True
    assert at.query_params["step"] == "1"  # starting does not jump
    # While playing the player owns the step (the scrubber shows it, disabled), the heatmap is drawn on
    # a quarter of the cells and without the click layer: the browser keeps up with the moves.
    assert at.slider(key="step_scrubber").disabled
    fig = charts(at)[0]
    assert [t["type"] for t in fig["data"]] == ["heatmap"]
    assert decode(fig["data"][0]["z"]).size <= q.MAX_CELLS // 4
    time.sleep(0.5)  # 5 steps a second: 2 steps owed (a slow rerun may owe a third)
    at.run()
    clean(at)
    assert at.query_params["step"] in ("3", "4")
    assert at.subheader[0].value == f"Step {at.query_params['step']}"
    time.sleep(1.2)  # 6 more owed: the run ends at step 7, and playing stops there
    at.run()
    assert at.query_params["step"] == "7" and at.session_state["tl_playing"] is False
    assert not at.slider(key="step_scrubber").disabled
    at.button(key="tl_play_btn").click().run()  # Play at the last step starts again from the first
    assert at.query_params["step"] == "0" and at.session_state["tl_playing"] is True


def test_score_overlay_shares_the_cell_budget_and_carries_the_scores(roots):
    at = open_page("timeline", run="samples/small", step=1)
    at.selectbox(key="tl_overlay").set_value("final score").run()
    clean(at)
    fig = charts(at)[0]
    assert [t["type"] for t in fig["data"]] == ["heatmap", "heatmap", "scatter"]  # LOD, scores, the click layer
    np.testing.assert_allclose(heat_z(fig, 1), per_token(roots["events"], "score"), rtol=1e-6)
    assert sum(heat_z(fig, i).size for i in (0, 1)) <= 250_000


def test_zoom_bins_only_the_chosen_steps_and_tokens(roots):
    at = open_page("timeline", run="samples/small", step=3)
    steps = next(s for s in at.slider if s.key.startswith("tl_steps:"))
    tokens = next(s for s in at.slider if s.key.startswith("tl_tokens:"))
    steps.set_value((2, 5))
    tokens.set_value((64, 192)).run()
    clean(at)
    fig = charts(at)[0]
    assert decode(fig["data"][0]["y"]).tolist() == [2, 3, 4, 5]
    assert decode(fig["data"][0]["x"]).tolist() == list(range(64, 192))
    want = per_token_lod(roots["events"], 2, 5, 64, 192).astype(float)
    want[want < 0] = np.nan
    np.testing.assert_array_equal(heat_z(fig), want)


def test_refused_and_missing_runs_say_so_in_one_line(roots):
    for ref, text in (
        ("/etc", "outside the configured run folders"),
        ("../../../etc", "outside the configured run folders"),
        ("samples/broken", "not a run"),
        ("samples/nope", "no run folder"),
    ):
        at = open_page("timeline", run=ref)
        assert not at.exception
        assert text in texts(at.error) and "\n" not in texts(at.error), ref
        assert not at.get("plotly_chart")
    at = open_page("timeline")
    assert not at.exception and "Runs" in texts(at.info)


def test_recording_and_interrupted_runs_show_what_they_have(roots):
    heartbeat(roots["samples"] / "live")
    for ref in ("samples/live", "samples/stale"):
        at = open_page("timeline", run=ref)
        clean(at)
        z = heat_z(charts(at)[0])
        assert z.shape[0] == 3  # three steps written before the recorder stopped (or so far)
        assert at.slider(key="step_scrubber").max == 2


def test_a_bad_part_is_named_and_the_rest_still_shows(roots):
    bad = roots["samples"] / "bad_part"
    shutil.copytree(roots["samples"] / "small", bad)
    part = sorted((bad / "entries").glob("*.parquet"))[-1]
    part.write_bytes(b"not parquet at all")
    at = open_page("timeline", run="samples/bad_part", step=0)
    assert not at.exception and not at.error
    warning = texts(at.warning)
    assert "Skipped 1 unreadable part file" in warning and part.name in warning
    z = heat_z(charts(at)[0])
    want = per_token_lod(roots["events"], 0, 7, 0, T1).astype(float)
    assert z.shape[0] < 8  # the last steps were in the bad part
    w0 = want[0, : z.shape[1]]
    np.testing.assert_array_equal(z[0], np.where(w0 < 0, np.nan, w0))  # early steps are in the good parts


def test_a_scenario_runs_needle_is_marked_across_all_steps():
    at = open_page("timeline", run="samples/scenario", step=2)
    clean(at)
    rects = [s for s in charts(at)[0]["layout"]["shapes"] if s.get("type") == "rect"]
    assert len(rects) == 1 and (rects[0]["x0"], rects[0]["x1"]) == (64, 80)
    assert "passkey 48213" in texts(at.caption) and "at LOD0" in texts(at.caption) and "recovered" in texts(at.caption)
    plain = open_page("timeline", run="samples/small", step=2)
    assert not [s for s in charts(plain)[0]["layout"]["shapes"] if s.get("type") == "rect"]
