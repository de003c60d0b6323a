"""Fast replay against a checked-in fixture: a small real recording (tests/data/replay/rec) and the
tables and metrics its replay must give for eleven cases of knobs and recorded rounds
(tests/data/replay/expected, made by tests/data/replay/make_expected.py with the code that matched
the pre-optimisation loop, sink and metrics bit for bit). Also: the column-subset ArrowSink, the
metrics' shortcuts and the loading order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract import EntriesRecorded, StepRecorded, apply_overrides, nodes
from studio import Recording, load_recording, replay_fast
from studio.replay import _sorted_by_step_iteration
from telemetry import LAB_ENTRIES, ArrowSink, Run, StepReducer, metrics
from telemetry.arrays import _col, _per_step, _unique

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "replay"
TABLES = ("steps", "decisions", "entries")


def _load_fixture_module():
    # tests/data/ is no package: load the generator for its case list and helpers.
    spec = importlib.util.spec_from_file_location("make_expected", FIXTURE / "make_expected.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


fx = _load_fixture_module()


def _expected(case: str, table: str) -> pa.Table:
    return pq.read_table(FIXTURE / "expected" / case / f"{table}.parquet")


def _same(got: pa.Table, want: pa.Table, what: str) -> None:
    assert got.column_names == want.column_names, what
    assert got.num_rows == want.num_rows > 0, what
    assert got.equals(want.cast(got.schema)), what


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def recorded() -> Path:
    """The checked-in recording: random scorer (it thrashes), two scorer rounds per step, 75 steps."""
    return fx.REC


@pytest.fixture(scope="module")
def rec(recorded) -> Recording:
    return load_recording(recorded)


# --------------------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("case", list(fx.CASES))
def test_replay_gives_the_expected_tables(rec, case):
    got, lookups = fx.replay_tables(rec, case)
    for t in TABLES:
        _same(got[t], _expected(case, t), f"{case}: {t}")
    want = pq.read_table(FIXTURE / "expected" / "lookups.parquet").to_pydict()
    assert lookups == dict(zip(want["case"], want["approximate_lookups"], strict=True))[case]
    knobs, rounds = fx.CASES[case]
    if knobs and rounds != "round0":
        assert lookups > 0  # changed knobs (or dropped scores) lead to entries the recording never scored


def test_recorded_knobs_reproduce_the_recorded_decisions(recorded, rec):
    sink = ArrowSink(TABLES)
    stats = replay_fast(rec, rec.config, sink)
    assert not stats.approximate
    got = sink.table("decisions")
    want = Run(recorded).table("decisions", got.column_names)
    assert got.num_rows == want.num_rows > 0
    for c in got.column_names:
        assert got[c].to_pylist() == want[c].to_pylist(), c


# ---------------------------------------------------------------------------------- ArrowSink subset


def test_column_subset_sink_keeps_the_same_values(rec):
    full, _ = fx.replay_tables(rec, fx.METRICS_CASE)
    lab, _ = fx.replay_tables(rec, fx.METRICS_CASE, columns={"entries": LAB_ENTRIES, "decisions": ("step", "node_id")})
    assert lab["entries"].column_names == list(LAB_ENTRIES)
    assert lab["entries"].equals(full["entries"].select(list(LAB_ENTRIES)))
    assert lab["decisions"].equals(full["decisions"].select(["step", "node_id"]))
    assert lab["steps"].equals(full["steps"])  # tables not named keep every column
    assert full["entries"].num_columns == 11  # the default: all columns


def test_column_subset_sink_checks_names_and_values():
    with pytest.raises(ValueError, match="no column 'nope'"):
        ArrowSink(("entries",), columns={"entries": ("step", "nope")})
    sink = ArrowSink(("entries",), columns={"entries": ("step", "lod")})
    z = np.zeros(2)
    sink.emit(EntriesRecorded(2**40, 0, z.astype(np.int64), np.zeros(2, np.int8), z, z, z, z, z, z, z))
    with pytest.raises(Exception, match="step"):  # does not fit int32: still refused
        sink.table("entries")


def test_scalar_columns_convert_as_before():
    sink = ArrowSink(("steps",))
    for t in range(3):
        sink.emit(StepRecorded(t, 32 * t, 1, 2, 3, 4, 0, 1, 0, None if t else 1.5, None, None, 0.0, 0.1, 0.2, 0.3))
    s = sink.table("steps")
    assert s["step"].to_pylist() == [0, 1, 2] and s["nll"].to_pylist() == [1.5, None, None]
    assert s["tokens_seen"].type == pa.int64() and s["t_allocator_ms"].to_pylist()[0] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------ metrics


@pytest.fixture(scope="module")
def lab_tables(rec):
    tables, _ = fx.replay_tables(rec, fx.METRICS_CASE, columns={"entries": LAB_ENTRIES})
    return tables, apply_overrides(rec.config, fx.CASES[fx.METRICS_CASE][0])


def test_metrics_give_the_expected_tables(lab_tables):
    """locality, residency runs and coherence on the rows in recorded order, shuffled and cut."""
    t, cfg = lab_tables
    for variant, entries in fx.entry_variants(t["entries"]).items():
        got = fx.entry_metrics(entries, t["decisions"], cfg.allocator.tau_expand)
        for name, table in got.items():
            want = pq.read_table(FIXTURE / "expected" / f"metrics-{variant}-{name}.parquet")
            _same(table, want, f"{variant}: {name}")
    assert metrics.residency(t["entries"])["runs"] > 0


def test_residency_runs_with_large_node_ids_and_a_growing_key_space():
    """Node keys are dense (index * LEVELS + lod): large indices grow the key space, batch by batch,
    without losing the runs already open."""
    step = np.repeat(np.arange(6, dtype=np.int32), 3)

    def runs(node: np.ndarray) -> dict:
        e = pa.table({"step": step, "iteration": np.zeros(step.size, np.int16), "node_id": node,
                      "lod": nodes.node_lod(node)})  # fmt: skip
        return metrics.residency_runs(e).to_pydict()

    big = np.array([5, 1 << 41, (1 << 40) | 70000], np.int64)
    got = runs(np.tile(big, 6))  # each node at all six steps: one open run of six from step 0
    assert got == {"node_id": sorted(big.tolist()), "lod": [0, 1, 2], "first_step": [0, 0, 0], "length": [6, 6, 6],
                   "open": [True, True, True]}  # fmt: skip
    # Fed in three batches, each step naming a larger node than any before: the key space grows, and
    # node 5, present at every step, stays one run across the batches.
    r = StepReducer(0.0)
    big = [int(nodes.node_id(1, 10_000 * (s + 1))) for s in range(6)]
    for lo in (0, 2, 4):
        step = np.repeat(np.arange(lo, lo + 2, dtype=np.int32), 2)
        node = np.array([5, big[lo], 5, big[lo + 1]], np.int64)
        metrics.feed(r, pa.table({"step": step, "iteration": np.zeros(4, np.int16), "node_id": node}))
    got = metrics.runs_table(r).to_pydict()
    assert got["node_id"] == [5, *big] and got["first_step"] == [0, 0, 1, 2, 3, 4, 5]
    assert got["length"] == [6, 1, 1, 1, 1, 1, 1] and got["open"] == [True] + [False] * 5 + [True]


def test_per_step_sums_match(lab_tables):
    ent = lab_tables[0]["entries"]
    step = _col(ent, "step").astype(np.int64)
    vals = (_col(ent, "lod") == 0).astype(np.float64)
    for steps in (np.unique(step), np.unique(step)[::2], np.unique(step)[5:-5], np.arange(0, 10_000)):
        want = np.array([vals[step == s].sum() for s in steps])  # the definition, one step at a time
        assert np.array_equal(_per_step(step, vals, steps), want)
    assert np.array_equal(_unique(step[::-1].copy()), np.unique(step))


# ------------------------------------------------------------------------------------------ loading


def test_load_recording_is_in_step_iteration_order(recorded, rec):
    e = Run(recorded).table("entries", ["step", "iteration", "node_id", "raw_score"])
    step, it = e["step"].to_numpy().astype(np.int32), e["iteration"].to_numpy().astype(np.int16)
    o = np.lexsort((it, step))
    assert np.array_equal(rec.step, step[o]) and np.array_equal(rec.iteration, it[o])
    assert np.array_equal(rec.node_id, e["node_id"].to_numpy()[o])
    assert np.array_equal(rec.raw_score, e["raw_score"].to_numpy()[o])
    assert _sorted_by_step_iteration(rec.step, rec.iteration)
    assert not _sorted_by_step_iteration(np.array([0, 1, 1]), np.array([0, 1, 0]))
    assert not _sorted_by_step_iteration(np.array([1, 0]), np.array([0, 0]))
