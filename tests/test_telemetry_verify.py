"""Reader against parts and manifests that are not what they claim: foreign, duplicated, extended or
linked parts, bad manifest fields, symbolic links in a run root, and tables cut where `steps` ends."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract import StepRecorded
from telemetry import Run, RunReadError, cli, list_runs, run_metrics
from tests.telemetry_fixtures import events, record

N = 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two complete runs of the same shape (so their parts look alike), several parts per table."""
    root = tmp_path_factory.mktemp("verify")
    record(root / "a", events(N), flush_rows=25)
    record(root / "b", events(N), flush_rows=25)
    return root


def _copy(runs, tmp_path, name="a"):
    shutil.copytree(runs / name, tmp_path / name)
    return tmp_path / name


def _n(run: Run, table: str) -> int:
    return run.table(table).num_rows


def test_parts_carry_run_id_table_and_number(runs):
    m = json.loads((runs / "a" / "manifest.json").read_text())
    assert len(m["run_id"]) == 32 and m["run_id"] != json.loads((runs / "b" / "manifest.json").read_text())["run_id"]
    assert m["tables"]["steps"]["columns"][0] == "step"
    part = sorted((runs / "a" / "entries").iterdir())[1]
    meta = pq.read_metadata(part).metadata
    assert meta[b"mcs.run_id"].decode() == m["run_id"] and meta[b"mcs.table"] == b"entries"
    assert meta[b"mcs.part"].decode() == str(int(part.stem.split("-")[1]))
    assert not Run(runs / "a").problems and _n(Run(runs / "a"), "steps") == N


@pytest.mark.parametrize("kind", ["foreign", "duplicated", "extra_column", "no_metadata", "other_table"])
def test_a_part_that_is_not_this_runs_is_refused_and_named(runs, tmp_path, kind):
    run_dir = _copy(runs, tmp_path)
    good = Run(run_dir)
    n_steps, n_entries, n_parts = _n(good, "steps"), _n(good, "entries"), len(good.parts("entries"))
    k = n_parts + 1
    target = run_dir / "entries" / f"part-{k:06d}.parquet"
    if kind == "foreign":  # the same part number from another run
        target = run_dir / "entries" / "part-000002.parquet"
        shutil.copy(runs / "b" / "entries" / "part-000002.parquet", target)
        why, n_parts, n_entries = "a part of another run", n_parts - 1, n_entries - pq.read_metadata(target).num_rows
    elif kind == "duplicated":  # a copy under the next free name
        shutil.copy(run_dir / "entries" / "part-000001.parquet", target)
        why = f"holds part 1 of entries, not part {k} (a copy or a renamed part)"
    elif kind == "extra_column":
        t = pq.read_table(run_dir / "entries" / "part-000001.parquet")
        meta = dict(t.schema.metadata) | {b"mcs.part": str(k).encode()}
        t = t.append_column("bogus", pa.array([1] * t.num_rows)).replace_schema_metadata(meta)
        pq.write_table(t, target)
        why = "has column 'bogus', which this run's recorder did not write"
    elif kind == "no_metadata":
        pq.write_table(pq.read_table(run_dir / "entries" / "part-000001.parquet").replace_schema_metadata(None), target)
        why = "not written by this run's recorder (no run id in its metadata)"
    else:  # a steps part dropped into another table's folder is refused for its columns first
        shutil.copy(run_dir / "lens_attention" / "part-000001.parquet", target)
        why = "not a valid entries part"
    run = Run(run_dir)
    assert _n(run, "entries") == n_entries and len(run.parts("entries")) == n_parts
    assert _n(run, "steps") == n_steps
    assert len(run.problems) == 1 and str(target) in run.problems[0] and why in run.problems[0], run.problems
    with pytest.raises(RunReadError, match=target.name):
        run.table("entries", strict=True)


def test_a_run_without_run_id_reads_parts_without_metadata(runs, tmp_path):
    """Runs recorded before parts carried a run id (the shipped samples) stay readable."""
    run_dir = _copy(runs, tmp_path)
    m = json.loads((run_dir / "manifest.json").read_text())
    del m["run_id"]
    (run_dir / "manifest.json").write_text(json.dumps(m))
    for p in (run_dir / "steps").iterdir():
        pq.write_table(pq.read_table(p).replace_schema_metadata(None), p)
    run = Run(run_dir)
    assert _n(run, "steps") == N and not run.problems


def test_odd_files_under_part_names_are_named(runs, tmp_path):
    run_dir = _copy(runs, tmp_path)
    n = len(list((run_dir / "steps").iterdir()))
    (run_dir / "steps" / f"part-{n + 1:06d}.parquet").mkdir()
    (run_dir / "steps" / "notes.parquet").write_bytes(b"PAR1")
    (run_dir / "steps" / "part-000098.parquet.tmp").write_bytes(b"PAR1")  # not *.parquet: ignored
    run = Run(run_dir)
    assert _n(run, "steps") == N
    assert sorted(p.split("/")[-1] for p in run.problems) == [
        "notes.parquet: not a part name (part-NNNNNN.parquet)",
        f"part-{n + 1:06d}.parquet: not a regular file",
    ]


def test_a_truncated_steps_part_is_named_and_the_tables_are_cut_at_the_gap(runs, tmp_path):
    run_dir = _copy(runs, tmp_path)
    last = sorted((run_dir / "steps").iterdir())[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    run = Run(run_dir)
    steps = run.table("steps")
    assert 0 < steps.num_rows < N and any("not a readable Parquet file" in p and last.name in p for p in run.problems)
    top = run.last_step()
    assert top == max(steps["step"].to_pylist())
    for table in ("entries", "decisions", "nodes", "gists", "lens_attention"):
        assert max(run.table(table, ["step"])["step"].to_pylist()) <= top, table
    assert run_metrics.summary(run)["steps"] == steps.num_rows


def test_symlinked_parts_and_table_folders_are_not_followed(runs, tmp_path):
    run_dir = _copy(runs, tmp_path)
    n = len(list((run_dir / "entries").iterdir()))
    os.symlink(runs / "a" / "entries" / "part-000001.parquet", run_dir / "entries" / f"part-{n + 1:06d}.parquet")
    shutil.rmtree(run_dir / "nodes")
    os.symlink(runs / "b" / "nodes", run_dir / "nodes")
    run = Run(run_dir)
    assert _n(run, "entries") == _n(Run(runs / "a"), "entries")
    assert _n(run, "nodes") == 0
    assert sorted(p.split(": ")[1] for p in run.problems) == ["a symbolic link, not followed"] * 2


def test_symlinks_in_a_run_root_are_listed_invalid_and_not_walked(runs, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(runs / "a", root / "a")
    os.symlink(runs / "b", root / "link_to_b")
    os.symlink("/etc", root / "a" / "etc")  # a link inside a run: not walked to size the run
    os.symlink("/etc/hostname", root / "a" / "hostname")
    size = {r.name: r for r in list_runs(runs)}["a"].size_bytes
    listed = {r.name: r for r in list_runs(root)}
    assert listed["a"].status == "complete" and listed["a"].size_bytes == size
    assert listed["link_to_b"].status == "invalid" and listed["link_to_b"].size_bytes == 0
    assert listed["link_to_b"].problem.endswith("link_to_b: a symbolic link, not followed")


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("tokens", "lots", "field 'tokens' is 'lots', expected a whole number >= 0"),
        ("steps", -3, "field 'steps' is -3, expected a whole number >= 0"),
        ("config_flat", [1], "field 'config_flat' is [1], expected an object"),
        ("status", "done", "field 'status' is 'done', expected one of recording, complete, failed"),
        ("schema_version", 0, "schema_version 0 is not a version (1 to 1)"),
        ("schema_version", True, "no integer schema_version"),
    ],
)
def test_a_bad_manifest_field_makes_only_that_run_invalid(runs, tmp_path, capsys, field, value, why):
    root = tmp_path / "root"
    shutil.copytree(runs / "a", root / "bad")
    shutil.copytree(runs / "b", root / "good")
    m = json.loads((root / "bad" / "manifest.json").read_text())
    (root / "bad" / "manifest.json").write_text(json.dumps({**m, field: value}))
    listed = {r.name: r for r in list_runs(root)}
    assert listed["good"].status == "complete" and listed["good"].steps == N
    assert listed["bad"].status == "invalid" and str(root / "bad" / "manifest.json") in listed["bad"].problem
    assert why in listed["bad"].problem and "\n" not in listed["bad"].problem
    with pytest.raises(RunReadError, match="manifest.json: "):
        Run(root / "bad")
    assert cli.main(["list", str(root)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["status"]) for r in rows] == [("bad", "invalid"), ("good", "complete")]
    assert cli.main(["metrics", str(root / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err


def test_a_bad_knob_in_the_manifest_is_named(runs, tmp_path, capsys):
    run_dir = _copy(runs, tmp_path)
    m = json.loads((run_dir / "manifest.json").read_text())
    m["config_flat"]["tree.block_size"] = "abc"
    (run_dir / "manifest.json").write_text(json.dumps(m))
    assert cli.main(["metrics", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tree.block_size" in err and "'abc'" in err


def test_a_stopped_run_ends_every_table_at_the_last_steps_row(tmp_path):
    """A recording that stops mid-step (killed, or failed) leaves rows of a step with no steps row."""
    evs = events(N, finish=False)
    assert isinstance(evs[-1], StepRecorded)
    sink = record(tmp_path / "run", evs[:-1], flush_rows=25)  # step N-1 never gets its steps row
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["steps"] == N - 1 == sink.manifest["steps"]
    raw = pq.read_table(tmp_path / "run" / "entries")  # what a reader that does not cut would see
    assert max(raw["step"].to_pylist()) == N - 1
    run = Run(tmp_path / "run")
    assert run.last_step() == N - 2 and _n(run, "steps") == N - 1
    for table in ("entries", "decisions", "nodes", "gists", "lens_attention", "attention"):
        assert max(run.table(table, ["step"])["step"].to_pylist()) == N - 2, table
    assert max(run.lod_timeline(1000, 1000)["step_hi"].to_pylist()) == N - 2
    chunks = list(run.batches("entries", ["step", "lod"], rows=1))
    seen = [sorted(set(c["step"].to_pylist())) for c in chunks]
    assert sum(seen, []) == list(range(N - 1))  # whole steps, in order, cut at the last steps row
    assert run_metrics.summary(run)["steps"] == N - 1


def test_batches_hold_whole_steps_and_equal_the_table(runs):
    run = Run(runs / "a")
    whole = run.table("entries", ["step", "node_id", "lod"])
    for rows in (1, 7, 40, 10**9):
        chunks = list(run.batches("entries", ["step", "node_id", "lod"], rows=rows))
        assert pa.concat_tables(chunks).equals(whole)
        firsts = [c["step"][0].as_py() for c in chunks]
        lasts = [c["step"][-1].as_py() for c in chunks]
        assert all(a < b for a, b in zip(lasts, firsts[1:], strict=False))  # no step split in two


def test_a_missing_part_is_named(runs, tmp_path):
    run_dir = _copy(runs, tmp_path)
    n = len(list((run_dir / "steps").iterdir()))
    (run_dir / "steps" / "part-000002.parquet").unlink()
    (run_dir / "steps" / f"part-{n:06d}.parquet").unlink()  # the last one: the manifest's count tells
    run = Run(run_dir)
    assert 0 < _n(run, "steps") < N
    assert run.problems == [
        f"{run_dir / 'steps'}: missing part-000002.parquet, part-{n:06d}.parquet (the recorder wrote parts 1 to {n})"
    ]
