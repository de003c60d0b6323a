"""Reader: listing runs, bad data (clear one-line errors, the rest stays readable), live reads, heatmap binning."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract import EntriesRecorded, StepRecorded, nodes
from telemetry import ParquetSink, Run, RunReadError, list_runs
from tests.telemetry_fixtures import BS, events, per_token_lod, record, started


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    evs = events(8)
    record(run_dir, evs, flush_rows=25)
    return run_dir, evs


def _set_manifest(run_dir, **changes):
    path = run_dir / "manifest.json"
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


def _ago(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat()


def test_list_runs_statuses_and_invalid_folders(tmp_path):
    record(tmp_path / "a_complete", events(3))
    record(tmp_path / "b_failed", events(2, finish=False))
    for name, age in (("c_live", 1), ("d_stale", 120)):
        shutil.copytree(tmp_path / "a_complete", tmp_path / name)
        _set_manifest(tmp_path / name, status="recording", heartbeat_at=_ago(age))
    (tmp_path / "e_empty").mkdir()
    (tmp_path / "f_nomanifest").mkdir()
    (tmp_path / "f_nomanifest" / "notes.txt").write_text("hi")
    shutil.copytree(tmp_path / "a_complete", tmp_path / "g_corrupt")
    (tmp_path / "g_corrupt" / "manifest.json").write_text('{"schema_version": 1, "status": ')
    shutil.copytree(tmp_path / "a_complete", tmp_path / "h_future")
    _set_manifest(tmp_path / "h_future", schema_version=999)
    (tmp_path / "_staging_like").mkdir()  # underscore and dot folders are not runs

    runs = {r.name: r for r in list_runs(tmp_path)}
    assert list(runs) == sorted(runs) and "_staging_like" not in runs
    assert runs["a_complete"].status == "complete" and runs["a_complete"].problem is None
    assert runs["a_complete"].steps == 3 and runs["a_complete"].scorer == "recency"
    assert runs["a_complete"].size_bytes > 1000 and runs["a_complete"].config_flat["wc.w_max"] == 2048
    assert runs["b_failed"].status == "failed" and "before RunFinished" in runs["b_failed"].error
    assert runs["c_live"].status == "recording"
    assert runs["d_stale"].status == "interrupted"
    assert {r.name: r.status for r in list_runs(tmp_path, stale_after=600)}["d_stale"] == "recording"
    problems = {
        "e_empty": "empty folder",
        "f_nomanifest": "no manifest.json",
        "g_corrupt": "manifest.json: corrupt JSON",
        "h_future": "schema_version 999 is newer than this reader's 1",
    }
    for name, text in problems.items():
        assert runs[name].status == "invalid" and text in runs[name].problem, name
        assert "\n" not in runs[name].problem
    assert list_runs(tmp_path / "missing") == []


def test_run_open_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunReadError, match="empty folder"):
        Run(tmp_path / "empty")
    with pytest.raises(RunReadError, match="no such directory"):
        Run(tmp_path / "nope")
    record(tmp_path / "future", events(2))
    _set_manifest(tmp_path / "future", schema_version=999)
    with pytest.raises(RunReadError, match=r"manifest.json: schema_version 999 is newer"):
        Run(tmp_path / "future")


def test_status_interrupted_from_heartbeat(tmp_path):
    record(tmp_path / "run", events(2))
    _set_manifest(tmp_path / "run", status="recording", heartbeat_at=_ago(45))
    assert Run(tmp_path / "run").status == "interrupted"
    assert Run(tmp_path / "run", stale_after=60).status == "recording"


def _copy(small, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(small[0], run_dir)
    return run_dir


@pytest.mark.parametrize("kind", ["truncated", "not_parquet", "foreign"])
def test_bad_part_is_skipped_and_named(small, tmp_path, kind):
    run_dir = _copy(small, tmp_path)
    good = Run(run_dir)
    n_entries, n_parts = good.table("entries").num_rows, len(good.parts("entries"))
    bad = run_dir / "entries" / "part-000002.parquet"
    bad_rows = pq.ParquetFile(bad).metadata.num_rows
    if kind == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        why = "not a readable Parquet file"
    elif kind == "not_parquet":
        bad.write_text("hello, I am a CSV\n1,2,3\n")
        why = "not a readable Parquet file"
    else:
        pq.write_table(pa.table({"foo": [1, 2], "step": [1.5, 2.5]}), bad)
        why = "not a valid entries part (missing column 'node_id')"

    run = Run(run_dir)
    t = run.table("entries")  # the good parts stay readable
    assert t.num_rows == n_entries - bad_rows and len(run.parts("entries")) == n_parts - 1
    assert len(run.problems) == 1 and str(bad) in run.problems[0] and why in run.problems[0]
    assert "\n" not in run.problems[0]
    with pytest.raises(RunReadError, match="part-000002.parquet") as e:
        run.table("entries", strict=True)
    assert "\n" not in str(e.value)
    assert run.table("steps").num_rows == 8 and run.n_steps() == 8  # other tables untouched
    assert run.lod_timeline(20, 8).num_rows > 0
    run.table("entries")
    assert len(run.problems) == 1  # reported once


def test_foreign_file_under_a_part_name_is_checked(small, tmp_path):
    run_dir = _copy(small, tmp_path)
    t = pq.read_table(run_dir / "steps" / "part-000001.parquet")
    t = t.set_column(0, "step", t["step"].cast(pa.int64()))  # a look-alike with the wrong type
    k = len(list((run_dir / "steps").iterdir())) + 1
    pq.write_table(t, run_dir / "steps" / f"part-{k:06d}.parquet")
    run = Run(run_dir)
    assert run.n_steps() == 8 and len(run.problems) == 1
    assert f"part-{k:06d}.parquet: not a valid steps part (column 'step' is int64, expected int32)" in run.problems[0]


def test_staging_and_temp_files_are_never_read(small, tmp_path):
    run_dir = _copy(small, tmp_path)
    (run_dir / "_staging").mkdir()
    shutil.copy(run_dir / "steps" / "part-000001.parquet", run_dir / "_staging" / "steps-part-000009.parquet")
    (run_dir / "steps" / "part-000009.parquet.tmp").write_bytes(b"PAR1")
    run = Run(run_dir)
    assert run.n_steps() == 8 and run.table("steps").num_rows == 8 and not run.problems


def test_table_projection_filter_and_empty(small):
    run = Run(small[0])
    t = run.table("entries", ["step", "lod"], where="step >= $s AND lod = 0", params={"s": 5})
    assert t.column_names == ["step", "lod"] and t.schema.field("lod").type == pa.int8()
    assert t.num_rows > 0 and min(t["step"].to_pylist()) == 5 and set(t["lod"].to_pylist()) == {0}
    steps = run.steps()
    assert steps["step"].to_pylist() == list(range(8))
    with pytest.raises(ValueError, match="unknown column 'bogus'"):
        run.table("entries", ["bogus"])
    with pytest.raises(ValueError, match="unknown table"):
        run.table("bogus")
    empty = run.table("attention", where="step < 0")
    assert empty.num_rows == 0 and empty.schema.field("mass").type == pa.float32()


def test_table_without_parts_is_empty(tmp_path):
    sink = ParquetSink(tmp_path / "run")
    sink.emit(started())
    run = Run(tmp_path / "run")
    assert run.status == "recording" and run.n_steps() == 0
    t = run.table("decisions", ["action", "forced"])
    assert t.num_rows == 0 and t.schema.types == [pa.string(), pa.bool_()]
    assert run.lod_timeline(10, 10).num_rows == 0
    assert run.summary()["steps"] == 0
    sink.close()


def test_reader_polls_while_writer_flushes(tmp_path):
    run_dir = tmp_path / "run"
    evs = events(60)
    sink = ParquetSink(run_dir, flush_rows=20, heartbeat_seconds=0.01)
    sink.emit(evs[0])
    done = threading.Event()

    def write():
        try:
            for e in evs[1:]:
                sink.emit(e)
                if isinstance(e, StepRecorded):
                    time.sleep(0.01)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    run, seen = Run(run_dir), []
    while not done.is_set():
        n = run.steps()["step"].to_numpy()
        assert np.array_equal(n, np.arange(n.size))  # a prefix of the steps, in order
        run.lod_timeline(16, 16)
        run.metric_series("swap_rate")
        assert run.status in ("recording", "complete")
        seen.append(n.size)
    thread.join()
    assert seen == sorted(seen) and seen[0] < 60 and len(set(seen)) > 2
    assert run.n_steps() == 60 and run.status == "complete" and not run.problems


# ---------------------------------------------------------------------------------------- heatmaps


def _grid_from(table: pa.Table, shape: tuple[int, int], col: str = "value") -> np.ndarray:
    g = np.full(shape, np.nan)
    g[table["y_bin"].to_numpy(), table["x_bin"].to_numpy()] = table[col].to_numpy()
    return g


def test_lod_timeline_exact_at_one_token_one_step(small):
    run_dir, evs = small
    run = Run(run_dir)
    t1 = int(run.table("entries", ["end"])["end"].to_numpy().max())
    expected = per_token_lod(evs, 0, 7, 0, t1).astype(float)
    expected[expected < 0] = np.nan
    for agg in ("mean", "min", "max"):
        got = _grid_from(run.lod_timeline(t1, 8, agg=agg), expected.shape)
        assert np.array_equal(got, expected, equal_nan=True), agg
    # a zoomed window: steps 2..5, tokens 40..150
    sub = run.lod_timeline(110, 4, step_range=(2, 5), token_range=(40, 150))
    exp = per_token_lod(evs, 2, 5, 40, 150).astype(float)
    exp[exp < 0] = np.nan
    assert np.array_equal(_grid_from(sub, exp.shape), exp, equal_nan=True)
    assert sub["token_lo"].to_pylist()[0] == 40 and sub["step_lo"].to_pylist()[0] == 2


def test_lod_timeline_coarse_bins_are_token_weighted_means(small):
    run_dir, evs = small
    run = Run(run_dir)
    t1 = int(run.table("entries", ["end"])["end"].to_numpy().max())
    dense = per_token_lod(evs, 0, 7, 0, t1).astype(float)
    w, h = 7, 3
    xb = np.arange(t1) * w // t1
    yb = np.arange(8) * h // 8
    out = run.lod_timeline(w, h)
    assert out.num_rows <= w * h
    for row in out.to_pylist():
        cell = dense[np.ix_(yb == row["y_bin"], xb == row["x_bin"])]
        cov = cell[cell >= 0]
        assert row["weight"] == cov.size
        assert row["value"] == pytest.approx(cov.mean(), rel=1e-6)
        assert row["token_lo"] == np.flatnonzero(xb == row["x_bin"])[0]
        assert row["step_hi"] == np.flatnonzero(yb == row["y_bin"])[-1]
    assert sum(out["weight"].to_pylist()) == (dense >= 0).sum()


def test_score_heatmap(small):
    run_dir, evs = small
    run = Run(run_dir)
    first = next(e for e in evs if isinstance(e, EntriesRecorded))
    t1 = int(first.end.max())
    out = run.score_heatmap(t1, 1, step_range=(0, 0), token_range=(0, t1), column="raw_score")
    per_token = np.repeat(first.raw_score, BS)
    assert np.allclose(out["value"].to_numpy(), per_token)
    with pytest.raises(ValueError, match="score column"):
        run.score_heatmap(4, 4, column="lod")


def test_timeline_output_is_bounded_on_a_bigger_run(tmp_path):
    # 400 steps over a WC of ~300 entries (LOD2 gists, LOD1 gists and a moving window of detail).
    sink = ParquetSink(tmp_path / "big", flush_rows=20_000)
    sink.emit(started())
    n_steps, covered = 400, 0
    for t in range(n_steps):
        lod2 = np.arange(t // 64 + 2)  # LOD2 gists cover the oldest 1,024-token spans
        first_blk = lod2.size * BS
        blocks = np.arange(first_blk, first_blk + 256)
        lod1 = np.where((blocks >= first_blk + t % 200) & (blocks < first_blk + t % 200 + 16), 0, 1)
        lod = np.concatenate([np.full(lod2.size, 2), lod1]).astype(np.int8)
        idx = np.concatenate([lod2, blocks])
        start = nodes.node_start(lod, idx, BS)
        end = start + nodes.span_tokens(lod, BS)
        covered += int((end - start).sum())
        z = np.zeros(lod.size, np.float32)
        sink.emit(EntriesRecorded(t, 0, nodes.node_id(lod, idx), lod, start, end, nodes.node_cost(lod, BS), z, z, z, z))
    sink.close("complete")
    run = Run(tmp_path / "big")
    for w, h in ((64, 48), (500, 400), (3, 1000)):
        out = run.lod_timeline(w, h)
        assert 0 < out.num_rows <= w * h
        assert int(np.max(out["x_bin"].to_numpy())) < w and int(np.max(out["y_bin"].to_numpy())) < h
        assert sum(out["weight"].to_pylist()) == covered  # every covered token-step counted exactly once
        v = out["value"].to_numpy()
        assert v.min() >= 0 and v.max() <= 2
