"""Engine events -> the columns of their telemetry table, ready to buffer, and a column's buffered
parts -> one Arrow array, once per flush.

`_columns(event)` gives (table, columns) of any data event; both sinks buffer them
(`telemetry.writer.ParquetSink`, `telemetry.memory.ArrowSink`). The Parquet sink's fast path: a
column that is already a numpy array of its field's exact dtype (or a scalar that fits it) cannot
fail a schema check, so `_fast_columns` keeps it as numpy (one value for all rows as `_Scalar`,
decision codes as `_Codes`) and `_concat` converts a column's buffered parts once per flush; any
other event goes through `schema.columns_to_arrays` (full checks, one-line errors). Converting per
event cost a few microseconds per column, a sizeable share of a small model's step.

This module writes nothing and holds no buffers: the buffers, parts and manifest are the sink's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from contract.events import (
    AttentionRecorded,
    DecisionsRecorded,
    EntriesRecorded,
    Event,
    GistsRecorded,
    LensAttention,
    NodesAdded,
    StepRecorded,
    TextRecorded,
)
from telemetry.schema import ACTIONS, OUTCOMES, SCHEMAS, TABLES, SchemaError, numpy_dtype, vectors_array

_ACTIONS = pa.array(ACTIONS, pa.string())
_OUTCOMES = pa.array(OUTCOMES, pa.string())


# Event fields carry the column names of their table (x, y of nodes are left null: filled in later).
_TABLE_OF = {
    EntriesRecorded: "entries",
    NodesAdded: "nodes",
    TextRecorded: "text",
    GistsRecorded: "gists",
    AttentionRecorded: "attention",
    LensAttention: "lens_attention",
    StepRecorded: "steps",
}
_FIELDS_OF: dict[type, tuple[str, ...]] = {}  # event type -> its fields that are columns of its table


def _columns(ev: Event) -> tuple[str, dict[str, object]]:
    """(table, columns) of one data event; the schema does the typing and the checks."""
    if isinstance(ev, DecisionsRecorded):
        d = ev.decisions
        cols = {k: getattr(d, k) for k in ("node_id", "lod_from", "lod_to", "score", "forced", "seq")}
        cols["action"] = _ACTIONS.take(pa.array(d.action, pa.int8()))  # codes -> public names
        cols["outcome"] = _OUTCOMES.take(pa.array(d.outcome, pa.int8()))
        return "decisions", {**cols, "step": ev.step, "iteration": ev.iteration}
    table = _TABLE_OF.get(type(ev))
    if table is None:
        raise TypeError(f"ParquetSink cannot record event of type {type(ev).__name__}")
    names = _FIELDS_OF.get(type(ev))
    if names is None:
        names = _FIELDS_OF[type(ev)] = tuple(n for n in SCHEMAS[table].names if hasattr(ev, n))
    return table, {n: getattr(ev, n) for n in names}


# ------------------------------------------------------------------------- fast path, flush


# Per table, per field: (name, Arrow type, nullable, numpy dtype or None for strings, lo, hi). A numpy
# column of exactly that dtype passes every check of `columns_to_arrays` by construction (no cast, no
# overflow, no nulls), and so do the scalars `_scalar_fits` accepts; anything else takes the checked path.
def _spec(field: pa.Field) -> tuple:
    if pa.types.is_string(field.type):
        return field.name, field.type, field.nullable, None, 0, 0
    dt = numpy_dtype(field.type)
    lo, hi = (int(np.iinfo(dt).min), int(np.iinfo(dt).max)) if dt.kind in "iu" else (0, 0)
    return field.name, field.type, field.nullable, dt, lo, hi


_SPECS = {t: tuple(_spec(f) for f in SCHEMAS[t]) for t in TABLES}
_NAMES = {t: frozenset(SCHEMAS[t].names) for t in TABLES}
_F32_MAX = float(np.finfo(np.float32).max)


def _scalar_fits(v: object, dt: np.dtype, lo: int, hi: int) -> bool:
    """True when `v` converts to `dt` exactly as pyarrow would convert it (else: the checked path)."""
    if dt.kind in "iu":  # `type(v) is int`: a bool is no integer here (pyarrow refuses it too)
        return (type(v) is int or isinstance(v, np.integer)) and lo <= v <= hi
    if dt.kind == "f":  # beyond float32's range pyarrow gives inf where numpy warns: leave those to pyarrow
        return (type(v) is float or isinstance(v, np.floating)) and not (abs(v) > _F32_MAX and np.isfinite(v))
    return dt.kind == "b" and (type(v) is bool or isinstance(v, np.bool_))


def _fast_columns(table: str, cols: dict[str, object]) -> tuple[list, int] | None:
    """Buffer-ready columns (numpy of the exact dtype, typed Arrow arrays, or `_Scalar` placeholders
    for one value on every row) when no check can fail; None sends the event down
    `columns_to_arrays`, which checks everything and names what is wrong. One pass over the schema:
    this runs for every event (~6 per step), so it is kept to type checks and appends."""
    if not cols.keys() <= _NAMES[table]:
        return None
    n, out, scalars = -1, [], []
    for name, typ, nullable, dtype, lo, hi in _SPECS[table]:
        v = cols.get(name)
        tv = type(v)
        if tv is np.ndarray:
            if v.ndim != 1 or v.dtype != dtype:
                if not (v.ndim == 2 and typ == _VECTORS and v.dtype == np.float32):  # gists: a list per row
                    return None
            k = v.shape[0]
        elif tv is _Codes:  # range-checked on construction; only string fields take codes
            if dtype is not None:
                return None
            k = len(v)
        elif tv is list:  # only a list of str (node previews, block texts) is sure to fit, and only a string field
            if dtype is not None or not all(type(x) is str for x in v):
                return None
            k = len(v)
        elif v is None:
            if not nullable:
                return None
            scalars.append(len(out))
            out.append(_Scalar(None, 0))
            continue
        elif isinstance(v, pa.Array):
            if v.type != typ or v.null_count:
                return None
            k = len(v)
        elif dtype is not None and dtype.kind != "O" and _scalar_fits(v, dtype, lo, hi):
            scalars.append(len(out))
            out.append(_Scalar(v, 0))  # broadcast at flush, one call per column (a step has ~16 scalars)
            continue
        else:
            return None
        if n < 0:
            n = k
        elif k != n:
            return None
        out.append(v)
    n = 1 if n < 0 else n
    for i in scalars:
        out[i].n = n
    return out, n


def _decision_columns(ev: DecisionsRecorded) -> tuple[str, dict[str, object]]:
    """Decision columns with `action` / `outcome` still as int8 codes, wrapped so that only `_concat`
    turns them into their public names, once per flush (per event it was a large share of the sink)."""
    d = ev.decisions
    cols = {k: getattr(d, k) for k in ("node_id", "lod_from", "lod_to", "score", "forced", "seq")}
    cols["action"], cols["outcome"] = _Codes(d.action, _ACTIONS), _Codes(d.outcome, _OUTCOMES)
    return "decisions", {**cols, "step": ev.step, "iteration": ev.iteration}


_VECTORS = pa.list_(pa.float32())


class _Scalar:
    """One value of a column for all `n` rows of an event (checked to fit when buffered)."""

    __slots__ = ("n", "v")

    def __init__(self, v: object, n: int):
        self.v, self.n = v, n

    def __len__(self) -> int:
        return self.n


class _Codes:
    """int8 codes of a string column and their names; checked for range when buffered."""

    __slots__ = ("codes", "names")

    def __init__(self, codes: np.ndarray, names: pa.Array):
        codes = np.asarray(codes)
        if codes.size and (codes.dtype.kind not in "iu" or codes.min() < 0 or codes.max() >= len(names)):
            raise SchemaError(f"decisions: code outside 0..{len(names) - 1} in a string column")
        self.codes, self.names = codes.astype(np.int8, copy=False), names

    def __len__(self) -> int:
        return self.codes.shape[0]


def _concat(parts: list, typ: pa.DataType, name: str = "") -> pa.Array:
    """One Arrow array from a column's buffered parts: numpy arrays of the field's dtype, lists of
    str, typed Arrow arrays, or `_Codes` (all checked when their event arrived)."""
    if parts and all(type(p) is _Codes for p in parts):
        return parts[0].names.take(pa.array(np.concatenate([p.codes for p in parts]), pa.int8()))
    if parts and all(type(p) is _Scalar for p in parts):  # e.g. `step` of every event since the last flush
        values = [p.v for p in parts]
        if any(v is None for v in values):  # a nullable column (nll, or x/y of nodes): Python values, None = null
            return pa.array([v for p in parts for v in [p.v] * p.n], type=typ)
        return pa.array(np.repeat(np.array(values, numpy_dtype(typ)), [p.n for p in parts]), type=typ)
    if any(type(p) is _Scalar for p in parts):
        dt = numpy_dtype(typ)
        parts = [(pa.nulls(p.n, typ) if p.v is None else np.full(p.n, p.v, dt)) if type(p) is _Scalar else p
                 for p in parts]  # fmt: skip
    if parts and all(type(p) is np.ndarray and p.ndim == 2 for p in parts):
        return vectors_array(np.concatenate(parts))
    parts = [vectors_array(p) if type(p) is np.ndarray and p.ndim == 2 else p for p in parts]
    # An event that took the checked path buffered names, not codes: name the codes of the others too.
    parts = [p.names.take(pa.array(p.codes, pa.int8())) if type(p) is _Codes else p for p in parts]
    if all(type(p) is np.ndarray for p in parts):
        return pa.array(np.concatenate(parts), type=typ)  # one conversion per flush, not one per event
    if all(type(p) is list for p in parts):
        return pa.array([x for p in parts for x in p], type=typ)
    return pa.concat_arrays([p if isinstance(p, pa.Array) else pa.array(p, type=typ) for p in parts])
