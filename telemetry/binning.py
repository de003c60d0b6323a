"""Heatmaps over (token position, step): the bin geometry, defined once, and `SpanGrid`, the one
binner that spreads entries over the token bins their spans intersect.

A range of integers `[lo, lo + extent)` (token positions; steps `[s0, s1]` as `[s0, s1 + 1)`) is cut
into `bins` bins, `bins <= extent`:

- value `p` falls in bin `(p - lo) * bins // extent`;
- bin `b` covers `[bin_start(b), bin_start(b + 1))`, where `bin_start(b) = lo + ceil(b * extent / bins)`.

So every bin holds at least one value, and with `bins == extent` each value is its own bin. The
geometry is plain arithmetic (numpy arrays, Python ints, and numba, which compiles these functions as
they are), and `sql_bin_of` writes the step bin as DuckDB SQL from the same formula.

`SpanGrid` bins for every heatmap: a run folder's (`telemetry.heatmap`, behind `Run.span_heatmap`:
DuckDB reads and merges the rows, this spreads them), an in-memory table's, and the Knobs lab's
re-plan, whose one-pass measure (`studio.fast_replay.MeasureSink`) feeds it each step as the replay makes it. So
recorded and re-planned timelines are the same cells by construction.
"""

from __future__ import annotations

import numba
import numpy as np


def bin_of(p, lo, extent, bins):
    """Bin of value(s) `p` (ints or int arrays)."""
    return (p - lo) * bins // extent


def bin_start(b, lo, extent, bins):
    """First value of bin(s) `b`; `bin_start(b + 1)` is one past its last."""
    return lo + (b * extent + bins - 1) // bins


def sql_bin_of(p: str, lo: str, extent: str, bins: str) -> str:
    """`bin_of` as a DuckDB expression over column or parameter names (`//` is integer division there too)."""
    return f"(({p} - {lo}) * {bins} // {extent})"


def cell_edges(xb: np.ndarray, yb: np.ndarray, t0: int, t1: int, s0: int, s1: int, w: int, h: int) -> dict:
    """The token and step range of cells (x bin, y bin) of a w x h grid over tokens `[t0, t1)` and steps
    `[s0, s1]`: token_lo, token_hi (half-open, int64) and step_lo, step_hi (inclusive, int32)."""
    span, n = t1 - t0, s1 - s0 + 1
    return {
        "token_lo": bin_start(xb.astype(np.int64), t0, span, w).astype(np.int64),
        "token_hi": bin_start(xb.astype(np.int64) + 1, t0, span, w).astype(np.int64),
        "step_lo": bin_start(yb.astype(np.int64), s0, n, h).astype(np.int32),
        "step_hi": (bin_start(yb.astype(np.int64) + 1, s0, n, h) - 1).astype(np.int32),
    }


_bin_of, _bin_start = numba.njit(cache=True)(bin_of), numba.njit(cache=True)(bin_start)
AGGS = ("mean", "min", "max")


@numba.njit(cache=True, nogil=True)
def _spread(v, c, s, e, t0, t1, w, span, agg, sums, weights):
    """Spread rows (value `v`, standing for `c` entries, over tokens [s, e)) over the token bins of one
    step row, weighted by the tokens each covers in a bin: `sums` gets value x tokens (agg 0, "mean"),
    or the least (1, "min") or greatest (2, "max") value; `weights` the token-steps covered."""
    for i in range(v.shape[0]):
        lo, hi = max(s[i], t0), min(e[i], t1)
        if hi <= lo:
            continue
        for xb in range(_bin_of(lo, t0, span, w), _bin_of(hi - 1, t0, span, w) + 1):
            ov = min(hi, _bin_start(xb + 1, t0, span, w)) - max(lo, _bin_start(xb, t0, span, w))
            if agg == 0:
                sums[xb] += v[i] * ov
            elif (agg == 1 and v[i] < sums[xb]) or (agg == 2 and v[i] > sums[xb]):
                sums[xb] = v[i]
            weights[xb] += ov * c[i]


class SpanGrid:
    """A heatmap of at most `width` x `height` cells over tokens `[t0, t1)` and steps `[s0, s1]`, filled
    one step bin at a time: rows come in nondecreasing step-bin order (a finished bin row becomes cells
    at once), so memory is the cells made, never the whole grid.

    A cell's value is the token-weighted mean of the values in it (`agg="mean"`), or their least or
    greatest; its weight, the token-steps covered. `cells()` gives the non-empty cells in (y_bin,
    x_bin) order: x_bin, y_bin, token_lo, token_hi (half-open), step_lo, step_hi (inclusive), value
    (float32), weight.
    """

    def __init__(self, width: int, height: int, step_range: tuple[int, int], token_range: tuple[int, int],
                 agg: str = "mean") -> None:  # fmt: skip
        if agg not in AGGS:
            raise ValueError(f"agg must be one of {', '.join(AGGS)}; got {agg!r}")
        (s0, s1), (t0, t1) = (int(x) for x in step_range), (int(x) for x in token_range)
        self.step_range, self.token_range, self.agg = (s0, s1), (t0, t1), agg
        self.n, self.span = max(s1 - s0 + 1, 1), max(t1 - t0, 1)
        self.w, self.h = min(width, self.span), min(height, self.n)
        self._agg = AGGS.index(agg)
        self._fill = (0.0, np.inf, -np.inf)[self._agg]
        self.sums, self.weights = np.full(self.w, self._fill), np.zeros(self.w, np.int64)
        self.y = -1
        self._ones = np.ones(0, np.int64)
        self._cells: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []

    def y_of(self, step: int) -> int:
        return bin_of(int(step), self.step_range[0], self.n, self.h)

    def add(self, y: int, v: np.ndarray, s: np.ndarray, e: np.ndarray, c: np.ndarray | None = None) -> None:
        """Rows of step bin `y` (not below the last one added): values `v` over tokens [s, e), each
        standing for `c` entries (default 1; a row merging entries of one span holds their sum, or min,
        or max, and their count)."""
        if y != self.y:
            self._flush()
            self.y = y
        if c is None:
            if self._ones.shape[0] < v.shape[0]:
                self._ones = np.ones(max(v.shape[0], 2 * self._ones.shape[0]), np.int64)
            c = self._ones[: v.shape[0]]
        t0, t1 = self.token_range
        _spread(v, c, s, e, t0, t1, self.w, self.span, self._agg, self.sums, self.weights)

    def _flush(self) -> None:
        if self.y < 0:
            return
        x = np.flatnonzero(self.weights)
        if x.size:
            value = self.sums[x] / self.weights[x] if self._agg == 0 else self.sums[x]
            self._cells.append((x, self.y, value, self.weights[x]))
        self.sums.fill(self._fill)
        self.weights.fill(0)

    def cells(self) -> dict[str, np.ndarray]:
        self._flush()
        self.y = -1
        parts = self._cells
        xb = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        yb = np.concatenate([np.full(p[0].shape[0], p[1], np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
        s0, t0 = self.step_range[0], self.token_range[0]
        return {
            "x_bin": xb.astype(np.int32),
            "y_bin": yb.astype(np.int32),
            **cell_edges(xb, yb, t0, t0 + self.span, s0, s0 + self.n - 1, self.w, self.h),
            "value": (np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)).astype(np.float32),
            "weight": (np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64)).astype(np.int64),
        }
