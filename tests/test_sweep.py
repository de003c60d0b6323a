"""Knob sweeps (`python -m engine sweep`, studio/sweep.py): on local Ray the cells' metrics are those of
sequential fast replays of the same settings (and of a replay run folder measured by the telemetry
CLI's code); a run given as a URI is read through pyarrow's filesystems; a killed sweep resumes
without redoing finished cells; a bad grid is one line before any cell runs; one process per sweep;
an exact sweep measures NLL like an exact replay."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from studio import SweepError, read_results, replay_run
from studio.sweep import sweep
from telemetry import Run, run_metrics
from telemetry.writer import RunLock
from tests.cli_fixtures import REPO, engine
from tests.lab_fixtures import THRASH, record

GRID = ["allocator.cooldown_steps=0,4", "allocator.hysteresis_margin=0,0.1"]  # 4 settings
COMPARED = ("applied_edits", "ping_pongs", "swap_rate", "locality", "utilization", "residency_mean", "coherence")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    record(d / "runs" / "a", *THRASH)
    record(d / "runs" / "b", *THRASH, "allocator.tau_expand=0.3", scorer="recency")
    return d / "runs"


def _by_cell(t) -> dict:
    df = t.to_pandas()
    df["name"] = df["run"].str.rstrip("/").str.rsplit("/", n=1).str[-1]
    return {(r["name"], r["setting"]): r for r in df.to_dict("records")}


def _same(a, b) -> bool:
    if a is None or a != a:
        return b is None or b != b
    return b == pytest.approx(a, rel=1e-9, abs=1e-12)


def test_local_ray_gives_the_metrics_of_sequential_fast_replays(runs, tmp_path):
    uri = (runs / "b").resolve().as_uri()  # file://...: read through pyarrow's filesystems, as s3:// would be
    ray_m = sweep([str(runs / "a"), uri], GRID, tmp_path / "ray", ray="local", workers=2, progress=False)
    seq_m = sweep([str(runs / "a"), uri], GRID, tmp_path / "seq", ray="none", progress=False)
    assert ray_m["status"] == seq_m["status"] == "complete" and ray_m["cells"] == seq_m["cells"] == 8
    assert ray_m["engine"] == "ray local" and ray_m["workers"] == 2 and ray_m["ray_start_s"] > 0
    on_ray, here = _by_cell(read_results(tmp_path / "ray")), _by_cell(read_results(tmp_path / "seq"))
    assert set(on_ray) == set(here) and len(on_ray) == 8
    assert len({r["worker"] for r in on_ray.values()}) == 2  # both workers took cells
    for key, row in here.items():
        for m in COMPARED:
            assert _same(row[m], on_ray[key][m]), (key, m)
    moved = {
        here[("a", s)]["applied_edits"]
        for s in (
            "allocator.cooldown_steps=0;allocator.hysteresis_margin=0",
            "allocator.cooldown_steps=4;allocator.hysteresis_margin=0.1",
        )
    }
    assert len(moved) == 2  # the knobs matter on this recording: equal numbers would prove little
    # A cell equals a fast replay written to a run folder and measured as the telemetry CLI measures it.
    sets = ["allocator.cooldown_steps=4", "allocator.hysteresis_margin=0.1"]
    replay_run(runs / "a", tmp_path / "replayed", sets)
    want = run_metrics.summary(Run(tmp_path / "replayed"))
    row = here[("a", ";".join(sets))]
    for m in COMPARED:
        assert _same(want[m], row[m]), m
    assert row["nll"] != row["nll"] and row["allocator.cooldown_steps"] == "4"  # fast: no NLL; knobs as written


def test_a_killed_sweep_resumes_without_redoing_finished_cells(runs, tmp_path):
    out = tmp_path / "sw"
    grid = ["allocator.cooldown_steps=0,1,2,3,4,5", "allocator.hysteresis_margin=0,0.05,0.1,0.15,0.2"]  # x 2 runs
    cmd = [sys.executable, "-m", "engine", "sweep", "--runs", str(runs / "*"), "--out", str(out), "--ray", "none",
           "--flush-cells", "1", "--quiet", *[a for g in grid for a in ("--grid", g)]]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list((out / "results").glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = read_results(out).to_pandas().set_index("cell")
    assert 3 <= len(before) < 60
    r = engine("sweep", "--runs", str(runs / "*"), "--out", str(out), "--ray", "none", "--quiet",
               *[a for g in grid for a in ("--grid", g)])  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["cells"] == 60  # 30 settings x 2 runs
    after = read_results(out).to_pandas().set_index("cell")
    assert summary["skipped"] == len(before) and len(after) == 60 and after.index.is_unique
    kept = after.loc[before.index]
    assert (kept["wall_s"] == before["wall_s"]).all() and (kept["worker"] == before["worker"]).all()  # not redone
    assert json.loads((out / "sweep.json").read_text())["status"] == "complete"


def test_a_bad_grid_is_one_line_before_any_cell(runs, tmp_path):
    cases = [
        (["allocator.cooldown_steps=2,x"], "--grid allocator.cooldown_steps: cannot parse 'x' as int"),
        (["allocator.tau_expand=0.2,7"], "allocator.tau_expand=7"),
        (["allocator.nope=1"], "unknown knob 'allocator.nope'"),
        (["scorer.name=recency"], "can change allocator.* and wc.* only; use --exact"),
        (["allocator.cooldown_steps=1,1"], "a value is given twice"),
    ]
    for grid, message in cases:
        out = tmp_path / "never"
        r = engine("sweep", "--runs", str(runs / "*"), "--out", str(out), "--ray", "none", "--quiet",
                   *[a for g in grid for a in ("--grid", g)])  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            grid,
            r.stderr,
        )
        assert not out.exists()  # nothing ran, nothing was written
    r = engine("sweep", "--runs", str(tmp_path / "none-*"), "--grid", GRID[0], "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "matches no run folder" in r.stderr


def test_one_process_per_sweep_folder(runs, tmp_path):
    lock = RunLock(tmp_path / "busy")
    try:
        with pytest.raises(SweepError, match="another sweep is writing this folder"):
            sweep([str(runs / "a")], GRID, tmp_path / "busy", ray="none", progress=False)
    finally:
        lock.release()


def test_an_exact_sweep_measures_nll_like_an_exact_replay(tmp_path):
    src = tmp_path / "nll"
    record(src, "wc.w_max=400", "session.max_tokens=1200", "session.record_gists=false", scorer="recency")
    sets = ["allocator.cooldown_steps=3"]
    m = sweep([str(src)], sets, tmp_path / "exact", exact=True, ray="none", progress=False)
    assert m["status"] == "complete" and m["mode"] == "exact"
    row = read_results(tmp_path / "exact").to_pylist()[0]
    replay_run(src, tmp_path / "replayed", sets, exact=True, device="cpu")
    want = run_metrics.summary(Run(tmp_path / "replayed"))
    assert want["nll"] is not None and row["nll"] == pytest.approx(want["nll"], rel=1e-6)
    for k in COMPARED:
        assert _same(want[k], row[k]), k
