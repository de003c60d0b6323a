"""The recording format: contract columns and types, validation messages, and a round trip per table."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contract.decisions
from contract import (
    AttentionRecorded,
    DecisionsRecorded,
    EntriesRecorded,
    LensAttention,
    NodesAdded,
    StepRecorded,
    TextRecorded,
)
from telemetry import SCHEMAS, Run, SchemaError, columns_to_arrays, schema, validate
from tests.telemetry_fixtures import events, record

I8, I16, I32, I64, F32, STR, BOOL = pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.float32(), pa.string(), pa.bool_()

# DESIGN section 4, word for word: these names and types are public.
CONTRACT = {
    "steps": {
        "step": I32,
        "tokens_seen": I64,
        "n_entries": I32,
        "wc_cost": I32,
        "w_max": I32,
        "nll": F32,
        "t_scorer_ms": F32,
        "t_allocator_ms": F32,
        "t_model_ms": F32,
    },
    "entries": {
        "step": I32,
        "node_id": I64,
        "lod": I8,
        "start": I64,
        "end": I64,
        "cost": I32,
        "raw_score": F32,
        "score": F32,
    },
    "decisions": {
        "step": I32,
        "node_id": I64,
        "lod_from": I8,
        "lod_to": I8,
        "action": STR,
        "score": F32,
        "outcome": STR,
        "forced": BOOL,
    },
    "attention": {"step": I32, "layer": I16, "node_id": I64, "mass": F32},
    "lens_attention": {"step": I32, "iteration": I16, "node_id": I64, "mass": F32},
    "nodes": {"node_id": I64, "lod": I8, "start": I64, "end": I64, "preview": STR, "step": I32, "x": F32, "y": F32},
    "gists": {"node_id": I64, "lod": I8, "step": I32, "vector": pa.list_(F32)},
    "text": {"step": I32, "node_id": I64, "start": I64, "end": I64, "text": STR},
}


def test_contract_columns_and_types():
    assert set(SCHEMAS) == set(CONTRACT)
    for table, cols in CONTRACT.items():
        for name, typ in cols.items():
            assert SCHEMAS[table].field(name).type == typ, (table, name)
    assert SCHEMAS["steps"].field("nll").nullable and not SCHEMAS["steps"].field("step").nullable
    assert SCHEMAS["nodes"].field("x").nullable
    assert schema.SCHEMA_VERSION == 1


def test_enums_are_the_engines():
    assert schema.ACTIONS is contract.decisions.ACTIONS
    assert schema.OUTCOMES is contract.decisions.OUTCOMES


def _good(table: str) -> pa.Table:
    return SCHEMAS[table].empty_table()


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda t: t.drop_columns(["nll"]), "steps: missing column 'nll'"),
        (lambda t: t.set_column(0, "step", pa.array([], I64)), "steps: column 'step' is int64, expected int32"),
        (lambda t: t.append_column("foo", pa.array([], I32)), "steps: unexpected column 'foo'"),
    ],
)
def test_validate_names_table_and_column(mutate, match):
    validate("steps", _good("steps"))
    with pytest.raises(SchemaError, match=match) as e:
        validate("steps", mutate(_good("steps")))
    assert "\n" not in str(e.value)


def test_validate_nulls_and_unknown_table():
    t = pa.table({"step": pa.array([None], I32), "layer": pa.array([0], I16)})
    t = t.append_column("node_id", pa.array([1], I64)).append_column("mass", pa.array([0.5], F32))
    with pytest.raises(SchemaError, match="attention: column 'step' has nulls"):
        validate("attention", t)
    with pytest.raises(SchemaError, match="unknown table 'bogus'"):
        validate("bogus", t)


def test_columns_to_arrays_checks_fit_and_lengths():
    cols = {"step": 3, "layer": np.array([0, 1]), "node_id": np.array([5, 6]), "mass": np.array([0.5, 0.5])}
    arrays, n = columns_to_arrays("attention", cols)
    assert n == 2 and arrays[0].to_pylist() == [3, 3] and arrays[1].type == I16
    with pytest.raises(SchemaError, match="attention: column 'layer' does not fit int16"):
        columns_to_arrays("attention", {**cols, "layer": np.array([0, 70_000])})
    with pytest.raises(SchemaError, match="attention: column 'mass' has 1 rows, expected 2"):
        columns_to_arrays("attention", {**cols, "mass": np.array([0.5])})
    with pytest.raises(SchemaError, match="attention: missing column 'mass'"):
        columns_to_arrays("attention", {k: v for k, v in cols.items() if k != "mass"})


def test_telemetry_imports_no_torch():
    code = (
        "import sys, telemetry.schema, telemetry.writer, telemetry.reader, telemetry.metrics; "
        "bad = [m for m in ('torch', 'transformers', 'streamlit') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _concat(evs, kind, get):
    return np.concatenate([np.asarray(get(e)) for e in evs if isinstance(e, kind)])


def test_round_trip_every_table(tmp_path):
    evs = events(7)
    record(tmp_path / "run", evs, flush_rows=40)  # several parts per table
    run = Run(tmp_path / "run")
    assert len(run.parts("entries")) > 1
    for table, cols in CONTRACT.items():
        t = run.table(table)
        assert t.num_rows > 0, table
        for name, typ in cols.items():
            assert t.schema.field(name).type == typ, (table, name)
        validate(table, t.cast(SCHEMAS[table]))  # also no nulls where the schema forbids them
        for part in run.parts(table):  # the public format: plain pyarrow reads each part with the exact schema
            assert pq.read_schema(part).remove_metadata() == SCHEMAS[table]

    ent = run.table("entries")
    assert np.array_equal(ent["node_id"].to_numpy(), _concat(evs, EntriesRecorded, lambda e: e.node_id))
    assert np.array_equal(ent["score"].to_numpy(), _concat(evs, EntriesRecorded, lambda e: e.score))
    dec = run.table("decisions")
    rows = [r for e in evs if isinstance(e, DecisionsRecorded) for r in e.decisions.rows()]
    assert dec.select(["node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq"]).to_pylist() == [
        {**r, "score": float(np.float32(r["score"]))} for r in rows
    ]
    assert set(dec["action"].to_pylist()) == {"expand", "collapse", "evict"}
    steps = run.table("steps")
    nll = [e.nll for e in evs if isinstance(e, StepRecorded)]
    assert [None if v is None else round(v, 5) for v in steps["nll"].to_pylist()] == nll
    att = run.table("attention")
    assert np.array_equal(att["node_id"].to_numpy(), _concat(evs, AttentionRecorded, lambda e: e.node_id))
    lens = run.table("lens_attention")
    assert np.allclose(lens["mass"].to_numpy(), _concat(evs, LensAttention, lambda e: e.mass))
    nodes_t = run.table("nodes")
    assert nodes_t["preview"].to_pylist() == [p for e in evs if isinstance(e, NodesAdded) for p in e.preview]
    assert nodes_t["x"].null_count == nodes_t.num_rows
    text_t = run.table("text")
    assert text_t["text"].to_pylist() == [x for e in evs if isinstance(e, TextRecorded) for x in e.text]


def test_duckdb_reads_strings_as_varchar(tmp_path):
    record(tmp_path / "run", events(4))
    con = duckdb.connect()
    glob = str(tmp_path / "run" / "decisions" / "*.parquet")
    rows = con.sql(f"DESCRIBE SELECT action, outcome, forced FROM read_parquet('{glob}')").fetchall()
    types = {r[0]: r[1] for r in rows}
    assert types == {"action": "VARCHAR", "outcome": "VARCHAR", "forced": "BOOLEAN"}
    n = con.sql(f"SELECT count(*) FROM read_parquet('{glob}') WHERE action = 'expand' AND outcome = 'applied'")
    assert n.fetchall()[0][0] > 0


def test_a_fractional_value_never_lands_in_an_integer_column():
    import numpy as np
    import pytest

    from telemetry import SchemaError, columns_to_arrays

    good = {"layer": np.array([0], np.int16), "node_id": np.array([1]), "mass": np.array([0.5], np.float32)}
    with pytest.raises(SchemaError, match="'step'"):
        columns_to_arrays("attention", {**good, "step": 1.5})  # a scalar, broadcast as a Python list
    with pytest.raises(SchemaError, match="'layer'"):
        columns_to_arrays("attention", {**good, "step": 1, "layer": [0.5]})
    arrays, n = columns_to_arrays("attention", {**good, "step": 2})
    assert n == 1 and arrays[0].to_pylist() == [2]
