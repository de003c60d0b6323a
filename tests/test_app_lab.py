"""Knobs lab: the page re-plans a real recording with the knobs in its inputs (and URL), and its
numbers are the ones the engine's replay and the telemetry metrics give on their own."""

from __future__ import annotations

import json
import math

import pytest
from streamlit.testing.v1 import AppTest

from app import lab
from studio import load_recording, replay_run
from telemetry import LAB_ENTRIES, Run, heatmap_of_table, run_metrics
from tests.lab_fixtures import REPO, THRASH, record

PAGE = str(REPO / "app" / "views" / "knobs_lab.py")
REF = "src/rec"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    record(base / "src" / "rec", *THRASH)
    return base


@pytest.fixture
def env(roots, monkeypatch):
    monkeypatch.setenv("MCS_SAMPLE_RUNS", str(roots / "src"))
    monkeypatch.setenv("MCS_RUNS_DIR", str(roots / "runs"))
    return roots


def page(**params) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def table(at: AppTest):
    return at.dataframe[0].value.set_index("metric")


def rendered(at: AppTest) -> dict:
    """The re-planned column of the page's metric table, by summary key."""
    df = at.dataframe[0].value
    labels = dict(lab.SUMMARY_METRICS)
    return {key: df.loc[df["metric"] == labels[key], "re-planned"].item() for key, _ in lab.SUMMARY_METRICS}


def same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def test_no_run_says_what_to_do(env):
    at = page()
    assert not at.exception and "**Runs** page" in at.info[0].value


def test_recorded_knobs_give_zero_deltas_and_the_recorded_metrics(env):
    at = page(run=REF)
    assert not at.exception and not at.error
    df = table(at)
    assert len(df) == len(lab.SUMMARY_METRICS)
    assert all(d == 0 for d in df["delta"].dropna()) and df["delta"].notna().sum() >= 8
    s = run_metrics.summary(Run(env / "src" / "rec"))  # the metrics module's own numbers for the recording
    labels = dict(lab.SUMMARY_METRICS)
    for key in ("swap_rate", "ping_pongs_per_edit", "locality", "sequential_score", "residency_mean", "utilization",
                "coherence", "adjacent_share"):  # fmt: skip
        assert same(df.loc[labels[key], "recorded"], s[key]), key
    assert "k.allocator.cooldown_steps" not in at.query_params  # nothing changed: nothing in the URL
    assert not at.warning  # same knobs: every score was recorded, the replay is exact


def test_moving_cooldown_and_tau_replans_like_engine_replay(env, tmp_path):
    at = page(run=REF)
    at.number_input(key="lab:allocator.cooldown_steps").set_value(6)
    at.number_input(key="lab:allocator.tau_expand").set_value(0.5)
    at.run()
    assert not at.exception and not at.error
    assert at.query_params["k.allocator.cooldown_steps"] == "6" and at.query_params["k.allocator.tau_expand"] == "0.5"
    got = rendered(at)
    # Independently: the engine's replay into a run folder, then the metrics module on that folder.
    out = tmp_path / "direct"
    replay_run(env / "src" / "rec", out, ["allocator.cooldown_steps=6", "allocator.tau_expand=0.5"])
    want = run_metrics.summary(Run(out))
    for key, _ in lab.SUMMARY_METRICS:
        assert same(got[key], want[key]), (key, got[key], want[key])
    df = table(at)
    assert df.loc["ping-pongs", "delta"] < 0  # the random scorer ping-pongs; a cooldown of 6 stops most of it
    assert (df["delta"].dropna() != 0).sum() >= 3


def test_url_knobs_set_the_inputs(env):
    at = page(run=REF, **{"k.allocator.hysteresis_steps": "3", "k.allocator.shift_kernel": "0.25,0.25"})
    assert not at.exception and not at.error
    assert at.number_input(key="lab:allocator.hysteresis_steps").value == 3
    assert at.text_input(key="lab:allocator.shift_kernel").value == "0.25,0.25"
    rec = load_recording(env / "src" / "rec")
    want = lab.replan(rec, ["allocator.hysteresis_steps=3", "allocator.shift_kernel=0.25,0.25"]).summary
    got = rendered(at)
    assert all(same(got[k], want[k]) for k in want)
    changed = next(m.value for m in at.markdown if m.value.startswith("Changed knobs:"))
    assert "allocator.hysteresis_steps=3" in changed and "allocator.shift_kernel=0.25,0.25" in changed


@pytest.mark.parametrize(
    ("params", "widget", "message"),
    [
        ({}, ("lab:wc.w_max", 100), "wc.w_max must be >= "),  # RunConfig's cross-field rule
        ({"k.allocator.tau_expand": "1.5"}, None, "allocator.tau_expand must be in [0, 1), got 1.5"),
        ({"k.allocator.cooldown_steps": "abc"}, None, "is not a valid int"),
        ({"k.scorer.name": "recency"}, None, "cannot change scorer.name"),
        ({}, ("lab:allocator.shift_kernel", "0.5"), "allocator.shift_kernel must be 2 numbers, each in [0, 1]"),
        ({"k.allocator.cooldown_steps": "-3"}, None, "is not a valid int within range"),  # below its bound
    ],
)
def test_bad_knobs_are_one_error_line(env, params, widget, message):
    at = page(run=REF, **params)
    if widget:
        key, value = widget
        (at.text_input if key.endswith("shift_kernel") else at.number_input)(key=key).set_value(value)
        at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(message in e for e in errors), errors
    assert all("\n" not in e and "Traceback" not in e for e in errors)


def test_replay_that_needs_unrecorded_scores_says_approximate(env):
    at = page(run=REF, **{"k.wc.w_max": "1024"})  # a bigger WC keeps entries the recording never scored
    assert not at.exception and not at.error
    assert at.warning and "Approximate replay" in at.warning[0].value


def test_save_as_replay_run_writes_a_listed_run(env):
    at = page(run=REF, **{"k.allocator.cooldown_steps": "4"})
    at.button[[b.label for b in at.button].index("Save as replay run")].click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    out = env / "runs" / "rec-cooldown_steps4"
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["changed_knobs"] == {"allocator.cooldown_steps": 4}
    assert man["parent"] == str((env / "src" / "rec").resolve())
    assert "runs/rec-cooldown_steps4" in at.success[0].value
    # Saved again: a second folder, never an overwrite.
    at.button[[b.label for b in at.button].index("Save as replay run")].click()
    at.run()
    assert (env / "runs" / "rec-cooldown_steps4-2" / "manifest.json").exists()


def test_an_in_memory_table_bins_as_its_run_folder(env):
    """`heatmap_of_table` (the lab's re-plan of a sparse-entries recording) runs the reader's query on
    rows in memory: the same cells as the run folder holding them, at several grids."""
    run = Run(env / "src" / "rec")
    entries = run.table("entries", list(LAB_ENTRIES))
    n, tokens = run.n_steps(), int(run.manifest["tokens"])
    for w, h in ((600, 400), (37, 11), (tokens, n)):
        for agg in ("min", "mean"):
            got = heatmap_of_table(entries, "lod", w, h, (0, n - 1), (0, tokens), agg=agg)
            ref = run.lod_timeline(w, h, (0, n - 1), (0, tokens), agg=agg)
            assert got.num_rows > 0 and got.equals(ref), (w, h, agg)


def test_binning_geometry_is_one_in_numpy_and_sql():
    """`telemetry.binning`: the SQL step bin gives what the arithmetic gives, for every value; bins start
    where the arithmetic says and none is empty."""
    import duckdb
    import numpy as np

    from telemetry import binning

    for lo, extent, bins in ((0, 1000, 37), (5, 7, 7), (100, 1, 1), (3, 999_983, 1000)):
        p = np.arange(lo, lo + extent, max(1, extent // 500), dtype=np.int64)
        b = np.arange(bins + 1, dtype=np.int64)
        q = f"SELECT {binning.sql_bin_of('p', '$lo', '$ex', '$bins')} AS x FROM unnest($p) t(p)"
        got_of = duckdb.sql(q, params={"lo": lo, "ex": extent, "bins": bins, "p": p.tolist()}).fetchnumpy()["x"]
        assert np.array_equal(got_of, binning.bin_of(p, lo, extent, bins))
        starts = binning.bin_start(b, lo, extent, bins)
        assert starts[0] == lo and starts[-1] == lo + extent and np.all(np.diff(starts) >= 1)  # no empty bin
        assert np.array_equal(binning.bin_of(starts[:-1], lo, extent, bins), b[:-1])  # a bin starts in itself


def test_replanned_timeline_cells_are_the_readers_binning_of_the_replay(env, tmp_path):
    """The re-planned timeline is binned while measuring (studio.fast_replay); it must be the cells the
    reader gives for the same replay written to a folder, as the recorded side's are."""
    sets = ["allocator.cooldown_steps=5", "allocator.tau_expand=0.4"]
    rec = load_recording(env / "src" / "rec")
    n, tokens = int(rec.tokens_seen.size), int(rec.tokens_seen[-1])
    res = lab.replan(rec, sets, grid=(53, 17))
    replay_run(env / "src" / "rec", tmp_path / "replay", sets)
    ref = Run(tmp_path / "replay").lod_timeline(53, 17, (0, n - 1), (0, tokens), agg="min").to_pandas()
    assert res.cells.attrs["extent"] == {"t0": 0, "t1": tokens, "s0": 0, "s1": n - 1, "w": 53, "h": 17}
    assert len(res.cells) == len(ref) > 0
    for c in ("x_bin", "y_bin", "value", "token_lo", "token_hi", "step_lo", "step_hi"):
        assert (res.cells[c].to_numpy() == ref[c].to_numpy()).all(), c


def test_replay_name_is_a_plain_folder_name():
    assert lab.replay_name("rec", {"allocator.cooldown_steps": 4}) == "rec-cooldown_steps4"
    name = lab.replay_name("r", {"allocator.shift_kernel": (0.25, 0.5), "allocator.tau_expand": 0.3})
    assert name == "r-shift_kernel0.25_0.5-tau_expand0.3"


def test_reset_brings_back_the_recorded_knobs(env):
    at = page(run=REF, **{"k.allocator.max_edits": "9"})
    assert at.number_input(key="lab:allocator.max_edits").value == 9
    at.button[[b.label for b in at.button].index("Reset to the recorded knobs")].click()
    at.run()
    assert not at.exception and not at.error
    assert at.number_input(key="lab:allocator.max_edits").value == 4
    assert not [k for k in at.query_params if k.startswith("k.")]
    assert all(d == 0 for d in table(at)["delta"].dropna())


def test_a_run_too_long_to_hold_is_one_error_before_loading(env, monkeypatch):
    n = Run(env / "src" / "rec").n_rows("entries")
    monkeypatch.setattr(lab, "MAX_ENTRY_ROWS", n - 1)
    at = page(run=REF)
    assert not at.exception and len(at.error) == 1 and not at.dataframe
    assert f"has {n:,} entry rows, more than the {n - 1:,} the Knobs lab holds" in at.error[0].value
    assert "python -m engine replay" in at.error[0].value


def test_lab_widgets_take_bounds_and_help_from_the_knob_declaration():
    from app.lab import knob_widget

    w = knob_widget("allocator.hysteresis_margin")
    assert (w.kind, w.lo, w.hi) == ("float", 0.0, 1.0) and "reverse a recent edit" in w.help and "in [0, 1]" in w.help
    assert knob_widget("allocator.tau_expand").hi is None  # [0, 1): an open bound is left to validation
    assert (knob_widget("allocator.cooldown_steps").kind, knob_widget("allocator.cooldown_steps").lo) == ("int", 0)
    assert knob_widget("allocator.shift_kernel").kind == "pair"
    assert "(left, right)" in knob_widget("allocator.shift_kernel").help


def test_a_sparse_entries_recording_replans_with_its_timeline():
    """A recording with `session.entries_every=2` re-plans through tables; its timeline is binned by
    the reader's query over those rows (the recorded steps only), so the chart still has cells."""
    from dataclasses import replace

    from contract import apply_overrides

    rec = load_recording(REPO / "tests" / "data" / "replay" / "rec")
    even = rec.step % 2 == 0
    cfg = apply_overrides(rec.config, ["session.entries_every=2"])
    sparse = replace(rec, config=cfg, step=rec.step[even], iteration=rec.iteration[even], node_id=rec.node_id[even],
                     raw_score=rec.raw_score[even])  # fmt: skip
    res = lab.replan(sparse, ["allocator.cooldown_steps=3"], grid=(40, 10))
    n, tokens = int(sparse.tokens_seen.size), int(sparse.tokens_seen[-1])
    assert res.cells is not None and len(res.cells) > 0
    assert res.cells.attrs["extent"] == {"t0": 0, "t1": tokens, "s0": 0, "s1": n - 1, "w": 40, "h": 10}
    assert set(res.cells["step_lo"]) <= set(range(n)) and res.cells["value"].max() <= 2
