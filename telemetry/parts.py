"""Part files of a run's table folder, one file at a time: which names are parts (`_PART`, ordered
by `_part_key`), what a part's footer says (`_Part`: schema, rows, largest step from the statistics,
`_max_step`), whether a readable part belongs to its run (`_foreign`: the run id, table and number in
its metadata, and the columns its recorder wrote), which parts the manifest says are missing
(`_missing`), and reading a part's columns (`_read_columns`).

Each check returns the one-line reason naming the file, or None. `telemetry.reader.Run.parts`
applies them, caches what they found and decides whether to skip the part or raise. This module opens
no DuckDB connection and reads no manifest from disk (the caller passes it in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from telemetry.writer import PART_RUN_ID, PART_SEQ, PART_TABLE, part_name

_PART = re.compile(r"part-(\d+)\.parquet")


def _part_key(p: Path) -> tuple:
    m = _PART.fullmatch(p.name)
    return (0, int(m.group(1)), "") if m else (1, 0, p.name)


@dataclass
class _Part:
    """What one check of a part file found (cached per path, by size and mtime)."""

    key: tuple[int, int]
    problem: str | None
    schema: pa.Schema | None
    rows: int
    max_step: int | None  # from the footer's statistics; None if it has none


def _foreign(path: Path, table: str, meta: dict, manifest: dict, schema: pa.Schema) -> str | None:
    """Why a readable part of `table` does not belong to this run, or None. Runs recorded before
    parts carried a run id (no `run_id` in the manifest) are not checked."""
    run_id = manifest.get("run_id")
    if not run_id:
        return None
    got = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in meta.items()}
    rid, tab, seq = got.get(PART_RUN_ID), got.get(PART_TABLE), got.get(PART_SEQ)
    if rid is None:
        return f"{path}: not written by this run's recorder (no run id in its metadata)"
    if rid != run_id:
        return f"{path}: a part of another run (run id {rid[:12]}, this run's is {run_id[:12]})"
    if tab != table:
        return f"{path}: a part of the {tab} table, not of {table}"
    number = int(_PART.fullmatch(path.name).group(1))
    if seq != str(number):
        return f"{path}: holds part {seq} of {table}, not part {number} (a copy or a renamed part)"
    written = ((manifest.get("tables") or {}).get(table) or {}).get("columns")
    if isinstance(written, list):
        extra = [n for n in schema.names if n not in written]
        if extra:
            return f"{path}: has column {extra[0]!r}, which this run's recorder did not write"
    return None


def _missing(folder: Path, found: list[Path], manifest: dict) -> list[str]:
    """One line naming the parts a recorder wrote that are not in `folder` (empty if none): it numbers
    parts 1, 2, ... and records the count in the manifest after writing them, so every number up to
    that count must be there. Only for runs with a run id."""
    recorded = ((manifest.get("tables") or {}).get(folder.name) or {}).get("parts")
    if not manifest.get("run_id") or type(recorded) is not int:
        return []
    have = {int(m.group(1)) for p in found if (m := _PART.fullmatch(p.name))}
    gone = [k for k in range(1, recorded + 1) if k not in have]
    if not gone:
        return []
    names = ", ".join(part_name(k) for k in gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
    return [f"{folder}: missing {names} (the recorder wrote parts 1 to {recorded})"]


def _max_step(meta: pq.FileMetaData, schema: pa.Schema) -> int | None:
    """The largest `step` in a part, from its row groups' statistics (None if any lacks them)."""
    idx = schema.get_field_index("step")
    if meta.num_rows == 0:
        return -1
    top = None
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(idx).statistics
        if st is None or not st.has_min_max:
            return None
        top = st.max if top is None else max(top, st.max)
    return top


def _read_columns(path: Path, schema: pa.Schema) -> pa.Table:
    """`schema`'s columns of one part file; a column the file lacks reads as nulls."""
    f = pq.ParquetFile(path)
    have = [n for n in schema.names if f.schema_arrow.get_field_index(n) >= 0]
    t = f.read(columns=have)
    cols = [t.column(n).cast(fl.type) if n in have else pa.nulls(t.num_rows, fl.type) for n, fl in
            zip(schema.names, schema, strict=True)]  # fmt: skip
    return pa.Table.from_arrays(cols, schema=schema.with_metadata(None))
