"""ParquetSink: run folder layout, atomic parts, manifest transitions, heartbeat, refusing to overwrite."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from contract import DecisionsRecorded, RunConfig, RunFinished, StepRecorded, make_decisions
from telemetry import LOCK, TABLES, ParquetSink, Run, RunExistsError, SchemaError, writer
from tests.telemetry_fixtures import entries_event, events, lods, record, started


def manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_layout_and_manifest(tmp_path):
    run_dir = tmp_path / "run"
    cfg = RunConfig()
    record(run_dir, events(5), flush_rows=30, parent="../base", changed_knobs={"allocator.cooldown_steps": 3})
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([*TABLES, "manifest.json", LOCK])  # _staging is gone
    parts = sorted(p.name for p in (run_dir / "entries").iterdir())
    assert parts[0] == "part-000001.parquet" and len(parts) > 1
    assert pq.ParquetFile(run_dir / "entries" / parts[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    m = manifest(run_dir)
    assert m["schema_version"] == 1 and m["status"] == "complete" and m["error"] is None
    assert m["config"] == cfg.to_dict() and m["config_flat"] == cfg.flat()
    assert RunConfig.from_dict(m["config"]) == cfg
    assert m["model"]["id"] == "tiny" and m["scorer"] == "recency" and m["input"] == "input.txt"
    assert m["tokens"] == 8 * 32 + 5 and m["steps"] == 5
    assert m["parent"] == "../base" and m["changed_knobs"] == {"allocator.cooldown_steps": 3}
    for key in ("created_at", "updated_at", "heartbeat_at"):
        assert m[key].endswith("Z")
    assert m["tables"]["entries"]["parts"] == len(parts)
    assert m["timings"]["scorer_ms"] == pytest.approx(10.0)


def test_rows_in_step_order_across_parts(tmp_path):
    record(tmp_path / "run", events(9), flush_rows=7)
    for table in ("steps", "entries", "decisions", "nodes"):
        step = Run(tmp_path / "run").table(table, ["step"])["step"].to_numpy()
        assert np.all(np.diff(step) >= 0), table


def test_manifest_transitions(tmp_path):
    evs = events(3, finish=False)
    sink = ParquetSink(tmp_path / "ok")
    sink.emit(evs[0])
    assert manifest(tmp_path / "ok")["status"] == "recording"
    for e in evs[1:]:
        sink.emit(e)
    assert not list((tmp_path / "ok" / "steps").iterdir())  # buffered, not flushed yet
    sink.emit(RunFinished("complete", tokens=100, steps=3))
    m = manifest(tmp_path / "ok")
    assert (m["status"], m["tokens"], m["steps"]) == ("complete", 100, 3)
    assert Run(tmp_path / "ok").n_steps() == 3
    sink.close()  # a no-op after RunFinished
    assert manifest(tmp_path / "ok")["status"] == "complete"
    with pytest.raises(RuntimeError, match="after the run was closed"):
        sink.emit(evs[1])

    sink = ParquetSink(tmp_path / "bad")
    for e in evs:
        sink.emit(e)
    sink.emit(RunFinished("failed", tokens=64, steps=2, error="ValueError: boom"))
    m = manifest(tmp_path / "bad")
    assert (m["status"], m["error"]) == ("failed", "ValueError: boom")
    assert Run(tmp_path / "bad").n_steps() == 3  # what was recorded before the failure is kept

    with pytest.raises(KeyError), ParquetSink(tmp_path / "ctx") as sink:  # no RunFinished: close() in __exit__
        for e in evs:
            sink.emit(e)
        raise KeyError("oops")
    m = manifest(tmp_path / "ctx")
    assert m["status"] == "failed" and "KeyError" in m["error"]
    assert Run(tmp_path / "ctx").n_steps() == 3

    sink = ParquetSink(tmp_path / "closed")
    sink.emit(evs[0])
    sink.close()
    assert manifest(tmp_path / "closed")["status"] == "failed"
    assert "before RunFinished" in manifest(tmp_path / "closed")["error"]


def test_failed_write_leaves_no_partial_part(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    evs = events(3, finish=False)
    sink = ParquetSink(run_dir)
    for e in evs:
        sink.emit(e)
    real = pq.write_table

    def half_then_fail(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(writer.pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        sink.flush()
    for table in TABLES:
        assert not list((run_dir / table).iterdir()), table
    assert not [p for p in (run_dir / "_staging").iterdir() if p.suffix == ".parquet"]
    assert Run(run_dir).n_steps() == 0 and not Run(run_dir).problems

    monkeypatch.setattr(writer.pq, "write_table", real)  # the buffer survived: the next flush writes it all
    sink.emit(RunFinished("complete", tokens=1, steps=3))
    run = Run(run_dir)
    assert run.n_steps() == 3 and run.status == "complete" and not run.problems


def test_final_flush_failure_marks_failed(tmp_path, monkeypatch):
    sink = ParquetSink(tmp_path / "run")
    for e in events(2, finish=False):
        sink.emit(e)

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(writer.pq, "write_table", fail)
    sink.emit(RunFinished("complete", tokens=1, steps=2))
    m = manifest(tmp_path / "run")
    assert m["status"] == "failed" and "final flush failed: OSError: disk full" in m["error"]


def test_flush_by_time_and_heartbeat(tmp_path):
    run_dir = tmp_path / "run"
    sink = ParquetSink(run_dir, flush_seconds=0.05, heartbeat_seconds=0.01)
    sink.emit(started())
    beats = {manifest(run_dir)["heartbeat_at"]}
    for t in range(4):
        time.sleep(0.02)
        sink.emit(entries_event(t, lods(t)))
        beats.add(manifest(run_dir)["heartbeat_at"])
    assert len(beats) >= 3  # rewritten while events arrive, without any flush by rows
    assert list((run_dir / "entries").iterdir())  # flushed by time
    assert manifest(run_dir)["status"] == "recording"
    sink.close()


def test_refuses_to_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    record(run_dir, events(3))
    with pytest.raises(RunExistsError, match="already holds a complete run"):
        ParquetSink(run_dir)
    rec = ParquetSink(tmp_path / "live")
    rec.emit(started())
    with pytest.raises(RunExistsError, match="another recorder"):
        ParquetSink(tmp_path / "live")
    rec._lock.release()  # as if the recorder were killed: the kernel drops its lock, the manifest stays
    with pytest.raises(RunExistsError, match="already holds a recording run"):
        ParquetSink(tmp_path / "live")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    with pytest.raises(RunExistsError, match="unreadable manifest"):
        ParquetSink(tmp_path / "junk")

    record(run_dir, events(2), overwrite=True)  # overwrite clears the old parts
    assert Run(run_dir).n_steps() == 2
    record(tmp_path / "failed", events(4, finish=False))  # closed without RunFinished -> failed
    with pytest.raises(RunExistsError, match="already holds a failed run; pass --overwrite"):
        ParquetSink(tmp_path / "failed")  # what it recorded is not deleted without asking
    assert Run(tmp_path / "failed").n_steps() == 4
    record(tmp_path / "failed", events(1), overwrite=True)
    assert Run(tmp_path / "failed").n_steps() == 1
    empty = ParquetSink(tmp_path / "empty")
    empty.emit(started())
    empty.close()  # failed with nothing recorded: may be replaced silently
    record(tmp_path / "empty", events(2))
    assert Run(tmp_path / "empty").n_steps() == 2


def test_a_second_recorder_is_refused_while_the_first_holds_the_lock(tmp_path):
    first = ParquetSink(tmp_path / "run")
    with pytest.raises(RunExistsError, match=rf"another recorder \(pid {os.getpid()}\) is writing this run"):
        ParquetSink(tmp_path / "run")  # refused before anything was written or deleted
    first.emit(started())
    first.close("complete", None)
    with pytest.raises(RunExistsError, match="already holds a complete run"):
        ParquetSink(tmp_path / "run")  # the lock is free again; the manifest now speaks
    # A recorder that never started (e.g. its model failed to load) leaves no folder behind.
    ParquetSink(tmp_path / "never").close()
    assert not (tmp_path / "never").exists()


def test_bad_events(tmp_path):
    sink = ParquetSink(tmp_path / "run")
    with pytest.raises(RuntimeError, match="before RunStarted"):
        sink.emit(entries_event(0, lods(0)))
    sink.emit(started())
    e = entries_event(0, lods(0))
    bad = type(e)(**{**e.__dict__, "cost": np.full(e.lod.size, 2**40)})
    with pytest.raises(SchemaError, match="entries: column 'cost' does not fit int32"):
        sink.emit(bad)
    step = StepRecorded(0, 10, 1, 1, 1, 10, 0, 0, 0, None, None, None, 0.0, 0.0, 0.0, 0.0)
    sink.emit(step)
    with pytest.raises(TypeError, match="cannot record"):
        sink.emit(object())
    # Decision codes become their public names only at flush: a code with no name is refused at emit.
    d = make_decisions({"node_id": [1], "lod_from": [1], "lod_to": [0], "action": [7], "score": [0.5],
                        "outcome": [0], "forced": [False], "seq": [0]})  # fmt: skip
    with pytest.raises(SchemaError, match="code outside"):
        sink.emit(DecisionsRecorded(0, 0, d))
    sink.close("complete")
    assert Run(tmp_path / "run").n_steps() == 1
    assert Run(tmp_path / "run").n_rows("decisions") == 0


def test_refuses_folders_that_look_like_someone_elses(tmp_path):
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "mine.txt").write_text("keep me")
    with pytest.raises(RunExistsError, match="no manifest"):
        ParquetSink(tmp_path)
    assert (tmp_path / "nodes" / "mine.txt").exists()


def test_decisions_from_both_buffer_paths_flush_together(tmp_path):
    # One event takes the fast path (codes kept until the flush), the next the checked path (its
    # seq is int64, not the schema's int32): both must land, with their public names.
    import dataclasses

    sink = ParquetSink(tmp_path / "run")
    sink.emit(started())
    cols = {"node_id": [1], "lod_from": [1], "lod_to": [0], "action": [0], "score": [0.5], "outcome": [0],
            "forced": [False], "seq": [0]}  # fmt: skip
    sink.emit(DecisionsRecorded(0, 0, make_decisions(cols)))
    odd = make_decisions({**cols, "node_id": [2], "action": [1], "outcome": [3]})
    sink.emit(DecisionsRecorded(1, 0, dataclasses.replace(odd, seq=np.array([0], np.int64))))
    sink.close("complete")
    run = Run(tmp_path / "run")
    assert run.manifest["status"] == "complete"
    rows = run.table("decisions", columns=["step", "action", "outcome"]).to_pylist()
    assert rows == [{"step": 0, "action": "expand", "outcome": "applied"},
                    {"step": 1, "action": "collapse", "outcome": "illegal"}]  # fmt: skip


def test_annotate_adds_manifest_fields_before_and_after_the_run(tmp_path):
    evs = events(3)
    sink = ParquetSink(tmp_path / "run")
    sink.annotate("scenario", {"name": "passkey", "needle_span": [40, 60]})
    sink.emit(evs[0])
    assert manifest(tmp_path / "run")["scenario"]["needle_span"] == [40, 60]
    for e in evs[1:]:
        sink.emit(e)
    sink.annotate("scenario", {"name": "passkey", "needle_span": [40, 60], "result": {"recovered": True}})
    m = manifest(tmp_path / "run")
    assert m["status"] == "complete" and m["scenario"]["result"] == {"recovered": True}
    with pytest.raises(ValueError, match="reserved"):
        sink.annotate("status", "complete")
