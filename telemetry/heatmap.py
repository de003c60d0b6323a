"""The heatmap query: one entries column binned over (token position, step) in DuckDB, each entry
spread over only the token bins its span intersects (`_bin_entries`, the SQL behind
`telemetry.reader.Run.span_heatmap`), and the same query over an in-memory entries table
(`heatmap_of_table`, e.g. a re-plan's), so that both give the same cells.

The bin geometry is `telemetry.binning`'s. `_quote` (a column name as a DuckDB identifier, refused
unless plain) is shared with `Run.table`. This module does not find a run's files nor cut a stopped
run: it is given a FROM-item and a way to run SQL.
"""

from __future__ import annotations

import functools
import re

import duckdb
import pyarrow as pa

from telemetry import binning

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _quote(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"bad column name {name!r}")
    return f'"{name}"'


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
