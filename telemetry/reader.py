"""Read recorded runs: list a folder of runs, query a run's tables with DuckDB, bin heatmaps server-side.

Queries run in an in-memory DuckDB over `read_parquet([...], union_by_name=true)`. The part files
are enumerated here, never globbed by DuckDB: only `*.parquet` files inside a table folder are read,
so `_staging/` (where the writer builds parts) is never seen and a run that is still recording can
be read at any moment: a part appears whole (os.replace) or not at all. Results are pyarrow Tables.

Bad part policy: every part's footer is checked once (cached by size and mtime; parts never change)
against the public contract (`schema.check_part_schema`) and against its run: its metadata must name
this run's id, its table and the number in its file name (see `Run.parts`). A part that is not
Parquet, is truncated, is some other table's or run's file, a copy, or a symbolic link is skipped
and its one-line reason (naming the file) is added to `run.problems`, so the rest of the run stays
readable; `strict=True` raises `RunReadError` instead. Listing never follows a symbolic link.

The cut: every table other than `steps` is read up to `Run.last_step()`, the last step with a steps
row, so that a recorder stopped between two part writes (or mid-step) leaves no orphan rows in any
join (docs/SCHEMA.md, "A stopped run"). `Run.source(table)` gives that cut FROM-clause to any query.

Memory: DuckDB runs under `DUCKDB_MEMORY` (spilling to a temporary folder beyond it) and
`Run.batches` streams a table in whole steps, so reading a run of any length stays bounded.

This module does not write runs and does not compute metrics (it delegates to `telemetry.metrics`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry import binning, metrics
from telemetry.schema import SCHEMA_VERSION, SCHEMAS, TABLES, SchemaError, check_part_schema
from telemetry.writer import MANIFEST, PART_RUN_ID, PART_SEQ, PART_TABLE, part_name

DUCKDB_MEMORY = "1GB"  # per open run; the app holds a few, the CLI one
STALE_AFTER_S = 30.0  # a recording whose heartbeat is older than this is reported as interrupted
_PART = re.compile(r"part-(\d+)\.parquet")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Range = tuple[int, int] | None  # (first, last) step inclusive; (start, end) tokens half-open


class RunReadError(Exception):
    """A run (or one of its files) cannot be read; the one-line message names the file and why."""


def load_manifest(run_dir: str | os.PathLike) -> dict:
    """The run's manifest, or RunReadError saying what is wrong with the folder (one line naming the
    file, and the field when one field is wrong)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunReadError(f"{path}: not a run folder (no such directory)")
    mpath = path / MANIFEST
    if not mpath.exists():
        if not any(path.iterdir()):
            raise RunReadError(f"{path}: empty folder, not a run (no {MANIFEST})")
        raise RunReadError(f"{path}: not a run (no {MANIFEST})")
    if mpath.is_symlink():
        raise RunReadError(f"{mpath}: a symbolic link, not followed")
    try:
        m = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RunReadError(f"{mpath}: unreadable ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise RunReadError(f"{mpath}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(m, dict) or type(m.get("schema_version")) is not int:
        raise RunReadError(f"{mpath}: no integer schema_version, not a MegaContext run manifest")
    if m["schema_version"] > SCHEMA_VERSION:
        raise RunReadError(
            f"{mpath}: schema_version {m['schema_version']} is newer than this reader's {SCHEMA_VERSION}; "
            "upgrade MegaContext Studio to read it"
        )
    if m["schema_version"] < 1:
        raise RunReadError(f"{mpath}: schema_version {m['schema_version']} is not a version (1 to {SCHEMA_VERSION})")
    for name, (types, what) in _FIELDS.items():
        v = m.get(name)
        if v is not None and (type(v) not in types or (int in types and v < 0)):
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
            raise RunReadError(f"{mpath}: field {name!r} is {shown}, expected {what}")
    if m.get("status") not in STATUSES:
        raise RunReadError(f"{mpath}: field 'status' is {m.get('status')!r}, expected one of {', '.join(STATUSES)}")
    return m


STATUSES = ("recording", "complete", "failed")  # as written; `interrupted` is derived by the reader
# Manifest fields a reader relies on: their JSON types (absent or null is allowed: older writers).
_TEXT = ((str,), "text")
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "tokens": ((int,), "a whole number >= 0"),
    "steps": ((int,), "a whole number >= 0"),
    "run_id": _TEXT,
    "scorer": _TEXT,
    "input": _TEXT,
    "created_at": _TEXT,
    "updated_at": _TEXT,
    "heartbeat_at": _TEXT,
    "error": _TEXT,
    "parent": _TEXT,
    "config": ((dict,), "an object"),
    "config_flat": ((dict,), "an object"),
    "model": ((dict,), "an object"),
    "tables": ((dict,), "an object"),
    "timings": ((dict,), "an object"),
}


def _duckdb_temp() -> str:
    return os.path.join(tempfile.gettempdir(), f"megacontext-duckdb-{os.getuid()}")


def derive_status(manifest: dict, stale_after: float = STALE_AFTER_S, now: dt.datetime | None = None) -> str:
    """`recording` turns into `interrupted` when the heartbeat is older than `stale_after` seconds."""
    status = manifest.get("status", "invalid")
    if status != "recording":
        return status
    stamp = manifest.get("heartbeat_at") or manifest.get("updated_at") or manifest.get("created_at")
    try:
        beat = dt.datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return "interrupted"  # a recording with no readable heartbeat cannot be shown as live
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=dt.UTC)
    age = ((now or dt.datetime.now(dt.UTC)) - beat).total_seconds()
    return "interrupted" if age > stale_after else "recording"


def _folder_bytes(path: Path) -> int:
    """Bytes of the files under `path`; symbolic links are neither followed nor counted."""
    total = 0
    for root, _, files in os.walk(path):  # os.walk does not descend into linked folders
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:  # a staging file moved away while we walked
                continue
            if not stat.S_ISLNK(st.st_mode):
                total += st.st_size
    return total


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    status: str  # recording | complete | failed | interrupted | invalid
    problem: str | None = None  # one line, for invalid runs
    size_bytes: int = 0
    scorer: str | None = None
    tokens: int = 0
    steps: int = 0
    created_at: str | None = None
    heartbeat_at: str | None = None
    error: str | None = None
    parent: str | None = None
    config_flat: dict = field(default_factory=dict)


def list_runs(root: str | os.PathLike, *, stale_after: float = STALE_AFTER_S) -> list[RunInfo]:
    """Every sub-folder of `root` as a RunInfo, sorted by name; bad ones are `invalid` with a `problem`.

    Each run is read on its own: a bad manifest (or a bad field in one) marks that run invalid and
    names the file, the others are listed as usual. A symbolic link is listed as invalid and not
    followed (neither to list nor to size it), whatever it points to."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(p for p in root.iterdir() if not p.name.startswith((".", "_"))):
        if path.is_symlink():
            out.append(RunInfo(path.name, path, "invalid", problem=f"{path}: a symbolic link, not followed"))
            continue
        if not path.is_dir():
            continue
        size = _folder_bytes(path)
        try:
            m = load_manifest(path)
        except RunReadError as e:
            out.append(RunInfo(path.name, path, "invalid", problem=str(e), size_bytes=size))
            continue
        out.append(
            RunInfo(
                name=path.name,
                path=path,
                status=derive_status(m, stale_after),
                size_bytes=size,
                scorer=m.get("scorer"),
                tokens=m.get("tokens") or 0,
                steps=m.get("steps") or 0,
                created_at=m.get("created_at"),
                heartbeat_at=m.get("heartbeat_at"),
                error=m.get("error"),
                parent=m.get("parent"),
                config_flat=dict(m.get("config_flat") or {}),
            )
        )
    return out


def _part_key(p: Path) -> tuple:
    m = _PART.fullmatch(p.name)
    return (0, int(m.group(1)), "") if m else (1, 0, p.name)


def _quote(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"bad column name {name!r}")
    return f'"{name}"'


class Run:
    """One recorded run. Cheap to make; re-reads the manifest and re-lists parts on every query."""

    def __init__(self, run_dir: str | os.PathLike, *, stale_after: float = STALE_AFTER_S) -> None:
        self.path = Path(run_dir)
        self.name = self.path.name
        self.stale_after = stale_after
        self._manifest = load_manifest(self.path)
        self._checked: dict[Path, _Part] = {}
        self.problems: list[str] = []  # one line per bad file found so far, each naming the file
        # Bounded: DuckDB would take up to 80% of RAM; past the limit, sorts and aggregates spill to disk.
        self._con = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "temp_directory": _duckdb_temp()})

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------------------------- manifest

    @property
    def manifest(self) -> dict:
        # A live run rewrites its manifest (atomically); re-read so status and counts stay current.
        try:
            self._manifest = load_manifest(self.path)
        except RunReadError:
            pass  # keep the last good copy rather than fail a query mid-way
        return self._manifest

    @property
    def status(self) -> str:
        return derive_status(self.manifest, self.stale_after)

    def knob(self, name: str, default: object = None) -> object:
        """A knob by its one name, `section.field` (e.g. `allocator.tau_expand`)."""
        return self.manifest.get("config_flat", {}).get(name, default)

    # ---------------------------------------------------------------------------------- parts

    def _check(self, path: Path, manifest: dict | None = None) -> _Part:
        """The part's footer facts and, if it must be skipped, the one-line reason (cached by size and
        mtime: parts never change). `manifest` (default: the cached one) gives the run id and columns."""
        st = path.lstat()
        hit = self._checked.get(path)
        if hit and hit.key == (st.st_size, st.st_mtime_ns):
            return hit
        table = path.parent.name
        part = _Part((st.st_size, st.st_mtime_ns), None, None, 0, None)
        try:
            meta = pq.read_metadata(path)
            part.schema, part.rows = meta.schema.to_arrow_schema(), meta.num_rows
            check_part_schema(table, part.schema)
            part.problem = _foreign(path, table, meta.metadata or {}, manifest or self._manifest, part.schema)
            part.max_step = _max_step(meta, part.schema)
        except SchemaError as e:
            part.problem = f"{path}: not a valid {table} part ({str(e).removeprefix(table + ': ')})"
        except Exception as e:  # truncated, not Parquet, unreadable: pyarrow raises several types
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            part.problem = f"{path}: not a readable Parquet file ({msg})"
        self._checked[path] = part
        self._problem(part.problem)
        return part

    def _problem(self, problem: str | None) -> None:
        if problem and problem not in self.problems:
            self.problems.append(problem)

    def parts(self, table: str, *, strict: bool = False) -> list[Path]:
        """The table's good part files in order; bad ones are skipped and named in `problems` (or
        raise, with `strict`).

        Only regular files named `part-NNNNNN.parquet` are parts. Refused, each with its reason: a
        symbolic link (never followed), a folder or other file under a part's name, a file that is
        not Parquet or is truncated, another table's columns, and (in a run whose manifest has a
        `run_id`) a part whose metadata names another run, another table or another sequence number
        than its file name (a part copied in, or duplicated under a new name), or that has a column
        the run's writer did not write. Other files in the folder (`*.tmp`, notes) are ignored.
        """
        if table not in SCHEMAS:
            raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
        folder = self.path / table
        if folder.is_symlink() or not folder.is_dir():
            if folder.is_symlink():
                self._strict_or_note(f"{folder}: a symbolic link, not followed", strict)
            return []
        manifest = self.manifest
        good = []
        found = sorted((p for p in folder.iterdir() if p.suffix == ".parquet"), key=_part_key)
        for problem in _missing(folder, found, manifest):
            self._strict_or_note(problem, strict)
        for p in found:
            if p.is_symlink():
                problem = f"{p}: a symbolic link, not followed"
            elif not p.is_file():
                problem = f"{p}: not a regular file"
            elif not _PART.fullmatch(p.name):
                problem = f"{p}: not a part name (part-NNNNNN.parquet)"
            else:
                problem = self._check(p, manifest).problem
            if problem is None:
                good.append(p)
            else:
                self._strict_or_note(problem, strict)
        return good

    def _strict_or_note(self, problem: str, strict: bool) -> None:
        if strict:
            raise RunReadError(problem)
        self._problem(problem)

    def tables(self) -> list[str]:
        return [t for t in TABLES if self.parts(t)]

    def n_rows(self, table: str) -> int:
        """Rows in the table's good parts, from Parquet footers (no data read; before the cut)."""
        return sum(self._check(p).rows for p in self.parts(table))

    def n_steps(self) -> int:
        return self.n_rows("steps")

    def last_step(self) -> int | None:
        """The last step with a `steps` row (None before the first): every other table is read up to it.

        A recorder killed (or failed) between two part writes, or mid-step, can leave rows of a step
        that has no steps row yet; cutting there makes every table of a stopped run end where `steps`
        ends, so that joins never meet an orphan step."""
        files = self.parts("steps")
        if not files:
            return None
        tops = [self._check(p).max_step for p in files]
        if any(t is None for t in tops):  # a part without statistics: ask the data
            return self.sql("SELECT max(step) AS s FROM read_parquet($p, union_by_name=true)",
                            {"p": [str(p) for p in files]}).column("s")[0].as_py()  # fmt: skip
        return max(tops)

    def source(self, table: str, *, strict: bool = False) -> tuple[str, dict] | None:
        """A DuckDB FROM-clause item over the table's good parts, cut at `last_step()`, and its
        parameters (named after the table, so two sources can share one query); None if no parts."""
        return self._source(table, self.parts(table, strict=strict))

    def _source(self, table: str, files: list[Path]) -> tuple[str, dict] | None:
        """`source` over parts already listed (a caller that has them need not list them again)."""
        if not files:
            return None
        key = f"_mc_{table}"
        sql, params = f"read_parquet(${key}, union_by_name=true)", {key: [str(p) for p in files]}
        cut = None if table == "steps" else self._cut(files)
        if cut is not None:
            sql = f"(SELECT * FROM {sql} WHERE step <= ${key}_cut)"
            params[f"{key}_cut"] = cut
        return sql, params

    def _cut(self, files: list[Path]) -> int | None:
        """The step to cut `files` at, or None when none of their rows lies beyond `last_step()`."""
        last = self.last_step()
        if last is None:  # no steps table at all (a writer that records only some tables): nothing to cut at
            return None
        if all(t is not None and t <= last for t in (self._check(p).max_step for p in files)):
            return None
        return last

    def batches(self, table: str, columns: list[str], *, rows: int = 2_000_000) -> Iterator[pa.Table]:
        """The table's rows (cut at `last_step()`) in recorded order, as Tables of about `rows` rows
        that each hold whole steps (a step is never split between two Tables), so that per-step work
        can run in bounded memory. Reads one part at a time; a column a part lacks reads as null."""
        schema = pa.schema([pa.field(c, SCHEMAS[table].field(c).type) for c in columns])  # nullable, like `table`
        files = self.parts(table)
        cut = None if table == "steps" else self._cut(files)
        held: list[pa.Table] = []
        n_held = 0
        for p in files:
            t = _read_columns(p, schema)
            if cut is not None:
                t = t.filter(pc.less_equal(t.column("step"), cut))
            if t.num_rows == 0:
                continue
            held.append(t)
            n_held += t.num_rows
            if n_held >= rows:
                whole = pa.concat_tables(held)
                step = whole.column("step")
                last = step[-1].as_py()
                # rows of the last step may continue in the next part: keep them for the next Table
                k = whole.num_rows - pc.sum(pc.equal(step, last)).as_py()
                if k > 0:
                    yield whole.slice(0, k).combine_chunks()
                    held, n_held = [whole.slice(k)], whole.num_rows - k
                else:
                    held, n_held = [whole], whole.num_rows
        if n_held:
            yield pa.concat_tables(held).combine_chunks()

    # ---------------------------------------------------------------------------------- query

    def sql(self, query: str, params: dict | None = None) -> pa.Table:
        """Run a query on this run's DuckDB connection (a fresh cursor: safe across threads)."""
        try:
            return self._con.cursor().sql(query, params=params or None).to_arrow_table()
        except duckdb.Error as e:
            raise RunReadError(f"{self.path}: query failed: {str(e).splitlines()[0]}") from None

    def table(
        self,
        name: str,
        columns: list[str] | None = None,
        where: str | None = None,
        params: dict | None = None,
        *,
        strict: bool = False,
    ) -> pa.Table:
        """Rows of one table, in recorded order (step order), as a pyarrow Table.

        `columns` projects; `where` is a SQL predicate over the table's columns, with `$name`
        placeholders bound from `params` (a dict). Columns keep the schema's types.
        """
        files = self.parts(name, strict=strict)
        known = dict.fromkeys(SCHEMAS[name].names)
        for p in files:
            known.update(dict.fromkeys(self._check(p).schema.names))
        for c in columns or ():
            if c not in known:
                raise ValueError(f"{name}: unknown column {c!r}; known: {', '.join(known)}")
        src = self._source(name, files)
        if src is None:
            empty = SCHEMAS[name].empty_table()
            return empty.select(columns) if columns else empty
        cols = ", ".join(_quote(c) for c in columns) if columns else "*"
        q = f"SELECT {cols} FROM {src[0]}"
        if where:
            q += f" WHERE {where}"
        # Order: DuckDB preserves insertion order (files in list order, rows in file order) without ORDER BY.
        out = self.sql(q, {**(params or {}), **src[1]})
        return _conform(name, out)

    def steps(self, columns: list[str] | None = None) -> pa.Table:
        return self.table("steps", columns)

    # ------------------------------------------------------------------------------- heatmaps

    def lod_timeline(self, width: int, height: int, step_range: Range = None, token_range: Range = None, **kw):
        """LOD heatmap binned in DuckDB: x = token position bin, y = step bin (see `span_heatmap`)."""
        return self.span_heatmap("lod", width, height, step_range, token_range, **kw)

    def score_heatmap(self, width: int, height: int, step_range: Range = None, token_range: Range = None, **kw):
        """Score heatmap, binned like `lod_timeline`; `column=` picks a pipeline stage (default `score`)."""
        column = kw.pop("column", "score")
        if column not in ("raw_score", "score_interp", "score_shift", "score"):
            raise ValueError(f"score_heatmap: column must be a score column, got {column!r}")
        return self.span_heatmap(column, width, height, step_range, token_range, **kw)

    def span_heatmap(
        self,
        column: str,
        width: int,
        height: int,
        step_range: Range = None,
        token_range: Range = None,
        *,
        agg: str = "mean",
        iteration: int = 0,
    ) -> pa.Table:
        """Bin one entries column over (token position, step) into at most width x height cells.

        Token axis: `[t0, t1)` cut into `w = min(width, t1 - t0)` bins, token p in bin
        `(p - t0) * w // (t1 - t0)`. Step axis: steps `[s0, s1]` (inclusive) into `h = min(height,
        s1 - s0 + 1)` bins the same way. Each entry row (at `iteration`, default 0: the WC the
        scorer saw at the start of the step) is spread over only the token bins its span
        intersects (`generate_series` of bin indices, so a 1,024-token gist at a coarse zoom is one
        or two rows, never 1,024), weighted by the tokens it covers in each. `agg="mean"` gives the
        token-weighted mean over all (token, step) pairs in the cell; "min"/"max" the extremes
        ("min" LOD = the finest detail present, so thin streaks of detail stay visible).

        Exact: with one token and one step per bin, each cell is the value of the entry covering
        that token at that step. Cost is one scan of the entries in range, plus one row per
        (entry, bin) overlap; no per-token rows are ever made. Empty cells (tokens not yet read,
        or evicted) are absent. Columns: x_bin, y_bin, token_lo, token_hi (half-open), step_lo,
        step_hi (inclusive), value (float32), weight (token-steps covered in the cell).
        """
        if width < 1 or height < 1:
            raise ValueError(f"width and height must be >= 1, got {width}x{height}")
        if agg not in ("mean", "min", "max"):
            raise ValueError(f"agg must be one of mean, min, max; got {agg!r}")
        src = self.source("entries")
        if src is None:
            return _HEATMAP.empty_table()
        entries, base = src[0], {**src[1], "it": iteration}
        if step_range is None or token_range is None:
            q = 'SELECT min(step) s0, max(step) s1, min(start) t0, max("end") t1'
            q += f" FROM {entries} WHERE iteration = $it"
            ext = self.sql(q, base).to_pylist()[0]
            if ext["s0"] is None:
                return _HEATMAP.empty_table()
            step_range = step_range or (ext["s0"], ext["s1"])
            token_range = token_range or (ext["t0"], ext["t1"])
        return _bin_entries(self.sql, entries, base, column, width, height, step_range, token_range, agg)

    # -------------------------------------------------------------------------------- metrics

    def metric_series(self, name: str, **kwargs) -> pa.Table:
        """A per-step metric table (see `telemetry.metrics.SERIES`)."""
        return metrics.series(self, name, **kwargs)

    def summary(self) -> dict:
        return metrics.summary(self)


def _bin_entries(sql, entries: str, base: dict, column: str, width: int, height: int, step_range, token_range,
                 agg: str) -> pa.Table:  # fmt: skip
    """The heatmap query of `Run.span_heatmap` over the FROM-item `entries` (its parameters in `base`,
    `$it` the iteration), run by `sql(query, params)`; ranges given, agg checked."""
    (s0, s1), (t0, t1) = (int(v) for v in step_range), (int(v) for v in token_range)
    if s1 < s0 or t1 <= t0:
        return _HEATMAP.empty_table()
    n, span = s1 - s0 + 1, t1 - t0
    w, h = min(width, span), min(height, n)
    value = {"mean": "sum(v * ov) / sum(ov * c)", "min": "min(v)", "max": "max(v)"}[agg]
    v_of = {"mean": "sum(v)", "min": "min(v)", "max": "max(v)"}[agg]
    # r: entries of the same span within one step bin (most of them: a gist stays put for many
    # steps) are merged first, whatever their values, into a count `c` and their sum (or min, or
    # max) `v`, so the spreading over token bins below runs once per (step bin, span), not once
    # per step. A mean is then sum(v * overlap) / sum(overlap * c): exact, not an approximation.
    # The bin geometry is `telemetry.binning`'s, as SQL: x over tokens [t0, t1), y over steps [s0, s1].
    x_of = functools.partial(binning.sql_bin_of, lo="$t0", extent="$span", bins="$w")
    x_start = functools.partial(binning.sql_bin_start, lo="$t0", extent="$span", bins="$w")
    y_start = functools.partial(binning.sql_bin_start, lo="$s0", extent="$n", bins="$h")
    q = f"""
    WITH r AS (
        SELECT {binning.sql_bin_of("step", "$s0", "$n", "$h")} AS yb, {v_of} AS v, s, e, count(*) AS c
        FROM (
            SELECT step, {_quote(column)}::DOUBLE AS v, greatest(start, $t0) AS s, least("end", $t1) AS e
            FROM {entries}
            WHERE iteration = $it AND step BETWEEN $s0 AND $s1 AND "end" > $t0 AND start < $t1
        )
        GROUP BY yb, s, e
    ), e AS (
        SELECT yb, v, c, s, e, {x_of("s")} AS x0, {x_of("e - 1")} AS x1 FROM r
    ), b AS (  -- most entries fall in one token bin: only the others are spread with generate_series
        SELECT yb, v, c, s, e, x0 AS xb FROM e WHERE x0 = x1
        UNION ALL
        SELECT yb, v, c, s, e, unnest(generate_series(x0, x1)) AS xb FROM e WHERE x0 < x1
    ), o AS (
        SELECT xb, yb, v, c,
            least(e, {x_start("(xb + 1)")}) - greatest(s, {x_start("xb")}) AS ov
        FROM b
    )
    SELECT xb::INTEGER AS x_bin, yb::INTEGER AS y_bin,
        {x_start("xb")}::BIGINT AS token_lo,
        {x_start("(xb + 1)")}::BIGINT AS token_hi,
        {y_start("yb")}::INTEGER AS step_lo,
        ({y_start("(yb + 1)")} - 1)::INTEGER AS step_hi,
        ({value})::FLOAT AS value, sum(ov * c)::BIGINT AS weight
    FROM o GROUP BY xb, yb ORDER BY yb, xb
    """
    params = {**base, "s0": s0, "s1": s1, "t0": t0, "t1": t1, "n": n, "span": span, "w": w, "h": h}
    return sql(q, params).cast(_HEATMAP)


def heatmap_of_table(entries: pa.Table, column: str, width: int, height: int, step_range: tuple[int, int],
                     token_range: tuple[int, int], *, agg: str = "mean", iteration: int = 0) -> pa.Table:  # fmt: skip
    """`Run.span_heatmap` over an in-memory entries table (e.g. a re-plan's): the same query, so the
    same cells as a run folder holding those rows."""
    if agg not in ("mean", "min", "max"):
        raise ValueError(f"agg must be one of mean, min, max; got {agg!r}")
    con = duckdb.connect()
    con.register("_mc_entries", entries)
    try:
        run_sql = lambda q, params: con.sql(q, params=params).to_arrow_table()  # noqa: E731
        return _bin_entries(run_sql, "_mc_entries", {"it": iteration}, column, width, height, step_range,
                            token_range, agg)  # fmt: skip
    finally:
        con.close()


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


_HEATMAP = pa.schema(
    [
        ("x_bin", pa.int32()),
        ("y_bin", pa.int32()),
        ("token_lo", pa.int64()),
        ("token_hi", pa.int64()),
        ("step_lo", pa.int32()),
        ("step_hi", pa.int32()),
        ("value", pa.float32()),
        ("weight", pa.int64()),
    ]
)


def _conform(table: str, data: pa.Table) -> pa.Table:
    """Give known columns their schema type (DuckDB may widen, e.g. on an all-null column)."""
    schema = SCHEMAS[table]
    fields = []
    for f in data.schema:
        idx = schema.get_field_index(f.name)
        fields.append(pa.field(f.name, schema.field(idx).type) if idx >= 0 else f)
    target = pa.schema(fields)
    return data if target == data.schema else data.cast(target)
