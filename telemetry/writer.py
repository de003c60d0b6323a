"""`ParquetSink`: records a session's events into a run folder of Parquet part files.

Layout of a run folder:

    manifest.json          schema version, status, config, model, timings (rewritten atomically)
    steps/part-000001.parquet, entries/..., decisions/..., attention/..., lens_attention/..., nodes/...
    _staging/              parts are written whole here, then moved into their table folder

Events are buffered per table, column by column, and checked against the schema when they arrive
(the conversion, its fast path and the buffered parts are `telemetry.event_columns`). Buffers are
flushed together, each table to one new part, when `flush_rows` rows are buffered or `flush_seconds`
have passed. A part is written in `_staging/` and moved in with `os.replace`, so a reader never sees
a half-written file and a killed recorder loses at most its unflushed buffer. No fsync: this guards
against a killed process, not a power cut. Every part carries its run's id (also in the manifest),
its table and its sequence number as Parquet key-value metadata, so that the reader can refuse a
part copied in from another run, duplicated under another name or moved to another table.

The run folder's lock (`RunLock`) and its manifest's atomic write are here too: both belong to the
one recorder of a run. This module does not turn events into columns (`telemetry.event_columns`),
does not read runs back (see `telemetry/reader.py`) and never imports torch.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.events import DecisionsRecorded, Event, RunFinished, RunStarted, StepRecorded
from telemetry.event_columns import _Codes, _columns, _concat, _decision_columns, _fast_columns
from telemetry.schema import SCHEMA_VERSION, SCHEMAS, TABLES, columns_to_arrays, validate

MANIFEST = "manifest.json"
STAGING = "_staging"
# Key-value metadata of every part file: the run it belongs to, its table and its sequence number (the
# number in its name). The reader refuses a part whose keys disagree with its run, folder or name.
PART_RUN_ID, PART_TABLE, PART_SEQ = "mcs.run_id", "mcs.table", "mcs.part"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def _json_default(o: object) -> object:
    # Model metadata may carry numpy scalars or paths; everything else is a bug worth raising on.
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"manifest value of type {type(o).__name__} is not JSON serialisable")


def write_manifest(run_dir: Path, manifest: dict) -> None:
    """Write manifest.json atomically: a reader sees the old one or the new one, never half of one."""
    tmp = run_dir / STAGING / (MANIFEST + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(manifest, indent=1, default=_json_default) + "\n")
    os.replace(tmp, run_dir / MANIFEST)


class RunExistsError(FileExistsError):
    """The run folder already holds a recording (or an unreadable manifest) and overwrite was not asked,
    or another recorder holds its lock."""


LOCK = ".recorder.lock"  # in the run folder; its content is the holder's pid (for the error message)


class RunLock:
    """An exclusive, non-blocking lock on a run folder for one recorder's lifetime (`flock` on
    `<run>/.recorder.lock`; the kernel releases it if the process dies). The folder is created if
    missing; `release()` removes it again if nothing but the lock file is in it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = -1
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunExistsError(f"{run_dir}: another recorder (pid {holder}) is writing this run") from None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        if self._created and {p.name for p in self.run_dir.iterdir()} == {LOCK}:
            (self.run_dir / LOCK).unlink(missing_ok=True)  # nothing was recorded: leave no trace
            self.run_dir.rmdir()
        os.close(fd)  # closing the descriptor releases the lock


RESERVED_KEYS = frozenset(
    {
        "schema_version",
        "run_id",
        "status",
        "config",
        "config_flat",
        "model",
        "scorer",
        "input",
        "created_at",
        "updated_at",
        "heartbeat_at",
        "tokens",
        "steps",
        "error",
        "tables",
        "timings",
    }
)


class ParquetSink:
    """Engine `Sink` that writes a run folder. Use `close()` in a finally block (or `with`)."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        flush_rows: int = 50_000,
        flush_seconds: float = 5.0,
        heartbeat_seconds: float = 2.0,
        overwrite: bool = False,
        parent: str | None = None,
        changed_knobs: dict | None = None,
        extra: dict | None = None,
    ) -> None:
        if flush_rows < 1 or flush_seconds <= 0 or heartbeat_seconds <= 0:
            raise ValueError("flush_rows must be >= 1, flush_seconds and heartbeat_seconds > 0")
        self.run_dir = Path(run_dir)
        self.flush_rows, self.flush_seconds, self.heartbeat_seconds = flush_rows, flush_seconds, heartbeat_seconds
        # The lock comes first, so that two recorders started together cannot both pass the check below.
        self._lock = RunLock(self.run_dir)
        try:
            self._check_free(overwrite)
        except BaseException:
            self._lock.release()
            raise
        self.run_id = uuid.uuid4().hex  # stamped into the manifest and every part file
        self._extra = {"parent": parent, "changed_knobs": changed_knobs, **(extra or {})}  # e.g. replay mode
        # per table, per column: parts that are numpy arrays of the field's dtype or typed Arrow arrays
        self._buf: dict[str, dict[str, list]] = {t: {c: [] for c in SCHEMAS[t].names} for t in TABLES}
        self._rows = dict.fromkeys(TABLES, 0)  # buffered rows per table
        self._parts = dict.fromkeys(TABLES, 0)  # parts written per table
        self._written = dict.fromkeys(TABLES, 0)  # rows written per table
        self._timings = {"tree_ms": 0.0, "scorer_ms": 0.0, "allocator_ms": 0.0, "model_ms": 0.0}
        self.manifest: dict | None = None
        self._finished = False
        self._t0 = self._last_flush = self._last_beat = time.monotonic()

    # ----------------------------------------------------------------------------------- setup

    def _check_free(self, overwrite: bool) -> None:
        path = self.run_dir / MANIFEST
        has_parts = any(any((self.run_dir / t).glob("*")) for t in TABLES if (self.run_dir / t).is_dir())
        if overwrite:
            pass
        elif path.exists():
            try:
                status = json.loads(path.read_text()).get("status")
            except (OSError, ValueError, AttributeError):
                raise RunExistsError(f"{path}: unreadable manifest; pass --overwrite to replace the run") from None
            # Nothing recorded is deleted without asking, whatever the status (a failed run keeps its
            # steps); only a run that recorded nothing at all may be replaced silently.
            if status != "failed" or has_parts:
                raise RunExistsError(f"{self.run_dir}: already holds a {status} run; pass --overwrite to replace it")
        elif has_parts:
            # Table folders with no manifest are not provably ours (a user folder may be called `nodes/`).
            raise RunExistsError(f"{self.run_dir}: has table folders but no manifest; pass --overwrite")
        # An empty failed run (or an overwrite) is replaced: clear what an earlier recorder left behind,
        # and only that, so a stray part of the old run cannot mix into the new one.
        for name in (*TABLES, STAGING):
            shutil.rmtree(self.run_dir / name, ignore_errors=True)
        path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ emit

    def emit(self, event: Event) -> None:
        if self._finished:
            raise RuntimeError(f"{self.run_dir}: event {type(event).__name__} after the run was closed")
        if isinstance(event, RunStarted):
            self._start(event)
            return
        if self.manifest is None:
            raise RuntimeError(f"{self.run_dir}: {type(event).__name__} before RunStarted")
        if isinstance(event, RunFinished):
            self._finish(event.status, event.error, tokens=event.tokens)
            return
        table, cols = _decision_columns(event) if isinstance(event, DecisionsRecorded) else _columns(event)
        fast = _fast_columns(table, cols)
        if fast is None:  # the checked path names what is wrong; it takes strings, not codes
            cols = {k: v.names.take(pa.array(v.codes, pa.int8())) if type(v) is _Codes else v for k, v in cols.items()}
        arrays, n = fast if fast is not None else columns_to_arrays(table, cols)
        for name, arr in zip(SCHEMAS[table].names, arrays, strict=True):
            self._buf[table][name].append(arr)
        self._rows[table] += n
        if isinstance(event, StepRecorded):
            self._on_step(event)
        now = time.monotonic()
        if sum(self._rows.values()) >= self.flush_rows or now - self._last_flush >= self.flush_seconds:
            self.flush()
        elif now - self._last_beat >= self.heartbeat_seconds:
            self._write_manifest()

    def _start(self, ev: RunStarted) -> None:
        if self.manifest is not None:
            raise RuntimeError(f"{self.run_dir}: RunStarted twice")
        self.manifest = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "status": "recording",
            "config": ev.config.to_dict(),
            "config_flat": ev.config.flat(),
            "model": dict(ev.model),
            "scorer": ev.scorer,
            "input": ev.input_name,
            "created_at": ev.created_at,
            "updated_at": None,
            "heartbeat_at": None,
            "tokens": 0,
            "steps": 0,
            "error": None,
            **self._extra,
            "tables": {},
            "timings": {},
        }
        self._write_manifest()  # first, so that a reader never sees table folders without a manifest
        for name in TABLES:
            (self.run_dir / name).mkdir(exist_ok=True)

    def _on_step(self, ev: StepRecorded) -> None:
        m = self.manifest
        m["tokens"] = max(m["tokens"], int(ev.tokens_seen))
        m["steps"] += 1
        for key, v in (("tree", ev.t_tree_ms), ("scorer", ev.t_scorer_ms), ("allocator", ev.t_allocator_ms)):
            self._timings[f"{key}_ms"] += float(v)
        self._timings["model_ms"] += float(ev.t_model_ms)

    # ----------------------------------------------------------------------------- flush/close

    def flush(self) -> None:
        """Write every non-empty buffer as one new part per table, then rewrite the manifest."""
        if self.manifest is None:
            return
        for table in TABLES:
            if self._rows[table]:
                self._flush_table(table)
        self._last_flush = time.monotonic()
        self._write_manifest()

    def _flush_table(self, table: str) -> None:
        schema = SCHEMAS[table]
        data = pa.Table.from_arrays([_concat(self._buf[table][f.name], f.type, f.name) for f in schema], schema=schema)
        validate(table, data)
        step = data.column("step").to_numpy()
        if step.size > 1 and np.any(step[1:] < step[:-1]):
            # Events arrive in step order per table; a stable sort keeps it so (and the WC order within a step).
            data = data.take(pc.sort_indices(data, [("step", "ascending")]))
        k = self._parts[table] + 1
        data = data.replace_schema_metadata({PART_RUN_ID: self.run_id, PART_TABLE: table, PART_SEQ: str(k)})
        tmp = self.run_dir / STAGING / f"{table}-{part_name(k)}"
        try:
            pq.write_table(data, tmp, compression="zstd")
            os.replace(tmp, self.run_dir / table / part_name(k))
        except BaseException:
            tmp.unlink(missing_ok=True)  # the buffer is kept: a later flush (or close) may retry
            raise
        self._parts[table] = k
        self._written[table] += data.num_rows
        self._buf[table] = {c: [] for c in schema.names}
        self._rows[table] = 0

    def _write_manifest(self) -> None:
        now = utc_now()
        m = self.manifest
        m["updated_at"] = m["heartbeat_at"] = now
        # `columns`: what this writer puts in every part; a reader refuses a part with any other column.
        m["tables"] = {
            t: {"parts": self._parts[t], "rows": self._written[t], "columns": SCHEMAS[t].names} for t in TABLES
        }
        m["timings"] = {**{k: round(v, 3) for k, v in self._timings.items()}, "wall_s": self._wall()}
        write_manifest(self.run_dir, m)
        self._last_beat = time.monotonic()

    def _wall(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def _finish(self, status: str, error: str | None, *, tokens: int | None = None) -> None:
        if status not in ("complete", "failed"):
            raise ValueError(f"final status must be 'complete' or 'failed', got {status!r}")
        try:
            self.flush()
        except Exception as e:  # the data is lost, but the manifest must still say how the run ended
            status = "failed"
            error = f"{error}; " if error else ""
            error += f"final flush failed: {type(e).__name__}: {e}"
        m = self.manifest
        if tokens is not None:
            m["tokens"] = int(tokens)
        # While recording, `steps` counts steps seen (buffered ones included, for progress); at the end
        # it is the steps the files hold: a step that failed mid-way, or whose flush failed, has no row.
        m["steps"] = self._written["steps"]
        m["status"], m["error"] = status, error
        self._finished = True
        self._write_manifest()
        shutil.rmtree(self.run_dir / STAGING, ignore_errors=True)
        self._lock.release()

    def annotate(self, key: str, value: object) -> None:
        """Add a top-level manifest field (e.g. a scenario's needle span and, later, its result).

        Before RunStarted the field goes into the first manifest; afterwards (also after the run
        ended) the manifest is rewritten with it. Reserved keys (status, config, tables, ...) are refused.
        """
        if key in RESERVED_KEYS:
            raise ValueError(f"manifest key {key!r} is reserved")
        self._extra[key] = value
        if self.manifest is not None:
            self.manifest[key] = value
            write_manifest(self.run_dir, self.manifest)
            if self._finished:  # the run had tidied its staging folder away; the rewrite used it again
                shutil.rmtree(self.run_dir / STAGING, ignore_errors=True)

    def close(self, status: str = "failed", error: str | None = "recorder closed before RunFinished") -> None:
        """End the run if RunFinished never came (call it in a finally block); a no-op after RunFinished."""
        if self._finished:
            return
        if self.manifest is None:  # RunStarted never came: there is no run to mark
            self._finished = True
            self._lock.release()
            return
        self._finish(status, error if status == "failed" else None)

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.close("failed", f"{type(exc).__name__}: {exc}")
        else:
            self.close()
