"""The recording format: one pyarrow schema per telemetry table, and the checks every write passes.

A run folder holds one folder of Parquet part files per table named in `SCHEMAS`. The columns in
`CONTRACT` are public (DESIGN section 4): other tools read them, so they are never renamed or
retyped without bumping `SCHEMA_VERSION`. The other columns are ours to add to freely.

`columns_to_arrays` turns one event's numpy columns into typed Arrow arrays (raising `SchemaError`
on a wrong length, an unsafe cast or an overflow); `validate` checks a whole table. This module
does no I/O and knows nothing of events: the writer maps events to columns.

Action and outcome are plain strings: Parquet dictionary-encodes them on disk anyway, and plain
strings read back as VARCHAR in every tool without a dictionary-type detour.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from contract.decisions import ACTIONS, OUTCOMES  # one source of truth for the public names

SCHEMA_VERSION = 1

__all__ = ["ACTIONS", "CONTRACT", "OUTCOMES", "SCHEMAS", "SCHEMA_VERSION", "TABLES", "SchemaError"]
__all__ += ["columns_to_arrays", "empty_table", "validate", "check_part_schema"]


class SchemaError(ValueError):
    """A batch or a file does not match its table's schema; the message names table and column."""


def _f(name: str, typ: pa.DataType, nullable: bool = False) -> pa.Field:
    # Non-null by default: a null where the engine always writes a value is a bug worth catching.
    return pa.field(name, typ, nullable=nullable)


i8, i16, i32, i64, f32 = pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.float32()

SCHEMAS: dict[str, pa.Schema] = {
    "steps": pa.schema(
        [
            _f("step", i32),
            _f("tokens_seen", i64),
            _f("n_entries", i32),  # after the step's edits
            _f("n_entries_start", i32),  # when the step began (new blocks appended, no edits yet)
            _f("wc_cost", i32),  # after the step's edits, tail included
            _f("w_max", i32),
            _f("nll", f32, nullable=True),  # next block's NLL under this step's WC; null if not computed
            _f("t_scorer_ms", f32),
            _f("t_allocator_ms", f32),
            _f("t_model_ms", f32),
            _f("evicted_upto", i64),
            _f("n_applied", i32),
            _f("n_forced", i32),
            _f("nll_full", f32, nullable=True),
            _f("nll_recency", f32, nullable=True),
            _f("t_tree_ms", f32),
        ]
    ),
    "entries": pa.schema(
        [
            _f("step", i32),
            _f("iteration", i16),
            _f("node_id", i64),
            _f("lod", i8),
            _f("start", i64),
            _f("end", i64),
            _f("cost", i32),
            _f("raw_score", f32),
            _f("score_interp", f32),
            _f("score_shift", f32),
            _f("score", f32),  # after the whole pipeline: the allocator's input
        ]
    ),
    "decisions": pa.schema(
        [
            _f("step", i32),
            _f("iteration", i16),
            _f("node_id", i64),  # the coarse node of the edit (see contract/decisions.py)
            _f("lod_from", i8),
            _f("lod_to", i8),  # -1 for an eviction
            _f("action", pa.string()),  # one of ACTIONS
            _f("score", f32),
            _f("outcome", pa.string()),  # one of OUTCOMES
            _f("forced", pa.bool_()),
            _f("seq", i32),  # order of application within the round; -1 if not applied
        ]
    ),
    "attention": pa.schema(
        [
            _f("step", i32),
            _f("layer", i16),
            _f("node_id", i64),  # -1 marks the raw tail
            _f("mass", f32),
        ]
    ),
    "lens_attention": pa.schema(
        [
            _f("step", i32),
            _f("iteration", i16),
            _f("node_id", i64),
            _f("mass", f32),
        ]
    ),
    "nodes": pa.schema(
        [
            _f("node_id", i64),
            _f("lod", i8),
            _f("start", i64),
            _f("end", i64),
            _f("preview", pa.string()),
            _f("step", i32),  # first step at which the node exists
            _f("x", f32, nullable=True),  # 2-D projection, filled in later (null until then)
            _f("y", f32, nullable=True),
        ]
    ),
    # The document: every block's (LOD0 node's) whole text, decoded block by block, for the text view.
    "text": pa.schema(
        [
            _f("step", i32),  # first step at which the block exists
            _f("node_id", i64),  # the block's LOD0 node
            _f("start", i64),
            _f("end", i64),
            _f("text", pa.string()),  # decoded on its own: a character cut at a block edge reads as U+FFFD
        ]
    ),
    # Gist vectors (LOD>=1) in the base model's embedding space, for the gist map; optional
    # (`session.record_gists`). d is the model's hidden size, the same for every row of a run.
    "gists": pa.schema(
        [
            _f("node_id", i64),
            _f("lod", i8),
            _f("step", i32),  # first step at which the gist exists
            _f("vector", pa.list_(f32)),
        ]
    ),
}
TABLES = tuple(SCHEMAS)

# The public columns (DESIGN section 4). The auxiliary tables have no contract in the design;
# their identifying columns are held to the same standard so a foreign file cannot pass for a part.
CONTRACT: dict[str, tuple[str, ...]] = {
    "steps": ("step", "tokens_seen", "n_entries", "wc_cost", "w_max", "nll", "t_scorer_ms", "t_allocator_ms")
    + ("t_model_ms",),
    "entries": ("step", "node_id", "lod", "start", "end", "cost", "raw_score", "score"),
    "decisions": ("step", "node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced"),
    "attention": ("step", "layer", "node_id", "mass"),
    "lens_attention": ("step", "iteration", "node_id", "mass"),
    "nodes": ("node_id", "lod", "start", "end", "preview", "step"),
    "gists": ("node_id", "lod", "step", "vector"),
    "text": ("step", "node_id", "start", "end", "text"),
}


def _schema(table: str) -> pa.Schema:
    if table not in SCHEMAS:
        raise SchemaError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    return SCHEMAS[table]


def empty_table(table: str) -> pa.Table:
    return _schema(table).empty_table()


def columns_to_arrays(table: str, columns: dict[str, object]) -> tuple[list[pa.Array], int]:
    """Typed arrays, in schema order, for one batch of `columns` (numpy arrays, lists or scalars).

    Scalars are broadcast to the batch length (the steps table gets one row per event). Raises
    SchemaError on a missing or unknown column, unequal lengths, or a value that does not fit.
    """
    schema = _schema(table)
    extra = set(columns) - set(schema.names)
    if extra:
        raise SchemaError(f"{table}: unexpected column {sorted(extra)[0]!r}")
    n = None
    for name, v in columns.items():
        if isinstance(v, np.ndarray | list | pa.Array):
            if n is None:
                n = len(v)
            elif len(v) != n:
                raise SchemaError(f"{table}: column {name!r} has {len(v)} rows, expected {n}")
    n = 1 if n is None else n
    arrays = []
    for field in schema:
        if field.name not in columns:
            if not field.nullable:
                raise SchemaError(f"{table}: missing column {field.name!r}")
            arrays.append(pa.nulls(n, field.type))
            continue
        v = columns[field.name]
        if not isinstance(v, np.ndarray | list | pa.Array):
            v = [v] * n
        arrays.append(field_array(table, field, v))
    return arrays, n


def field_array(table: str, field: pa.Field, v) -> pa.Array:
    """One column's values (numpy array, list or Arrow array) as a typed Arrow array, checked.

    Raises SchemaError naming the table and column if a value does not fit the type (no silent
    truncation or overflow) or a non-null column holds nulls.
    """
    if pa.types.is_integer(field.type) and isinstance(v, list) and None not in v:
        # From a Python list pyarrow truncates 1.5 to 1 without a word; from numpy it refuses.
        v = np.asarray(v)
    if isinstance(v, np.ndarray) and v.ndim == 2 and pa.types.is_list(field.type):
        v = vectors_array(v)  # [rows, d] -> one list per row
    try:
        # pa.array casts safely from numpy: an int64 that does not fit int8, or 1.5 into an int, raises.
        arr = v.cast(field.type) if isinstance(v, pa.Array) else pa.array(v, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SchemaError(f"{table}: column {field.name!r} does not fit {field.type}: {msg}") from None
    if not field.nullable and arr.null_count:
        raise SchemaError(f"{table}: column {field.name!r} has {arr.null_count} nulls, expected none")
    return arr


_NUMPY = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
          pa.float32(): np.float32, pa.float64(): np.float64, pa.bool_(): np.bool_}  # fmt: skip


def numpy_dtype(typ: pa.DataType) -> np.dtype:
    """numpy dtype of a fixed-width column type (object for strings and lists), without pandas
    (`pa.DataType.to_pandas_dtype` imports it)."""
    return np.dtype(_NUMPY.get(typ, object))


def vectors_array(v: np.ndarray) -> pa.Array:
    """float32[k, d] rows -> a list<float32> Arrow array of k rows."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.ndim != 2:
        raise SchemaError(f"gists: column 'vector' must be 2-D [rows, d], got shape {v.shape}")
    offsets = pa.array(np.arange(v.shape[0] + 1, dtype=np.int32) * v.shape[1], pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(v.reshape(-1), pa.float32()))


def validate(table: str, data: pa.Table | pa.RecordBatch, *, allow_extra: bool = False) -> None:
    """Raise SchemaError (one line naming table and column) unless `data` matches the table's schema.

    Checks: every column present with its exact type, no nulls in non-null columns, and (unless
    `allow_extra`) no columns beyond the schema. Column order is not checked.
    """
    schema = _schema(table)
    for field in schema:
        idx = data.schema.get_field_index(field.name)
        if idx < 0:
            raise SchemaError(f"{table}: missing column {field.name!r}")
        got = data.schema.field(idx).type
        if got != field.type:
            raise SchemaError(f"{table}: column {field.name!r} is {got}, expected {field.type}")
        if not field.nullable and data.column(idx).null_count:
            raise SchemaError(f"{table}: column {field.name!r} has nulls, expected none")
    if not allow_extra:
        extra = [n for n in data.schema.names if n not in schema.names]
        if extra:
            raise SchemaError(f"{table}: unexpected column {extra[0]!r}")


def check_part_schema(table: str, file_schema: pa.Schema) -> None:
    """Check a part file's schema (as read from its footer) against the public contract.

    Readers accept extra columns (a newer writer of the same version may add some) and missing
    non-contract columns (they read as null); a contract column missing or of another type is an error.
    """
    schema = _schema(table)
    for name in CONTRACT[table]:
        idx = file_schema.get_field_index(name)
        if idx < 0:
            raise SchemaError(f"{table}: missing column {name!r}")
    for field in schema:
        idx = file_schema.get_field_index(field.name)
        if idx >= 0 and file_schema.field(idx).type != field.type:
            got = file_schema.field(idx).type
            raise SchemaError(f"{table}: column {field.name!r} is {got}, expected {field.type}")
