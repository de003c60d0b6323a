"""Each metric on a hand-built table whose answer is worked out in the comments."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from contract import RunConfig, apply_overrides, nodes
from telemetry import Run, metrics, registry, run_metrics
from telemetry.arrays import _first_iteration
from tests.telemetry_fixtures import events, record

BS = 32


def N(lod: int, i: int) -> int:
    return int(nodes.node_id(lod, i))


def dec(rows) -> pa.Table:
    """rows: (step, node_id, lod_from, lod_to, action, outcome, seq[, iteration])."""
    rows = [r if len(r) == 8 else (*r, 0) for r in rows]
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 8
    types = [pa.int32(), pa.int64(), pa.int8(), pa.int8(), pa.string(), pa.string(), pa.int32(), pa.int16()]
    names = ["step", "node_id", "lod_from", "lod_to", "action", "outcome", "seq", "iteration"]
    return pa.table({n: pa.array(list(c), t) for n, c, t in zip(names, cols, types, strict=True)})


def ent(step: int, lods: list[int], *, first_block: int = 0, scores=None, iteration: int = 0) -> pa.Table:
    """One step's WC: consecutive blocks from `first_block`, one LOD per entry (LOD2 = 32 blocks)."""
    start, ids, b = [], [], first_block
    for lod in lods:
        span = BS ** max(lod, 1)
        ids.append(N(lod, b * BS // span))
        start.append(b * BS)
        b += span // BS
    end = [s + BS ** max(lod, 1) for s, lod in zip(start, lods, strict=True)]
    n = len(lods)
    return pa.table(
        {
            "step": pa.array([step] * n, pa.int32()),
            "iteration": pa.array([iteration] * n, pa.int16()),
            "node_id": pa.array(ids, pa.int64()),
            "lod": pa.array(lods, pa.int8()),
            "start": pa.array(start, pa.int64()),
            "end": pa.array(end, pa.int64()),
            "score": pa.array(scores or [0.0] * n, pa.float32()),
        }
    )


def steps_t(**cols) -> pa.Table:
    n = len(next(iter(cols.values())))
    types = {"nll": pa.float32(), "nll_full": pa.float32(), "nll_recency": pa.float32()}
    out = {"step": pa.array(range(n), pa.int32())}
    out.update({k: pa.array(v, types.get(k, pa.int32())) for k, v in cols.items()})
    return pa.table(out)


def test_swap_rate():
    steps = steps_t(n_entries=[10, 12, 12])
    d = dec(
        [
            (0, N(1, 3), 1, 0, "expand", "applied", 0),
            (0, N(1, 4), 1, 0, "expand", "applied", 1),
            (0, N(1, 5), 1, 0, "expand", "budget", -1),  # refused: not an edit
            (2, N(1, 3), 0, 1, "collapse", "applied", 0),
            (2, N(1, 6), 1, 0, "expand", "applied", 1),
            (2, N(2, 0), 2, -1, "evict", "applied", 2),
        ]
    )
    e = pa.concat_tables([ent(0, [1] * 8), ent(2, [1] * 12), ent(2, [1] * 3, iteration=1)])
    out = metrics.swap_rate(steps, d, e)
    # step 0: 2 / 8 recorded entries; step 1: 0 / 10 (no entries recorded: step 0's n_entries); step 2: 3 / 12
    assert out["applied"].to_pylist() == [2, 0, 3]
    assert out["entries_start"].to_pylist() == [8, 10, 12]
    assert out["swap_rate"].to_pylist() == pytest.approx([0.25, 0.0, 0.25])
    assert metrics.swap_rate(steps, d)["entries_start"].to_pylist() == [10, 10, 12]
    # A recording with n_entries_start (every session writes it) uses that, whatever the cadence.
    steps2 = steps_t(n_entries=[10, 12, 12], n_entries_start=[9, 11, 20])
    out2 = metrics.swap_rate(steps2, d, e)
    assert out2["entries_start"].to_pylist() == [9, 11, 20]
    assert out2["swap_rate"].to_pylist() == pytest.approx([2 / 9, 0.0, 3 / 20])


OSC = [
    (0, N(1, 1), 1, 0, "expand", "applied", 0),
    (1, N(1, 2), 1, 0, "expand", "applied", 0),
    (1, N(1, 2), 0, 1, "collapse", "applied", 0, 1),  # B back within the same step (round 1): ping-pong
    (1, N(1, 1), 0, 1, "collapse", "cooldown", -1),  # refused: ignored
    (2, N(1, 1), 0, 1, "collapse", "applied", 0),  # A back after 2 steps: ping-pong
    (3, N(1, 3), 1, 0, "expand", "applied", 0),  # C: one edit, never reversed
    (4, N(2, 0), 2, -1, "evict", "applied", 1),  # evictions cannot ping-pong and are not counted
    (9, N(1, 1), 1, 0, "expand", "applied", 0),  # A again, 7 steps later: outside the window of 5
    (10, N(1, 1), 0, 1, "collapse", "applied", 0),  # and back: ping-pong
]


def test_oscillation():
    d = dec(OSC)
    ev = metrics.oscillation_events(d)
    assert ev.select(["step", "node_id", "prev_step"]).to_pylist() == [
        {"step": 1, "node_id": N(1, 2), "prev_step": 1},
        {"step": 2, "node_id": N(1, 1), "prev_step": 0},
        {"step": 10, "node_id": N(1, 1), "prev_step": 9},
    ]
    osc = metrics.oscillation(d)
    assert (osc["ping_pongs"], osc["applied_edits"]) == (3, 7)
    assert osc["per_edit"] == pytest.approx(3 / 7)
    assert osc["worst"].to_pylist() == [{"node_id": N(1, 1), "ping_pongs": 2}, {"node_id": N(1, 2), "ping_pongs": 1}]
    assert metrics.oscillation(d, osc_window=10)["ping_pongs"] == 4  # step 2 -> 9 now counts too
    assert metrics.oscillation(d, osc_window=1)["ping_pongs"] == 2
    assert metrics.oscillation(dec([]))["ping_pongs"] == 0


def test_locality():
    e = pa.concat_tables(
        [
            ent(0, [1, 0, 0, 1, 0, 1, 0, 0]),  # 5 detail blocks in 3 runs: 1 - 2/4
            ent(1, [0, 0, 0, 1]),  # one run: 1
            ent(2, [1, 1]),  # no detail: null
            ent(3, [1, 0, 1]),  # a single detail block: 1
            ent(4, [2, 0, 0], first_block=0),  # LOD2 then two adjacent blocks: one run
        ]
    )
    e = e.take(np.random.default_rng(0).permutation(e.num_rows))  # row order must not matter
    out = metrics.locality(e)
    assert out["step"].to_pylist() == [0, 1, 2, 3, 4]
    assert out["detail_blocks"].to_pylist() == [5, 3, 0, 1, 2]
    assert out["runs"].to_pylist() == [3, 1, 0, 1, 1]
    assert out["locality"].to_pylist() == [0.5, 1.0, None, 1.0, 1.0]


def test_adjacency():
    e = pa.concat_tables([ent(0, [1, 1, 0, 1, 1, 0]), ent(1, [2, 1])])
    d = dec(
        [
            (0, N(1, 1), 1, 0, "expand", "applied", 0),  # block 2 on its right is LOD0: adjacent
            (0, N(1, 4), 1, 0, "expand", "applied", 1),  # block 5 on its right: adjacent
            (0, N(1, 0), 1, 0, "expand", "applied", 2),  # neighbour block 1 was LOD1 at the round's start: no
            (0, N(1, 3), 1, 0, "expand", "budget", -1),  # not applied: not counted
            (1, N(2, 0), 2, 1, "expand", "applied", 0),  # LOD2 gist next to a LOD1 entry (finer): adjacent
            (5, N(1, 9), 1, 0, "expand", "applied", 0),  # no entries recorded at step 5: not counted
        ]
    )
    assert metrics.adjacency(e, d, BS) == {"expansions": 4, "adjacent": 3, "share": 0.75}
    assert metrics.adjacency(e, dec([]), BS)["share"] is None


def test_sequential():
    d = dec(
        [
            (0, N(1, 3), 1, 0, "expand", "applied", 0),
            (0, N(1, 4), 1, 0, "expand", "applied", 1),  # touches block 3: sequential
            (0, N(1, 7), 0, 1, "collapse", "applied", 2),  # collapses are not expansions
            (1, N(1, 10), 1, 0, "expand", "applied", 0),  # 5 blocks away: no
            (1, N(1, 12), 1, 0, "expand", "edit_cap", -1),  # refused
            (2, N(1, 9), 1, 0, "expand", "applied", 0),  # touches block 10: yes
            (3, N(2, 0), 2, 1, "expand", "applied", 0),  # tokens [0, 1024) contain block 9: yes
            (4, N(1, 33), 1, 0, "expand", "applied", 0),  # [1056, 1088): one block gap after 1024: no
        ]
    )
    out = metrics.sequential(d, BS)
    assert out["step"].to_pylist() == [0, 1, 2, 3, 4]
    assert out["sequential"].to_pylist() == [True, False, True, True, False]


def _presence(step_nodes: dict[int, list[int]]) -> pa.Table:
    rows = [(s, n) for s, ns in step_nodes.items() for n in ns]
    return pa.table(
        {
            "step": pa.array([r[0] for r in rows], pa.int32()),
            "iteration": pa.array([0] * len(rows), pa.int16()),
            "node_id": pa.array([r[1] for r in rows], pa.int64()),
            "lod": pa.array([1] * len(rows), pa.int8()),
        }
    )


def test_residency():
    A, B, C, D = (N(1, i) for i in range(4))
    e = _presence({0: [A, C], 1: [A, B, C], 2: [A, B, C], 3: [C, D], 4: [B, C]})
    runs = metrics.residency_runs(e).sort_by([("node_id", "ascending"), ("first_step", "ascending")])
    assert runs.select(["node_id", "first_step", "length", "open"]).to_pylist() == [
        {"node_id": A, "first_step": 0, "length": 3, "open": False},
        {"node_id": B, "first_step": 1, "length": 2, "open": False},
        {"node_id": B, "first_step": 4, "length": 1, "open": True},
        {"node_id": C, "first_step": 0, "length": 5, "open": True},
        {"node_id": D, "first_step": 3, "length": 1, "open": False},
    ]
    r = metrics.residency(e)  # closed runs 3, 2, 1
    assert r["mean"] == 2.0 and r["p95"] == pytest.approx(2.9) and (r["runs"], r["open_runs"]) == (3, 2)
    # A recording cadence of 2: a node seen at steps 0 and 2 and missing at 4 stayed 4 steps.
    r2 = metrics.residency_runs(_presence({0: [A, B], 2: [A], 4: [B]}))
    assert r2.sort_by("node_id").select(["node_id", "length"]).to_pylist()[:1] == [{"node_id": A, "length": 4}]
    assert metrics.residency(_presence({}))["mean"] is None


def test_utilization():
    out = metrics.utilization(steps_t(wc_cost=[100, 200], w_max=[400, 400]))
    assert out["utilization"].to_pylist() == [0.25, 0.5]


def test_coherence():
    s0 = ent(0, [1, 1, 0, 1, 1], scores=[0.5, 0.3, 0.9, 0.1, 0.6])
    e = pa.concat_tables([s0, ent(0, [1], scores=[0.9], iteration=1), ent(1, [2], scores=[0.25])])
    d = dec(
        [
            (0, N(1, 0), 1, 0, "expand", "applied", 0),  # block 0 (0.5) ends finer
            (0, N(1, 1), 1, 0, "expand", "budget", -1),  # block 1 (0.3) refused: not finer
            (0, N(1, 4), 1, 0, "expand", "applied", 1),  # block 4 (0.6) expanded ...
            (0, N(1, 4), 0, 1, "collapse", "applied", 0, 1),  # ... and collapsed back next round: not finer
            (1, N(2, 0), 2, 1, "expand", "applied", 0),
        ]
    )
    out = metrics.coherence(e, d, tau_expand=0.2)
    # step 0: candidates are blocks 0, 1, 4 (block 2 is LOD0, block 3 is below tau); 1 ends finer
    assert out.to_pylist() == [
        {"step": 0, "candidates": 3, "finer": 1, "coherence": pytest.approx(1 / 3)},
        {"step": 1, "candidates": 1, "finer": 1, "coherence": 1.0},
    ]
    assert metrics.coherence(e, d, tau_expand=0.55)["candidates"].to_pylist() == [1]


def test_delta_nll():
    s = steps_t(nll=[2.0, None, 3.0], nll_full=[1.5, 1.0, None], nll_recency=[2.5, None, 2.0])
    out = metrics.delta_nll(s)
    assert out["d_full"].to_pylist() == [0.5, None, None]
    assert out["d_recency"].to_pylist() == [-0.5, None, 1.0]


def test_series_and_summary_on_a_recorded_run(tmp_path):
    cfg = apply_overrides(RunConfig(), ["allocator.tau_expand=0.05"])  # the fixture's scores reach 0.125
    record(tmp_path / "run", events(12, config=cfg), flush_rows=50)
    run = Run(tmp_path / "run")
    s = run.summary()
    json.dumps(s)  # JSON-ready
    assert s["status"] == "complete" and s["steps"] == 12
    osc = run.metric_series("oscillation")
    assert osc.num_rows == 12 and sum(osc["ping_pongs"].to_pylist()) == s["ping_pongs"] > 0
    assert s["applied_edits"] > 0 and s["ping_pongs_per_edit"] == pytest.approx(s["ping_pongs"] / s["applied_edits"])
    assert s["worst_nodes"][0]["ping_pongs"] >= 1
    coh = run.metric_series("coherence")
    assert coh.num_rows > 0 and s["coherence"] is not None  # tau comes from the run's config
    assert s["delta_nll_full"] == pytest.approx(0.5, abs=1e-5) and s["delta_nll_recency"] == pytest.approx(-0.25)
    assert 0 < s["utilization"] < 1 and 0 <= s["locality"] <= 1 and s["residency_mean"] >= 1
    assert 0 < s["sequential_score"] <= 1 and 0 < s["adjacent_share"] <= 1
    for name in run_metrics.SERIES:
        assert run.metric_series(name).num_rows > 0, name
    with pytest.raises(ValueError, match="unknown metric"):
        run.metric_series("bogus")


def test_batched_metrics_equal_whole_table_metrics(tmp_path):
    """`summary`, the per-entry series and the residency runs read the entries in batches of whole
    steps; residency runs cross batch edges. Any batch size gives the numbers of one whole table."""
    cfg = apply_overrides(RunConfig(), ["allocator.tau_expand=0.05"])
    record(tmp_path / "run", events(12, config=cfg), flush_rows=30)
    run = Run(tmp_path / "run")
    whole = run.table("entries")
    first = _first_iteration(whole)
    dec = run.table("decisions")
    assert len(run.parts("entries")) > 3
    want = metrics.residency_runs(first)
    for rows in (1, 5, 17, 10**9):
        got = run_metrics.residency_runs_of(run, rows=rows)
        assert got.to_pylist() == want.to_pylist(), rows
        assert run_metrics.summary(run, rows=rows) == run_metrics.summary(run, rows=10**9), rows
    assert run_metrics.summary(run)["adjacent_share"] == metrics.adjacency(whole, dec)["share"]
    assert run_metrics.summary(run)["residency_mean"] == metrics.residency(first)["mean"]
    assert run_metrics.series(run, "locality").to_pylist() == metrics.locality(first).to_pylist()
    assert run_metrics.series(run, "coherence").equals(metrics.coherence(first, dec, 0.05))


def test_the_registry_names_every_summary_number_and_series(tmp_path):
    """One registry (key, label, direction) serves the CLI's summary, the Runs, Metrics and Compare
    pages and the Knobs lab: each key is a summary number, each line a series with those columns."""
    record(tmp_path / "run", events(6), flush_rows=50)
    run = Run(tmp_path / "run")
    s = run_metrics.summary(run)
    keys = [m.key for m in registry.METRICS]
    assert len(set(keys)) == len(keys) and set(keys) <= set(s)
    assert all(m.better in ("lower", "higher", "") for m in registry.METRICS)
    assert registry.HEADLINE == tuple(m.key for m in registry.METRICS if m.headline)
    for line in registry.LINES:
        assert line.series in run_metrics.SERIES
        assert set(line.columns) <= set(run_metrics.series(run, line.series).column_names), line.series
