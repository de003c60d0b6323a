"""`Run`: read one recorded run's tables with DuckDB, and bin its heatmaps server-side.

Queries run in an in-memory DuckDB over `read_parquet([...], union_by_name=true)`. The part files
are enumerated here, never globbed by DuckDB: only `*.parquet` files inside a table folder are read,
so `_staging/` (where the writer builds parts) is never seen and a run that is still recording can
be read at any moment: a part appears whole (os.replace) or not at all. Results are pyarrow Tables.

Bad part policy: every part's footer is checked once (cached by size and mtime; parts never change)
against the public contract (`schema.check_part_schema`) and against its run: its metadata must name
this run's id, its table and the number in its file name (see `Run.parts`). A part that is not
Parquet, is truncated, is some other table's or run's file, a copy, or a symbolic link is skipped
and its one-line reason (naming the file) is added to `run.problems`, so the rest of the run stays
readable; `strict=True` raises `RunReadError` instead. Listing never follows a symbolic link. The
checks of one part file are `telemetry.parts`; `Run` applies them, caches them and keeps the list.

The cut: every table other than `steps` is read up to `Run.last_step()`, the last step with a steps
row, so that a recorder stopped between two part writes (or mid-step) leaves no orphan rows in any
join (docs/SCHEMA.md, "A stopped run"). `Run.source(table)` gives that cut FROM-clause to any query.

Memory: DuckDB runs under `DUCKDB_MEMORY` (spilling to a temporary folder beyond it) and
`Run.batches` streams a table in whole steps, so reading a run of any length stays bounded.

This module does not list a folder of runs nor check a manifest (`telemetry.runs`), does not build
the heatmap SQL (`telemetry.heatmap`), does not write runs and does not compute metrics (it delegates
to `telemetry.run_metrics`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry import run_metrics
from telemetry.heatmap import _HEATMAP, _bin_entries, _quote
from telemetry.parts import _PART, _foreign, _max_step, _missing, _Part, _part_key, _read_columns
from telemetry.runs import STALE_AFTER_S, RunReadError, derive_status, load_manifest
from telemetry.schema import SCHEMAS, TABLES, SchemaError, check_part_schema

DUCKDB_MEMORY = "1GB"  # per open run; the app holds a few, the CLI one
Range = tuple[int, int] | None  # (first, last) step inclusive; (start, end) tokens half-open


def _duckdb_temp() -> str:
    return os.path.join(tempfile.gettempdir(), f"megacontext-duckdb-{os.getuid()}")


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
        """A per-step metric table (see `telemetry.run_metrics.SERIES`)."""
        return run_metrics.series(self, name, **kwargs)

    def summary(self) -> dict:
        return run_metrics.summary(self)


def _conform(table: str, data: pa.Table) -> pa.Table:
    """Give known columns their schema type (DuckDB may widen, e.g. on an all-null column)."""
    schema = SCHEMAS[table]
    fields = []
    for f in data.schema:
        idx = schema.get_field_index(f.name)
        fields.append(pa.field(f.name, schema.field(idx).type) if idx >= 0 else f)
    target = pa.schema(fields)
    return data if target == data.schema else data.cast(target)
