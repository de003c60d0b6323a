"""`python -m telemetry`: metrics JSON, export (CSV / Parquet, projected and filtered), list, and errors.

Every command runs in a subprocess, as a user or a script would run it: output on stdout, one
`error: ...` line on stderr and exit code 2 for anything a user can get wrong. The run is recorded
once per module from the hand-made events of `tests/telemetry_fixtures.py` (no model, no engine).

Each subprocess spends ~0.4 s importing pyarrow, numpy and duckdb, so all the commands of the module
are started together, a few at a time, by one fixture (`res`); the tests then check their results.
For the same reason the error cases call `telemetry.cli.main` in-process (what `__main__` runs);
a few of them (`ERRORS_IN_SUBPROCESS`) also run in a subprocess, to check the real exit path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from contract import RunConfig, apply_overrides
from telemetry import Run
from telemetry.cli import main
from tests.telemetry_fixtures import events, record

REPO = Path(__file__).resolve().parents[1]
N_STEPS = 12
DESIGN_METRICS = ("swap_rate", "ping_pongs_per_edit", "worst_nodes", "locality", "adjacent_share", "sequential_score")
DESIGN_METRICS += ("residency_mean", "residency_p95", "utilization", "coherence", "delta_nll_full", "delta_nll_recency")

# The whole `metrics` command, run as `python -m telemetry` runs it, then the modules it loaded.
NO_TORCH = """
import runpy, sys
sys.argv = ['telemetry', 'metrics', sys.argv[1]]
try:
    runpy.run_module('telemetry', run_name='__main__')
except SystemExit as e:
    assert e.code == 0, e.code
# pandas is not checked: pyarrow itself imports it whenever it is installed (the app needs it).
bad = {'torch', 'transformers', 'streamlit'} & {m.split('.')[0] for m in sys.modules}
assert not bad, bad
"""

# name -> arguments of `python -m telemetry` ({run}, {root}, ... are filled in by the fixture)
OK = {
    "metrics": ["metrics", "{run}"],
    "metrics_osc1": ["metrics", "{run}", "--osc-window", "1"],
    "metrics_bad_part": ["metrics", "{bad_part}"],
    "csv_stdout": ["export", "{run}", "--table", "decisions", "--out", "-"],
    "csv_filtered": ["export", "{run}", "--table", "entries", "--columns", "step,lod, score"]
    + ["--where", "step >= 10 AND lod = 0", "--out", "-"],
    "csv_file": ["export", "{run}", "--table", "steps", "--out", "{out}/steps.csv"],
    "csv_steps_stdout": ["export", "{run}", "--table", "steps", "--out", "-"],
    "pq_steps": ["export", "{run}", "--table", "steps", "--out", "{out}/steps.parquet"],  # the suffix picks Parquet
    "pq_decisions": ["export", "{run}", "--table", "decisions", "--out", "{out}/decisions.parquet"],
    "pq_nll": ["export", "{run}", "--table", "steps", "--columns", "step,nll", "--where", "nll IS NOT NULL"]
    + ["--format", "parquet", "--out", "{out}/nll.data"],
    "list": ["list", "{listing}"],
}
ERRORS = {
    "missing_run": (["metrics", "{root}/nope"], "not a run folder (no such directory)"),
    "not_a_run": (["metrics", "{root}"], "not a run (no manifest.json)"),
    "newer_schema": (["metrics", "{future}"], "schema_version 99 is newer than this reader's"),
    "export_missing_run": (["export", "{root}/nope", "--table", "steps", "--out", "-"], "no such directory"),
    "unknown_table": (["export", "{run}", "--table", "bogus", "--out", "-"], "unknown table 'bogus'; known: steps"),
    "bad_column": (["export", "{run}", "--table", "steps", "--columns", "step,bogus", "--out", "-"], "column 'bogus'"),
    "bad_where_column": (["export", "{run}", "--table", "steps", "--where", "stp > 1", "--out", "-"], "query failed"),
    "bad_where_syntax": (["export", "{run}", "--table", "steps", "--where", "step >=", "--out", "-"], "query failed"),
    "parquet_to_stdout": (["export", "{run}", "--table", "steps", "--format", "parquet", "--out", "-"], "CSV only"),
    "no_out_dir": (["export", "{run}", "--table", "steps", "--out", "{root}/no/x.csv"], "no such directory"),
    "no_out": (["export", "{run}", "--table", "steps"], "required: --out"),
    "list_missing": (["list", "{root}/nope"], "no such directory"),
    "list_a_run": (["list", "{run}"], "is a run folder"),
}
ERRORS_IN_SUBPROCESS = ("missing_run", "newer_schema", "bad_where_syntax", "no_out")


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    cfg = apply_overrides(RunConfig(), ["allocator.tau_expand=0.05"])  # the fixture's scores reach 0.125
    record(root / "run", events(N_STEPS, config=cfg), flush_rows=40)  # several parts per table
    other = tmp_path_factory.mktemp("other")
    p = {"root": root, "run": root / "run", "out": other / "out", "listing": other / "listing"}
    p["bad_part"], p["future"] = other / "bad_part", other / "future"
    p["out"].mkdir()
    shutil.copytree(p["run"], p["bad_part"])
    (p["bad_part"] / "decisions" / "part-999999.parquet").write_bytes(b"not parquet")
    shutil.copytree(p["run"], p["future"])
    m = json.loads((p["future"] / "manifest.json").read_text())
    (p["future"] / "manifest.json").write_text(json.dumps({**m, "schema_version": 99}))
    shutil.copytree(p["run"], p["listing"] / "a")
    (p["listing"] / "b_not_a_run").mkdir()
    (p["listing"] / "b_not_a_run" / "notes.txt").write_text("hi")
    return p


@pytest.fixture(scope="module")
def res(paths) -> dict[str, subprocess.CompletedProcess]:
    cmds = {k: [sys.executable, "-m", "telemetry", *(a.format(**paths) for a in v)] for k, v in OK.items()}
    for k in ERRORS_IN_SUBPROCESS:
        cmds[k] = [sys.executable, "-m", "telemetry", *(a.format(**paths) for a in ERRORS[k][0])]
    cmds["no_torch"] = [sys.executable, "-c", NO_TORCH, str(paths["run"])]

    def go(cmd):
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        return dict(zip(cmds, pool.map(go, cmds.values()), strict=True))


def ok(res, name: str) -> str:
    out = res[name]
    assert out.returncode == 0, out.stderr
    return out.stdout


def _csv(text: str) -> pa.Table:
    return pacsv.read_csv(io.BytesIO(text.encode()))


# ------------------------------------------------------------------------------------- metrics


def test_metrics_prints_the_summary_as_json(res, paths):
    got = json.loads(ok(res, "metrics"))
    want = json.loads(json.dumps(Run(paths["run"]).summary()))  # the library's numbers, JSON-typed
    assert got == {**want, "problems": []}
    for key in DESIGN_METRICS:  # every metric of DESIGN section 4, with a value on this run
        assert got[key] is not None, key
    assert got["steps"] == N_STEPS and got["status"] == "complete" and got["run"] == "run"
    assert got["delta_nll_full"] == pytest.approx(0.5, abs=1e-5)
    assert res["metrics"].stderr == ""
    assert json.loads(ok(res, "metrics_osc1"))["ping_pongs"] < got["ping_pongs"]


def test_cli_path_never_imports_torch(res):
    assert json.loads(ok(res, "no_torch"))["steps"] == N_STEPS


def test_bad_part_is_a_warning_and_exit_status_3(res):
    out = res["metrics_bad_part"]
    assert out.returncode == 3, out.stderr  # the metrics are printed, from the parts that were read
    assert out.stderr.startswith("warning: skipped ") and "part-999999.parquet" in out.stderr
    assert "part-999999.parquet" in json.loads(out.stdout)["problems"][0]


# -------------------------------------------------------------------------------------- export


def test_export_csv_to_stdout_whole_table(res, paths):
    want = Run(paths["run"]).table("decisions")
    got = _csv(ok(res, "csv_stdout"))
    assert got.column_names == want.column_names and got.num_rows == want.num_rows
    assert got["node_id"].to_pylist() == want["node_id"].to_pylist()
    assert got["action"].to_pylist() == want["action"].to_pylist()  # public names, not codes


def test_export_csv_projected_and_filtered(res, paths):
    full = Run(paths["run"]).table("entries")
    got = _csv(ok(res, "csv_filtered"))
    keep = pc.and_(pc.greater_equal(full["step"], 10), pc.equal(full["lod"], 0))
    assert got.column_names == ["step", "lod", "score"]
    assert 0 < got.num_rows == pc.sum(keep).as_py() < full.num_rows
    assert set(got["step"].to_pylist()) == {10, 11}


def test_export_csv_file_matches_stdout(res, paths):
    text = (paths["out"] / "steps.csv").read_text()
    assert ok(res, "csv_file") == "" and text == ok(res, "csv_steps_stdout")
    assert len(text.splitlines()) == 1 + N_STEPS  # header + one row per step


def test_export_parquet_round_trip(res, paths):
    for table in ("steps", "decisions"):
        ok(res, f"pq_{table}")
        got, want = pq.read_table(paths["out"] / f"{table}.parquet"), Run(paths["run"]).table(table)
        assert got.schema.names == want.schema.names and got.schema.types == want.schema.types, table
        assert got.equals(want), table
    ok(res, "pq_nll")
    got = pq.read_table(paths["out"] / "nll.data")  # --format wins over the suffix
    assert got.schema == pa.schema([pa.field("step", pa.int32()), pa.field("nll", pa.float32())])
    assert got.num_rows == N_STEPS // 2 and got["nll"].null_count == 0


def test_export_leaves_no_temporary_files(res, paths):
    assert all(res[k].returncode == (3 if k == "metrics_bad_part" else 0) for k in OK)
    assert sorted(p.name for p in paths["out"].iterdir()) == [
        "decisions.parquet",
        "nll.data",
        "steps.csv",
        "steps.parquet",
    ]


# ---------------------------------------------------------------------------------------- list


def test_list_one_json_line_per_run(res):
    rows = [json.loads(x) for x in ok(res, "list").splitlines()]
    assert [r["name"] for r in rows] == ["a", "b_not_a_run"]
    a, b = rows
    assert a["status"] == "complete" and a["steps"] == N_STEPS and a["tokens"] > 0 and a["size_bytes"] > 1000
    assert a["problem"] is None and a["scorer"] == "recency"
    assert b["status"] == "invalid" and "no manifest.json" in b["problem"]


# -------------------------------------------------------------------------------------- errors


def _check_error(rc: int, stdout: str, stderr: str, text: str) -> None:
    assert rc == 2, (rc, stderr)
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert text in stderr, stderr


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line_and_exit_2(case, paths, capsys):
    args, text = ERRORS[case]
    rc = main([a.format(**paths) for a in args])
    out = capsys.readouterr()
    _check_error(rc, out.out, out.err, text)
    assert not (paths["root"] / "no").exists()


@pytest.mark.parametrize("case", ERRORS_IN_SUBPROCESS)
def test_user_errors_in_a_subprocess(case, res):
    out = res[case]
    _check_error(out.returncode, out.stdout, out.stderr, ERRORS[case][1])
