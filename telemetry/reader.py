"""Read recorded runs: list a folder of runs, query a run's tables with DuckDB, bin heatmaps server-side.

Queries run in an in-memory DuckDB over `read_parquet([...], union_by_name=true)`. The part files
are enumerated here, never globbed by DuckDB: only `*.parquet` files inside a table folder are read,
so `_staging/` (where the writer builds parts) is never seen and a run that is still recording can
be read at any moment: a part appears whole (os.replace) or not at all. Results are pyarrow Tables.

Bad part policy: every part's footer is checked once (cached by size and mtime; parts never change)
against the public contract (`schema.check_part_schema`). A part that is not Parquet, is truncated
or is some other table's file is skipped and its one-line reason (naming the file) is added to
`run.problems`, so the rest of the run stays readable; `strict=True` raises `RunReadError` instead.

This module does not write runs and does not compute metrics (it delegates to `telemetry.metrics`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from telemetry import metrics
from telemetry.schema import SCHEMA_VERSION, SCHEMAS, TABLES, SchemaError, check_part_schema
from telemetry.writer import MANIFEST

STALE_AFTER_S = 30.0  # a recording whose heartbeat is older than this is reported as interrupted
_PART = re.compile(r"part-(\d+)\.parquet")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Range = tuple[int, int] | None  # (first, last) step inclusive; (start, end) tokens half-open


class RunReadError(Exception):
    """A run (or one of its files) cannot be read; the one-line message names the file and why."""


def load_manifest(run_dir: str | os.PathLike) -> dict:
    """The run's manifest, or RunReadError saying what is wrong with the folder."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunReadError(f"{path}: not a run folder (no such directory)")
    mpath = path / MANIFEST
    if not mpath.exists():
        if not any(path.iterdir()):
            raise RunReadError(f"{path}: empty folder, not a run (no {MANIFEST})")
        raise RunReadError(f"{path}: not a run (no {MANIFEST})")
    try:
        m = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RunReadError(f"{mpath}: unreadable ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise RunReadError(f"{mpath}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(m, dict) or not isinstance(m.get("schema_version"), int):
        raise RunReadError(f"{mpath}: no integer schema_version, not a MegaContext run manifest")
    if m["schema_version"] > SCHEMA_VERSION:
        raise RunReadError(
            f"{mpath}: schema_version {m['schema_version']} is newer than this reader's {SCHEMA_VERSION}; "
            "upgrade MegaContext Studio to read it"
        )
    return m


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
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:  # a staging file moved away while we walked
                pass
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
    """Every sub-folder of `root` as a RunInfo, sorted by name; bad ones are `invalid` with a `problem`."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
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
                tokens=int(m.get("tokens") or 0),
                steps=int(m.get("steps") or 0),
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
        self._checked: dict[Path, tuple[int, int, str | None, pa.Schema | None, int]] = {}
        self.problems: list[str] = []  # one line per bad file found so far, each naming the file
        self._con = duckdb.connect()

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

    def _check(self, path: Path) -> tuple[str | None, pa.Schema | None, int]:
        st = path.stat()
        hit = self._checked.get(path)
        if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2:]
        table = path.parent.name
        problem, schema, rows = None, None, 0
        try:
            meta = pq.read_metadata(path)
            schema, rows = meta.schema.to_arrow_schema(), meta.num_rows
            check_part_schema(table, schema)
        except SchemaError as e:
            problem = f"{path}: not a valid {table} part ({str(e).removeprefix(table + ': ')})"
        except Exception as e:  # truncated, not Parquet, unreadable: pyarrow raises several types
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            problem = f"{path}: not a readable Parquet file ({msg})"
        self._checked[path] = (st.st_size, st.st_mtime_ns, problem, schema, rows)
        if problem and problem not in self.problems:
            self.problems.append(problem)
        return problem, schema, rows

    def parts(self, table: str, *, strict: bool = False) -> list[Path]:
        """The table's good part files in order; bad ones are skipped (or raise, with `strict`)."""
        if table not in SCHEMAS:
            raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
        folder = self.path / table
        if not folder.is_dir():
            return []
        found = sorted((p for p in folder.iterdir() if p.suffix == ".parquet" and p.is_file()), key=_part_key)
        good = []
        for p in found:
            problem = self._check(p)[0]
            if problem is None:
                good.append(p)
            elif strict:
                raise RunReadError(problem)
        return good

    def tables(self) -> list[str]:
        return [t for t in TABLES if self.parts(t)]

    def n_rows(self, table: str) -> int:
        """Rows in the table's good parts, from Parquet footers (no data read)."""
        return sum(self._check(p)[2] for p in self.parts(table))

    def n_steps(self) -> int:
        return self.n_rows("steps")

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
            known.update(dict.fromkeys(self._check(p)[1].names))
        for c in columns or ():
            if c not in known:
                raise ValueError(f"{name}: unknown column {c!r}; known: {', '.join(known)}")
        if not files:
            empty = SCHEMAS[name].empty_table()
            return empty.select(columns) if columns else empty
        cols = ", ".join(_quote(c) for c in columns) if columns else "*"
        q = f"SELECT {cols} FROM read_parquet($_mc_parts, union_by_name=true)"
        if where:
            q += f" WHERE {where}"
        # Order: DuckDB preserves insertion order (files in list order, rows in file order) without ORDER BY.
        out = self.sql(q, {**(params or {}), "_mc_parts": [str(p) for p in files]})
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
        files = [str(p) for p in self.parts("entries")]
        if not files:
            return _HEATMAP.empty_table()
        base = {"parts": files, "it": iteration}
        if step_range is None or token_range is None:
            q = 'SELECT min(step) s0, max(step) s1, min(start) t0, max("end") t1'
            q += " FROM read_parquet($parts, union_by_name=true) WHERE iteration = $it"
            ext = self.sql(q, base).to_pylist()[0]
            if ext["s0"] is None:
                return _HEATMAP.empty_table()
            step_range = step_range or (ext["s0"], ext["s1"])
            token_range = token_range or (ext["t0"], ext["t1"])
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
        q = f"""
        WITH r AS (
            SELECT (step - $s0) * $h // $n AS yb, {v_of} AS v, s, e, count(*) AS c
            FROM (
                SELECT step, {_quote(column)}::DOUBLE AS v, greatest(start, $t0) AS s, least("end", $t1) AS e
                FROM read_parquet($parts, union_by_name=true)
                WHERE iteration = $it AND step BETWEEN $s0 AND $s1 AND "end" > $t0 AND start < $t1
            )
            GROUP BY yb, s, e
        ), e AS (
            SELECT yb, v, c, s, e, (s - $t0) * $w // $span AS x0, (e - 1 - $t0) * $w // $span AS x1 FROM r
        ), b AS (  -- most entries fall in one token bin: only the others are spread with generate_series
            SELECT yb, v, c, s, e, x0 AS xb FROM e WHERE x0 = x1
            UNION ALL
            SELECT yb, v, c, s, e, unnest(generate_series(x0, x1)) AS xb FROM e WHERE x0 < x1
        ), o AS (
            SELECT xb, yb, v, c,
                least(e, $t0 + ((xb + 1) * $span + $w - 1) // $w)
                    - greatest(s, $t0 + (xb * $span + $w - 1) // $w) AS ov
            FROM b
        )
        SELECT xb::INTEGER AS x_bin, yb::INTEGER AS y_bin,
            ($t0 + (xb * $span + $w - 1) // $w)::BIGINT AS token_lo,
            ($t0 + ((xb + 1) * $span + $w - 1) // $w)::BIGINT AS token_hi,
            ($s0 + (yb * $n + $h - 1) // $h)::INTEGER AS step_lo,
            ($s0 + ((yb + 1) * $n + $h - 1) // $h - 1)::INTEGER AS step_hi,
            ({value})::FLOAT AS value, sum(ov * c)::BIGINT AS weight
        FROM o GROUP BY xb, yb ORDER BY yb, xb
        """
        params = {**base, "s0": s0, "s1": s1, "t0": t0, "t1": t1, "n": n, "span": span, "w": w, "h": h}
        return self.sql(q, params).cast(_HEATMAP)

    # -------------------------------------------------------------------------------- metrics

    def metric_series(self, name: str, **kwargs) -> pa.Table:
        """A per-step metric table (see `telemetry.metrics.SERIES`)."""
        return metrics.series(self, name, **kwargs)

    def summary(self) -> dict:
        return metrics.summary(self)


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
