"""Knob sweeps: every (recording, knob setting) re-planned and measured, on Ray.

`python -m engine sweep --runs GLOB... --grid section.knob=v1,v2,... --out DIR [--exact] [--ray MODE]`
re-plans each recording with each setting of the grid (the cartesian product of the `--grid` knobs'
values) and measures it without writing per-entry rows: fast mode replays the recorded scores
(`studio.fast_replay.replan`, the Knobs lab's path), `--exact` re-runs the scorer and the base model
(`engine.session` into an in-memory sink, measured by `telemetry.run_metrics.summarize`, NLL
included). Each cell gives one row: the run, the knob values, every metric of the registry (the
NLL ones where known), steps, seconds, worker.

Layout of DIR: `sweep.json` (the sweep as last invoked, its status and counts) and `results/part-*.parquet`
(finished cells, written atomically every few cells). A re-run skips the cells already there, so a
killed sweep resumes, and a grid grown by a value runs only the new cells. One process at a time
(a lock on DIR). Every grid value is checked against every recording's config before any cell runs:
a bad one is one line.

Ray is the engine (`--ray local`, the default, starts an embedded Ray on this machine; `auto` or an
address joins an existing cluster; `none` runs the cells here, one after another, for comparison).
Each worker is an actor that keeps the recordings (and, exact, the models) it has loaded. A run may be
a local folder or a URI of any filesystem pyarrow has (`s3://bucket/runs/rec`, `gs://...`,
`file:///...`): a worker copies it once to a local temporary folder.

What runs is planned and checked by `studio/sweep_plan.py` (the grid, the runs, the cells); this
module measures the cells (`CellRunner`), stores their rows and runs the sweep.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from contract.config import RunConfig, apply_overrides
from studio.sweep_plan import Cell, Grid, SweepError, find_runs, local_copy, parse_grid, plan
from telemetry.registry import METRICS

MANIFEST = "sweep.json"
RESULTS = "results"
REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = tuple(m.key for m in METRICS)
# What a cluster's workers need of this folder (the rest is data, environments and caches).
CLUSTER_EXCLUDES = [".venv", ".cache", ".git", "runs", "sample_runs", "bench/.cache", "test-artifacts", "models/*.md"]

# ---------------------------------------------------------------------------------------- cells


class CellRunner:
    """Measures cells, keeping what it loaded (recordings, copies of remote runs, models) for the next
    ones: one per worker (a Ray actor) or one in the driver (`--ray none`)."""

    def __init__(self, exact: bool = False, device: str = "cpu"):
        self.exact, self.device = exact, device
        self._recordings: dict[str, object] = {}
        self._engines: dict[tuple, object] = {}
        self._copies = Path(tempfile.mkdtemp(prefix="mcs-sweep-"))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # Import what every cell runs now, while the worker starts (seconds in a fresh process), not in its
        # first cell: start-up is reported apart from the cells' time.
        import studio.replay  # noqa: F401

    def __call__(self, cell: Cell) -> dict:
        t0 = time.perf_counter()
        path = local_copy(cell.run, self._copies)
        numbers, steps, approx = self._exact(path, cell) if self.exact else self._fast(path, cell)
        row = {"cell": cell.id, "run": cell.run, "setting": ";".join(cell.sets),
               "mode": "exact" if self.exact else "fast", **{k: numbers.get(k) for k in METRIC_KEYS},
               "steps": steps, "approximate_lookups": approx, "wall_s": time.perf_counter() - t0,
               "worker": self.worker}  # fmt: skip
        for s in cell.sets:
            k, _, v = s.partition("=")
            row[k] = v
        return row

    def _fast(self, path: Path, cell: Cell):
        from studio.fast_replay import replan
        from studio.replay import load_recording

        key = str(path)
        if key not in self._recordings:
            if len(self._recordings) >= 2:  # cells come grouped by run: the newest two cover a boundary
                self._recordings.pop(next(iter(self._recordings)))
            self._recordings[key] = load_recording(path)
        rec = self._recordings[key]
        m = replan(rec, apply_overrides(rec.config, list(cell.sets)))
        return m.summary, int(rec.tokens_seen.shape[0]), int(m.stats.approximate_lookups)

    def _exact(self, path: Path, cell: Cell):
        from engine.runtime import build_engine
        from engine.textio import read_text
        from studio.replay import model_spec_of
        from telemetry import run_metrics
        from telemetry.memory import LAB_ENTRIES, ArrowSink

        m = json.loads((path / "manifest.json").read_text())
        base = RunConfig.from_dict(m["config"])
        cfg = apply_overrides(base, list(cell.sets))
        spec = model_spec_of(m.get("model", {}))
        flat = cfg.flat()
        # The engine (model, GistNet, scorer) depends on the model and on every knob but the allocator's,
        # the WC's and the session's, which a session takes from its own config.
        key = (spec, tuple(sorted((k, str(v)) for k, v in flat.items() if k.split(".")[0] not in
                                  ("allocator", "wc", "session"))))  # fmt: skip
        if key not in self._engines:
            self._engines.clear()
            self._engines[key] = build_engine(cfg, spec, self.device)
        engine = self._engines[key]
        src = Path(m["input"]) if Path(m["input"]).is_absolute() else REPO / m["input"]
        sink = ArrowSink(("steps", "entries", "decisions"), columns={"entries": LAB_ENTRIES})
        engine.session(sink, str(src), cfg=cfg, scorer=engine.scorer_for(cfg)).run(read_text(str(src)))
        steps = sink.table("steps")
        s = run_metrics.summarize(steps, sink.table("decisions"), [sink.table("entries")],
                                  block_size=cfg.tree.block_size, tau=cfg.allocator.tau_expand)  # fmt: skip
        return s.numbers, steps.num_rows, 0


# -------------------------------------------------------------------------------------- results


def results_schema(grid: Grid) -> pa.Schema:
    """run, cell, setting, mode, one string column per grid knob (as written), every metric (float64),
    steps, approximate_lookups, wall_s, worker."""
    fields = [("cell", pa.string()), ("run", pa.string()), ("setting", pa.string()), ("mode", pa.string())]
    fields += [(k, pa.string()) for k in grid.knobs]
    fields += [(k, pa.float64()) for k in METRIC_KEYS]
    fields += [("steps", pa.int64()), ("approximate_lookups", pa.int64()), ("wall_s", pa.float64()),
               ("worker", pa.string())]  # fmt: skip
    return pa.schema(fields)


def read_results(out: str | Path) -> pa.Table | None:
    """Every finished cell of the sweep in `out` (one row per cell; parts from grids with other knobs
    are united, their missing knob columns null), or None if there are none yet."""
    parts = sorted((Path(out) / RESULTS).glob("part-*.parquet"))
    tables = []
    for p in parts:
        try:
            tables.append(pq.read_table(p))
        except (OSError, pa.ArrowInvalid) as e:
            raise SweepError(f"{p}: not a readable results part ({str(e).splitlines()[0]})") from None
    if not tables:
        return None
    t = pa.concat_tables(tables, promote_options="default")
    seen, keep = set(), []
    for i, c in enumerate(t.column("cell").to_pylist()):
        if c not in seen:
            seen.add(c)
            keep.append(i)
    return t.take(keep)


def _write_part(out: Path, rows: list[dict], schema: pa.Schema) -> None:
    d = out / RESULTS
    d.mkdir(parents=True, exist_ok=True)
    n = len(list(d.glob("part-*.parquet")))
    path = d / f"part-{n:06d}-{os.getpid()}.parquet"
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)


def _created_at(out: Path) -> str:
    """When the sweep in `out` first started (kept over resumes), else now."""
    try:
        return json.loads((out / MANIFEST).read_text())["created_at"]
    except (OSError, ValueError, KeyError, TypeError):
        return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _save_manifest(out: Path, m: dict) -> None:
    m["updated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(m, indent=2))
    os.replace(tmp, out / MANIFEST)


# ------------------------------------------------------------------------------------ execution


def _ray_results(cells: list[Cell], mode: str, workers: int, exact: bool, device: str, m: dict):
    """Yield each cell's row as it finishes, from a pool of Ray actors (one per worker). Ray's start-up
    (joining or starting it, and the actors) goes in `m["ray_start_s"]`, its shut-down in `m["ray_stop_s"]`."""
    import ray
    from ray.util import ActorPool

    t0 = time.perf_counter()

    if mode == "local":
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 object_store_memory=256 * 1024**2, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # fmt: skip
    else:  # an existing cluster: ship this folder's code (not its data) to the workers
        ray.init(address=mode, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"working_dir": str(REPO), "excludes": CLUSTER_EXCLUDES})  # fmt: skip
    try:
        # An exact cell runs the base model: one GPU each where the cluster has GPUs, else a CPU.
        gpus = exact and ray.cluster_resources().get("GPU", 0) >= 1
        workers = workers or int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1))
        actor = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(CellRunner)
        actors = [actor.remote(exact, "cuda" if gpus else device) for _ in range(workers)]
        ray.get([a.__ray_ready__.remote() for a in actors])  # started: what follows is the sweep itself
        m["ray_start_s"], m["workers"] = round(time.perf_counter() - t0, 3), workers
        yield from ActorPool(actors).map_unordered(lambda a, c: a.__call__.remote(c), cells)
    finally:
        t1 = time.perf_counter()
        ray.shutdown()
        m["ray_stop_s"] = round(time.perf_counter() - t1, 3)


def sweep(run_patterns: list[str], grid_items: list[str], out: str | Path, *, exact: bool = False, ray: str = "local",
          workers: int | None = None, device: str = "cpu", flush_cells: int = 16, flush_seconds: float = 5.0,
          progress: bool = True) -> dict:  # fmt: skip
    """Run the sweep (see the module doc); returns its manifest. SweepError (one line) before any cell
    runs if the runs, the grid or a setting on a run is bad, or another process holds `out`."""
    from telemetry.writer import RunExistsError, RunLock

    grid = parse_grid(grid_items, exact)
    runs = find_runs(run_patterns)
    cells = plan(runs, grid, exact)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file, not a folder")
    try:
        lock = RunLock(out)
    except RunExistsError:
        raise SweepError(f"{out}: another sweep is writing this folder") from None
    try:
        done_t = read_results(out)
        done = set(done_t.column("cell").to_pylist()) if done_t is not None else set()
        todo = [c for c in cells if c.id not in done]
        # Local Ray: a worker per core; a cluster: a worker per CPU (or GPU, exact) it has, found once joined.
        n_workers = 1 if ray == "none" else (workers or (len(os.sched_getaffinity(0)) if ray == "local" else 0))
        m = {"runs": runs, "grid": grid.as_dict(), "mode": "exact" if exact else "fast",
             "engine": "sequential" if ray == "none" else f"ray {ray}", "workers": n_workers or None,
             "cells": len(cells), "skipped": len(cells) - len(todo), "done": len(cells) - len(todo),
             "status": "running", "created_at": _created_at(out),
             "elapsed_s": 0.0, "task_s": 0.0, "ray_start_s": 0.0, "ray_stop_s": 0.0}  # fmt: skip
        _save_manifest(out, m)
        if progress and m["skipped"]:
            print(f"sweep: {m['skipped']} of {len(cells)} cells done already, skipped", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            _run(todo, grid, out, m, ray, n_workers, exact, device, flush_cells, flush_seconds, progress, t0)
        except KeyboardInterrupt as e:
            m.update(status="interrupted", error=str(e) or "interrupted")
            raise
        except Exception as e:
            m.update(status="failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        finally:
            m["elapsed_s"] = round(time.perf_counter() - t0, 3)
            _save_manifest(out, m)
        m["status"] = "complete"
        _save_manifest(out, m)
        return m
    finally:
        lock.release()


def _run(todo, grid, out, m, ray, n_workers, exact, device, flush_cells, flush_seconds, progress, t0) -> None:
    from tqdm import tqdm

    schema = results_schema(grid)
    bar = tqdm(total=m["cells"], initial=m["done"], unit="cell", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc="sweep")  # fmt: skip
    rows, last = [], time.perf_counter()
    if ray == "none":
        runner = CellRunner(exact, device)
        results = (runner(c) for c in todo)
    else:
        results = _ray_results(todo, ray, n_workers, exact, device, m)
    with contextlib.closing(bar):
        for row in results:
            rows.append(row)
            m["task_s"] = round(m["task_s"] + row["wall_s"], 3)
            bar.update(1)
            if len(rows) >= flush_cells or time.perf_counter() - last >= flush_seconds:
                _write_part(out, rows, schema)
                m["done"] += len(rows)
                m["elapsed_s"] = round(time.perf_counter() - t0, 3)
                _save_manifest(out, m)
                rows, last = [], time.perf_counter()
        if rows:
            _write_part(out, rows, schema)
            m["done"] += len(rows)


__all__ = ["Cell", "CellRunner", "Grid", "SweepError", "find_runs", "parse_grid", "plan", "read_results", "sweep"]
