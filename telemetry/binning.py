"""Heatmap bin geometry, defined once: in plain arithmetic (numpy arrays, Python ints, and numba,
which compiles these functions as they are) and as DuckDB SQL built from the same formulas.

A range of integers `[lo, lo + extent)` (token positions; steps `[s0, s1]` as `[s0, s1 + 1)`) is cut
into `bins` bins, `bins <= extent`:

- value `p` falls in bin `(p - lo) * bins // extent`;
- bin `b` covers `[bin_start(b), bin_start(b + 1))`, where `bin_start(b) = lo + ceil(b * extent / bins)`.

So every bin holds at least one value, and with `bins == extent` each value is its own bin. The LOD
timeline's three binners use this module: the reader's SQL (`telemetry.heatmap`, behind `Run.span_heatmap`),
the Knobs lab's one-pass measure (`studio.measure`, compiled) and every cell table's edges.
"""

from __future__ import annotations

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


def sql_bin_start(b: str, lo: str, extent: str, bins: str) -> str:
    """`bin_start` as a DuckDB expression."""
    return f"({lo} + ({b} * {extent} + {bins} - 1) // {bins})"


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
