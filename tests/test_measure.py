"""`studio.fast_replay.replan` (fast replay into its `MeasureSink`): the knobs lab's one-pass re-plan
and measure equals telemetry.metrics on the tables of the same replay, and its timeline equals
the reader's binning of the written replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contract import apply_overrides
from studio import load_recording, replan, replay_fast, replay_run
from telemetry import ArrowSink, Run, metrics

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample.txt"

KNOB_SETS = [
    [],
    ["allocator.cooldown_steps=4", "allocator.hysteresis_margin=0.2", "allocator.sharpen_gamma=2.0"],
    ["allocator.tau_expand=0.05", "allocator.tau_collapse=0.05", "allocator.cooldown_steps=0", "allocator.max_edits=8"],
    ["allocator.iterations=2", "allocator.cooldown_steps=1", "wc.w_max=512"],
    # cooldown 0 lets the second round undo the first: expansions collapsed again in the same step
    ["allocator.iterations=2", "allocator.cooldown_steps=0", "allocator.hysteresis_margin=0"],
]


def undone_in_step(dec: pa.Table) -> int:
    """Applied expansions collapsed again (same node) in a later round of the same step."""
    a = dec.filter(pa.compute.equal(dec["outcome"], "applied")).to_pylist()
    expanded = {(r["step"], r["node_id"], r["iteration"]) for r in a if r["action"] == "expand"}
    return sum(1 for r in a if r["action"] == "collapse"
               and any((r["step"], r["node_id"], i) in expanded for i in range(r["iteration"])))  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rec"
    cmd = [sys.executable, "-m", "engine", "record", "--quiet",
           "--model", "tiny", "--input", str(SAMPLE), "--out", str(out),
           "--scorer", "random", "--set", "wc.w_max=400", "--set", "allocator.cooldown_steps=0",
           "--set", "allocator.hysteresis_margin=0", "--set", "session.compute_nll=false"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def _reference(rec, cfg):
    sink = ArrowSink(("steps", "decisions", "entries"))
    replay_fast(rec, cfg, sink)
    return {t: sink.table(t) for t in ("steps", "decisions", "entries")}


def _close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=what)


@pytest.mark.parametrize("sets", KNOB_SETS, ids=lambda s: ",".join(s) or "recorded")
def test_replan_metrics_equal_telemetry_metrics(recorded, sets):
    rec = load_recording(recorded)
    cfg = apply_overrides(rec.config, sets)
    got = replan(rec, cfg)
    t = _reference(rec, cfg)
    steps, dec, ent = t["steps"], t["decisions"], t["entries"]
    if "allocator.cooldown_steps=0" in sets and "allocator.iterations=2" in sets:
        assert undone_in_step(dec) > 0  # the case this knob set is here for does occur
    first = ent.filter(pa.compute.equal(ent["iteration"], 0))
    tau, bs = cfg.allocator.tau_expand, cfg.tree.block_size
    want = {
        "swap_rate": metrics.swap_rate(steps, dec),
        "locality": metrics.locality(ent),
        "sequential": metrics.sequential(dec, bs),
        "utilization": metrics.utilization(steps),
        "coherence": metrics.coherence(ent, dec, tau),
    }
    for name, table in want.items():
        for col in table.column_names:
            v = table[col].to_numpy(zero_copy_only=False)
            _close(got.series[name][col], v.astype(np.float64) if v.dtype != object else v, f"{name}.{col}")
    ev = metrics.oscillation_events(dec)
    pp = np.bincount(ev["step"].to_numpy(), minlength=steps.num_rows)
    _close(got.series["oscillation"]["ping_pongs"], pp, "oscillation")
    osc, res = metrics.oscillation(dec, top=5), metrics.residency(first)
    s = got.summary
    assert s["ping_pongs"] == osc["ping_pongs"] and s["applied_edits"] == osc["applied_edits"]
    assert s["worst_nodes"] == osc["worst"].to_pylist()
    assert s["residency_mean"] == pytest.approx(res["mean"]) and s["residency_p95"] == pytest.approx(res["p95"])
    assert (s["residency_runs"], s["residency_open_runs"]) == (res["runs"], res["open_runs"])
    assert s["adjacent_share"] == pytest.approx(metrics.adjacency(ent, dec, bs)["share"])
    coh = metrics.coherence(ent, dec, tau)
    assert s["coherence"] == pytest.approx(coh["finer"].to_numpy().sum() / coh["candidates"].to_numpy().sum())
    assert osc["applied_edits"] > 20  # not vacuous: the random scorer edits a lot


@pytest.mark.parametrize("agg", ["mean", "min"])
@pytest.mark.parametrize("size", [(300, 40), (10_000, 10_000)], ids=["binned", "one-token-one-step"])
def test_replan_timeline_equals_reader_binning(recorded, tmp_path, size, agg):
    sets = ["allocator.cooldown_steps=3", "allocator.tau_expand=0.3"]
    out = tmp_path / "replay"
    replay_run(recorded, out, sets)
    run = Run(out)
    rec = load_recording(recorded)
    got = replan(rec, apply_overrides(rec.config, sets), timeline=size, agg=agg)
    cells = got.timeline.cells()
    tl = got.timeline
    want = run.lod_timeline(*size, step_range=tl.step_range, token_range=tl.token_range, agg=agg)
    assert want.num_rows == cells["x_bin"].size > 0
    for col in ("x_bin", "y_bin", "token_lo", "token_hi", "step_lo", "step_hi", "weight"):
        np.testing.assert_array_equal(cells[col], want[col].to_numpy(), err_msg=col)
    np.testing.assert_allclose(cells["value"], want["value"].to_numpy(), rtol=1e-6)
    # The default token range is the whole stream's complete blocks: the reader's own extent.
    auto = run.lod_timeline(*size, agg=agg)
    assert auto.num_rows == want.num_rows


def test_replan_keeps_the_asked_steps_wc(recorded):
    rec = load_recording(recorded)
    got = replan(rec, rec.config, keep_steps=(5, 50))
    assert sorted(got.entries) == [5, 50]
    e = got.entries[50]
    assert e.step == 50 and e.iteration == 0 and np.all(np.diff(e.start) > 0)
