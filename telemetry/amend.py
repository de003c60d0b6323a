"""Add a table to a run that has ended: `add_table`, for what a recorder of an older version did not
write (the `text` table, backfilled by `python -m engine add-text`).

It never touches what is recorded: it refuses a run that is recording, a table that already has parts
and a schema mismatch, and only then writes the new table's one part (stamped with the run's id, as
the recorder stamps its parts) and rewrites the manifest's `tables` entry for it (noting the addition
under `amended`), both atomically, under the run's recorder lock so that no recorder can start on the
folder meanwhile.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from telemetry.parts import _PART
from telemetry.schema import SCHEMAS, validate
from telemetry.writer import (
    MANIFEST,
    PART_RUN_ID,
    PART_SEQ,
    PART_TABLE,
    STAGING,
    RunLock,
    part_name,
    utc_now,
    write_manifest,
)


class AmendError(ValueError):
    """The table cannot be added; the message is one line naming the run and the reason."""


def add_table(run_dir: str | os.PathLike, table: str, data: pa.Table) -> int:
    """Write `data` as `table` of the ended run `run_dir` (one part); returns the rows written.

    Raises AmendError when the run has no readable manifest, is still recording, or already has
    parts of `table`; `telemetry.schema.SchemaError` when `data` does not match the table's schema;
    `telemetry.writer.RunExistsError` when a recorder holds the run's lock.
    """
    run_dir = Path(run_dir)
    if table not in SCHEMAS:
        raise AmendError(f"unknown table {table!r}")
    if not (run_dir / MANIFEST).is_file():
        raise AmendError(f"{run_dir}: not a run folder (no {MANIFEST})")
    validate(table, data, allow_extra=True)  # exact types: a cast would turn numbers into strings silently
    data = data.select(SCHEMAS[table].names)
    lock = RunLock(run_dir)  # a live recorder holds it: RunExistsError naming its pid
    try:
        try:
            manifest = json.loads((run_dir / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise AmendError(f"{run_dir / MANIFEST}: unreadable ({e})") from None
        if manifest.get("status") == "recording":
            raise AmendError(f"{run_dir}: its manifest says it is still recording (or its recorder died)")
        folder = run_dir / table
        if folder.is_dir() and any(_PART.fullmatch(p.name) for p in folder.iterdir()):
            raise AmendError(f"{run_dir}: already has a {table} table")
        meta = {PART_TABLE: table, PART_SEQ: "1"}
        if manifest.get("run_id"):
            meta[PART_RUN_ID] = manifest["run_id"]
        staging = run_dir / STAGING
        staging.mkdir(exist_ok=True)
        tmp = staging / f"{table}-{part_name(1)}"
        try:
            pq.write_table(data.replace_schema_metadata(meta), tmp, compression="zstd")
            folder.mkdir(exist_ok=True)
            os.replace(tmp, folder / part_name(1))
        finally:
            tmp.unlink(missing_ok=True)
        tables = manifest.setdefault("tables", {})
        tables[table] = {"parts": 1, "rows": data.num_rows, "columns": SCHEMAS[table].names}
        manifest.setdefault("amended", []).append({"table": table, "at": utc_now()})  # provenance: added later
        write_manifest(run_dir, manifest)
        if not any(staging.iterdir()):
            staging.rmdir()
    finally:
        lock.release()
    return data.num_rows
