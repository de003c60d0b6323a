"""`ArrowSink`: collect a session's (or a replay's) events as in-memory Arrow tables.

The same typed columns as a run folder, without files: the knobs lab re-plans a recording with
new knobs into an `ArrowSink` and hands its tables straight to `telemetry.run_metrics.summarize`.
Events are buffered as numpy arrays and converted once per column when a table is asked for
(thousands of small conversions cost more than the re-planning itself); the conversion applies the
schema, so a value that does not fit its column still raises. Nodes, gists and lifecycle events are ignored.

`columns` keeps only some columns of a table (e.g. the knobs lab needs only what the metrics read:
`ArrowSink(columns={"entries": LAB_ENTRIES})`); the table then has just those, in schema order, with
the same values. By default every column is kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from contract.decisions import ACTIONS, OUTCOMES
from contract.events import (
    DecisionsRecorded,
    EntriesRecorded,
    Event,
    GistsRecorded,
    NodesAdded,
    RunFinished,
    RunStarted,
    StepRecorded,
    TextRecorded,
)
from telemetry.event_columns import _columns
from telemetry.schema import SCHEMAS, field_array, numpy_dtype

KEPT = ("steps", "entries", "decisions", "attention", "lens_attention")
LAB_ENTRIES = ("step", "iteration", "node_id", "lod", "start", "end", "score")  # what telemetry.metrics reads


def _int_range(t: pa.DataType) -> tuple[np.dtype, int, int]:
    dt = numpy_dtype(t)
    return dt, int(np.iinfo(dt).min), int(np.iinfo(dt).max)


_INT_RANGE = {(t, f.name): _int_range(f.type) for t in SCHEMAS for f in SCHEMAS[t] if pa.types.is_integer(f.type)}
_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(EntriesRecorded) if f.name in SCHEMAS["entries"].names)
_CODES = {"action": pa.array(ACTIONS, pa.string()), "outcome": pa.array(OUTCOMES, pa.string())}


class ArrowSink:
    def __init__(self, tables: tuple[str, ...] = KEPT, columns: dict[str, tuple[str, ...]] | None = None):
        columns = columns or {}
        for t, names in columns.items():
            unknown = [c for c in names if c not in SCHEMAS[t].names]
            if unknown:
                raise ValueError(f"ArrowSink: {t} has no column {unknown[0]!r}")
        self._cols: dict[str, dict[str, list]] = {
            t: {c: [] for c in SCHEMAS[t].names if t not in columns or c in columns[t]} for t in tables
        }

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted | RunFinished | NodesAdded | TextRecorded | GistsRecorded):
            return
        if isinstance(event, DecisionsRecorded):  # keep the codes; names are looked up once, at the end
            if "decisions" not in self._cols:
                return
            d, cols, n = event.decisions, self._cols["decisions"], len(event.decisions)
            for name in ("node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq"):
                if name in cols:
                    cols[name].append(getattr(d, name))
            if "step" in cols:
                cols["step"].append(np.full(n, event.step, np.int32))
            if "iteration" in cols:
                cols["iteration"].append(np.full(n, event.iteration, np.int16))
            return
        if type(event) is EntriesRecorded:  # the bulk of a replay: every field is an array but step, iteration
            kept = self._cols.get("entries")
            if kept is not None:
                vals = {f: getattr(event, f) for f in _ENTRY_FIELDS}
                n = max((len(v) for v in vals.values() if isinstance(v, np.ndarray | list)), default=1)
                for name, parts in kept.items():
                    v = vals[name]
                    parts.append(v if isinstance(v, np.ndarray | list) else _Scalar(v, n))
                return
        if type(event) is StepRecorded:  # one per step, every field a scalar: one row
            kept = self._cols.get("steps")
            if kept is None:
                return
            vals = [(parts, getattr(event, name, None)) for name, parts in kept.items()]
            if not any(isinstance(v, np.ndarray | list) for _, v in vals):
                for parts, v in vals:
                    parts.append(_Scalar(v, 1))
                return
        table, cols = _columns(event)
        if table not in self._cols:
            return
        n = max((len(v) for v in cols.values() if isinstance(v, np.ndarray | list)), default=1)
        for name, parts in self._cols[table].items():
            v = cols.get(name)
            parts.append(v if isinstance(v, np.ndarray | list) else _Scalar(v, n))

    def table(self, name: str) -> pa.Table:
        """Everything collected for `name` as one table, in emission (step) order."""
        cols, kept = {}, self._cols[name]
        for field in SCHEMAS[name]:
            if field.name not in kept:
                continue
            v = _concat(name, field.name, kept[field.name])
            if field.name in _CODES and name == "decisions":
                cols[field.name] = _CODES[field.name].take(pa.array(v.astype(np.int8), pa.int8()))
            else:
                cols[field.name] = v
        # All columns or a subset: each goes through the schema's one checked conversion.
        schema = pa.schema([f for f in SCHEMAS[name] if f.name in cols])
        return pa.Table.from_arrays([field_array(name, f, cols[f.name]) for f in schema], schema=schema)


class _Scalar:
    """One event's scalar value for `n` rows, materialised only when the table is asked for."""

    __slots__ = ("v", "n")

    def __init__(self, v: object, n: int):
        self.v, self.n = v, n


def _concat(table: str, name: str, parts: list) -> np.ndarray:
    """One column from its parts. Scalars become object arrays (the schema conversion checks them),
    except where every part is a scalar int that fits the column's integer type: then they are built
    in that type at once (the same values, without an object array per event)."""
    if not parts:
        return np.zeros(0)
    if not all(type(p) is _Scalar for p in parts):
        return np.concatenate([np.full(p.n, p.v, dtype=object) if type(p) is _Scalar else p for p in parts])
    vals = [p.v for p in parts]
    rng = _INT_RANGE.get((table, name))
    if rng is not None and all((type(x) is int or isinstance(x, np.integer)) and rng[1] <= x <= rng[2] for x in vals):
        arr = np.array(vals, rng[0])
    else:
        arr = np.empty(len(vals), object)
        arr[:] = vals
    counts = np.fromiter((p.n for p in parts), np.int64, len(parts))
    return arr if np.all(counts == 1) else np.repeat(arr, counts)
