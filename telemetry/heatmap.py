"""The heatmap of one entries column over (token position, step): DuckDB reads the rows in range and
merges those of one span within a step bin, and `telemetry.binning.SpanGrid` spreads them over the
token bins their spans intersect (`_bin_entries`, behind `telemetry.reader.Run.span_heatmap`); the
same over an in-memory entries table (`heatmap_of_table`, e.g. a re-plan's), so that both give the
same cells.

The bin geometry and the binner are `telemetry.binning`'s. `_quote` (a column name as a DuckDB identifier, refused
unless plain) is shared with `Run.table`. This module does not find a run's files nor cut a stopped
run: it is given a FROM-item and a way to run SQL.
"""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow as pa

from telemetry import binning
from telemetry.arrays import _group_bounds

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _quote(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"bad column name {name!r}")
    return f'"{name}"'


def _bin_entries(sql, entries: str, base: dict, column: str, width: int, height: int, step_range, token_range,
                 agg: str) -> pa.Table:  # fmt: skip
    """The heatmap of `Run.span_heatmap` over the FROM-item `entries` (its parameters in `base`, `$it`
    the iteration), read by `sql(query, params)`; ranges given, agg checked."""
    (s0, s1), (t0, t1) = (int(v) for v in step_range), (int(v) for v in token_range)
    if s1 < s0 or t1 <= t0:
        return _HEATMAP.empty_table()
    grid = binning.SpanGrid(width, height, (s0, s1), (t0, t1), agg)
    v_of = {"mean": "sum(v)", "min": "min(v)", "max": "max(v)"}[agg]
    # Entries of the same span within one step bin (most of them: a gist stays put for many steps)
    # are merged here, whatever their values, into a count `c` and their sum (or min, or max) `v`, so
    # that the binner spreads each (step bin, span) once, not once per step: a mean is then
    # sum(v * overlap) / sum(overlap * c), exact. The step bin is `telemetry.binning`'s formula.
    q = f"""
    SELECT {binning.sql_bin_of("step", "$s0", "$n", "$h")} AS yb, {v_of} AS v, s, e, count(*) AS c
    FROM (
        SELECT step, {_quote(column)}::DOUBLE AS v, greatest(start, $t0) AS s, least("end", $t1) AS e
        FROM {entries}
        WHERE iteration = $it AND step BETWEEN $s0 AND $s1 AND "end" > $t0 AND start < $t1
    )
    GROUP BY yb, s, e ORDER BY yb
    """
    rows = sql(q, {**base, "s0": s0, "s1": s1, "t0": t0, "t1": t1, "n": grid.n, "h": grid.h})
    yb, v, s, e, c = (rows.column(k).to_numpy() for k in ("yb", "v", "s", "e", "c"))
    bounds = _group_bounds(yb)  # one step bin at a time: the rows come ordered by it
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        grid.add(int(yb[lo]), v[lo:hi], s[lo:hi].astype(np.int64), e[lo:hi].astype(np.int64),
                 c[lo:hi].astype(np.int64))  # fmt: skip
    return pa.table(grid.cells(), schema=_HEATMAP)


def heatmap_of_table(entries: pa.Table, column: str, width: int, height: int, step_range: tuple[int, int],
                     token_range: tuple[int, int], *, agg: str = "mean", iteration: int = 0) -> pa.Table:  # fmt: skip
    """`Run.span_heatmap` over an in-memory entries table (e.g. a re-plan's): the same query, so the
    same cells as a run folder holding those rows."""
    if agg not in binning.AGGS:
        raise ValueError(f"agg must be one of mean, min, max; got {agg!r}")
    con = duckdb.connect()
    con.register("_mc_entries", entries)
    try:
        run_sql = lambda q, params: con.sql(q, params=params).to_arrow_table()  # noqa: E731
        return _bin_entries(run_sql, "_mc_entries", {"it": iteration}, column, width, height, step_range,
                            token_range, agg)  # fmt: skip
    finally:
        con.close()


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
