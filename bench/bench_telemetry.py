"""Telemetry at scale: write throughput of `ParquetSink`, and read/metric times on a 10M-decision run.

(a) Writes a synthetic run through `ParquetSink` with its default flush settings: `--steps` refocus
steps of 32 tokens (8,000 steps = 256k tokens), each with one WC of a w_max=2048 budget (a few
hundred entries: LOD2 gists for the old history, a drifting detail window of LOD0 blocks inside a
ring of LOD1 gists, the newest blocks raw), `--decisions` decision rows (1,250: 10M rows in all),
the new nodes with 80-character previews, and a steps row. The events are made before they are
timed; the time reported is the sink's alone (conversion, schema checks, Parquet + zstd, renames).

(b) Times on that run, each with a fresh `Run` (cold: every part footer is checked once) and then
again on the same `Run` (warm, the best of `--repeat`): the LOD timeline binned at 1000x400 and
1920x1080, every metric series of `telemetry.run_metrics.SERIES`, the summary, and `python -m
telemetry metrics` end to end. Target: at most 1 s each.

The run is generated once into `--run-dir` (default: a folder under the temp dir) and reused while
its parameters match, so reruns only time the reads. The machine is shared: the load average is
printed with the results. Not a test: nothing here asserts.

    python bench/bench_telemetry.py [--run-dir DIR] [--steps 8000] [--decisions 1250] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from contract import nodes  # noqa: E402
from contract.config import RunConfig, apply_overrides  # noqa: E402
from contract.decisions import APPLIED, BUDGET, COLLAPSE, COOLDOWN, EDIT_CAP, EXPAND, HYSTERESIS, Decisions  # noqa: E402
from contract.events import (  # noqa: E402
    DecisionsRecorded,
    EntriesRecorded,
    NodesAdded,
    RunFinished,
    RunStarted,
    StepRecorded,
)
from telemetry import run_metrics  # noqa: E402
from telemetry.reader import Run  # noqa: E402
from telemetry.writer import ParquetSink  # noqa: E402

BS = 32
GROUP = BS  # LOD1 gists per LOD2 gist
W_MAX = 2048
PROTECT = 4  # newest blocks kept raw (protect_recent=128)
WINDOW = 16  # half-width, in blocks, of the drifting LOD0 detail window
RING = 48  # LOD1 blocks either side of the window
PREVIEW = "def refocus(self, view):  # the allocator's input is the scorer's output, sharpened "[:80]
REPO = pathlib.Path(__file__).resolve().parents[1]
WRITE_JSON = "bench_write.json"  # kept in the run folder: the write numbers of the run that is reused


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------- synthetic run


def wc_at(t: int, rng: np.random.Generator) -> EntriesRecorded:
    """The WC at step t (t + 1 complete blocks): a legal cut of the tree within w_max=2048."""
    nb = t + 1
    b = np.arange(nb)
    want = np.full(nb, 2, np.int8)
    centre = int((0.5 + 0.45 * np.sin(t / 300.0)) * nb)  # the detail window drifts over the history
    want[np.abs(b - centre) <= RING + WINDOW] = 1
    want[np.abs(b - centre) <= WINDOW] = 0
    want[b >= nb - PROTECT] = 0
    n_groups = nb // GROUP
    g = b // GROUP
    full = g < n_groups
    group2 = np.zeros(n_groups + 1, bool)
    group2[:n_groups] = np.bincount(g[full], weights=(want[full] == 2), minlength=n_groups) == GROUP
    in2 = group2[g]
    keep = ~in2 | (b % GROUP == 0)  # a LOD2 gist stands for its 32 blocks: keep one row per group
    lod = np.where(in2, 2, np.minimum(want, 1)).astype(np.int8)[keep]  # wanted LOD2 in a mixed group: LOD1
    idx = np.where(in2[keep], g[keep], b[keep]).astype(np.int64)
    start = nodes.node_start(lod, idx, BS)
    end = start + nodes.span_tokens(lod, BS)
    cost = nodes.node_cost(lod, BS)
    assert int(cost.sum()) <= W_MAX and end[-1] == nb * BS and np.all(start[1:] == end[:-1])
    raw = rng.uniform(-1, 1, lod.size).astype(np.float32)
    return EntriesRecorded(t, 0, nodes.node_id(lod, idx), lod, start, end, cost, raw, raw, raw, raw)


def decisions_at(e: EntriesRecorded, k: int, rng: np.random.Generator) -> Decisions:
    """k candidate edits on entries of the WC: a few applied (seq 0..), the rest refused with a reason."""
    pick = rng.integers(0, e.lod.size, k)
    lod, idx = e.lod[pick], nodes.node_index(e.node_id[pick])
    expand = (lod == 2) | ((lod > 0) & (rng.random(k) < 0.5))  # LOD2 cannot collapse, LOD0 cannot expand
    # Decisions name the coarse node: the entry for an expand, its parent for a collapse.
    coarse_lod = np.where(expand, lod, lod + 1).astype(np.int8)
    coarse_idx = np.where(expand | (lod == 0), idx, idx // GROUP)
    n_applied = int(rng.integers(0, 9))
    outcome = rng.choice(np.array([COOLDOWN, HYSTERESIS, BUDGET, EDIT_CAP], np.int8), k, p=[0.2, 0.2, 0.5, 0.1])
    outcome[:n_applied] = APPLIED
    seq = np.full(k, -1, np.int32)
    seq[:n_applied] = np.arange(n_applied)
    return Decisions(
        node_id=nodes.node_id(coarse_lod, coarse_idx),
        lod_from=lod.astype(np.int8),
        lod_to=np.where(expand, lod - 1, lod + 1).astype(np.int8),
        action=np.where(expand, EXPAND, COLLAPSE).astype(np.int8),
        score=rng.uniform(-1, 1, k).astype(np.float32),
        outcome=outcome.astype(np.int8),
        forced=np.zeros(k, bool),
        seq=seq,
    )


def nodes_at(t: int) -> NodesAdded:
    """Block t completes its LOD0 and LOD1 nodes, and every 32nd block a LOD2 gist."""
    lod, idx = [0, 1], [t, t]
    if (t + 1) % GROUP == 0:
        lod.append(2)
        idx.append((t + 1) // GROUP - 1)
    lod, idx = np.array(lod, np.int8), np.array(idx, np.int64)
    start = nodes.node_start(lod, idx, BS)
    return NodesAdded(t, nodes.node_id(lod, idx), lod, start, start + nodes.span_tokens(lod, BS), [PREVIEW] * lod.size)


def step_at(t: int, e: EntriesRecorded, d: Decisions, rng: np.random.Generator) -> StepRecorded:
    nll = float(rng.uniform(2, 4))
    n_applied = int((d.outcome == APPLIED).sum())
    return StepRecorded(
        t, (t + 1) * BS, e.lod.size, e.lod.size, int(e.cost.sum()), W_MAX, 0, n_applied, 0,
        nll, nll - 0.3 if (t + 1) * BS <= 8192 else None, nll + 0.2, 0.5, 1.0, 0.2, 3.0,
    )  # fmt: skip


class TimedSink(ParquetSink):
    """ParquetSink that keeps its own time: per-event-type conversion (flushes excluded) and per-table flush."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.t_emit: dict[str, float] = {}
        self.t_flush: dict[str, float] = {}
        self._in_flush = 0.0

    def _flush_table(self, table: str) -> None:
        t0 = time.perf_counter()
        super()._flush_table(table)
        dt = time.perf_counter() - t0
        self.t_flush[table] = self.t_flush.get(table, 0.0) + dt
        self._in_flush += dt

    def emit(self, event) -> None:
        t0, f0 = time.perf_counter(), self._in_flush
        super().emit(event)
        name = type(event).__name__
        self.t_emit[name] = self.t_emit.get(name, 0.0) + (time.perf_counter() - t0) - (self._in_flush - f0)


def generate(run_dir: pathlib.Path, steps: int, k: int, seed: int) -> dict:
    cfg = apply_overrides(RunConfig(), [f"wc.w_max={W_MAX}", f"session.max_tokens={steps * BS}"])
    rng = np.random.default_rng(seed)
    model = {"id": "synthetic", "hidden_size": 64, "vocab_size": 1000, "dtype": "float32", "device": "cpu"}
    sink = TimedSink(run_dir, overwrite=True)
    t_make = t_sink = 0.0
    rows = {"entries": 0, "decisions": 0, "nodes": 0, "steps": 0}
    try:
        sink.emit(RunStarted(cfg, model, "lensnet", "synthetic", "2025-01-01T00:00:00Z"))
        chunk = 200  # events are made a chunk of steps ahead, so that only the sink is timed
        for c0 in range(0, steps, chunk):
            t0 = time.perf_counter()
            evs = []
            for t in range(c0, min(steps, c0 + chunk)):
                e = wc_at(t, rng)
                d = decisions_at(e, k, rng)
                evs += [nodes_at(t), e, DecisionsRecorded(t, 0, d), step_at(t, e, d, rng)]
                rows["entries"] += e.lod.size
                rows["decisions"] += k
                rows["nodes"] += evs[-4].lod.size
                rows["steps"] += 1
            t1 = time.perf_counter()
            for ev in evs:
                sink.emit(ev)
            t2 = time.perf_counter()
            t_make, t_sink = t_make + t1 - t0, t_sink + t2 - t1
            print(f"\rgenerated step {c0 + len(evs) // 4}/{steps}", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        sink.emit(RunFinished("complete", steps * BS, steps))
        t_sink += time.perf_counter() - t0
    finally:
        sink.close()
    print("", file=sys.stderr)
    dec_s = sink.t_emit.get("DecisionsRecorded", 0.0) + sink.t_flush.get("decisions", 0.0)
    size = {t: sum(p.stat().st_size for p in (run_dir / t).glob("*.parquet")) for t in rows}
    return {
        "params": {"steps": steps, "decisions_per_step": k, "seed": seed},
        "rows": rows,
        "parts": {t: len(list((run_dir / t).glob("*.parquet"))) for t in rows},
        "bytes": size,
        "bytes_total": sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()),
        "t_make_events_s": round(t_make, 2),
        "t_sink_s": round(t_sink, 2),
        "t_emit_s": {n: round(v, 2) for n, v in sink.t_emit.items()},
        "t_flush_s": {n: round(v, 2) for n, v in sink.t_flush.items()},
        "decision_rows_per_s": round(rows["decisions"] / dec_s),
        "all_rows_per_s": round(sum(rows.values()) / t_sink),
        "load_average": load_average(),
    }


def ensure_run(run_dir: pathlib.Path, steps: int, k: int, seed: int, regen: bool) -> tuple[dict, bool]:
    """(write results, reused?): reuse a complete run of the same parameters, else (re)generate it."""
    saved = run_dir / WRITE_JSON
    if not regen and saved.is_file():
        try:
            w = json.loads(saved.read_text())
            m = json.loads((run_dir / "manifest.json").read_text())
            if w["params"] == {"steps": steps, "decisions_per_step": k, "seed": seed} and m["status"] == "complete":
                return w, True
        except (OSError, ValueError, KeyError):
            pass
    run_dir.mkdir(parents=True, exist_ok=True)
    w = generate(run_dir, steps, k, seed)
    saved.write_text(json.dumps(w, indent=1))
    return w, False


# ------------------------------------------------------------------------------------------- reads


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def read_ops() -> dict:
    ops = {
        "lod_timeline 1000x400": lambda r: r.lod_timeline(1000, 400),
        "lod_timeline 1920x1080": lambda r: r.lod_timeline(1920, 1080),
    }
    for name in run_metrics.SERIES:
        ops[f"series {name}"] = lambda r, n=name: run_metrics.series(r, n)
    ops["summary"] = lambda r: run_metrics.summary(r)
    return ops


def bench_reads(run_dir: pathlib.Path, repeat: int) -> list[dict]:
    rows = []
    for name, fn in read_ops().items():
        cold, out = timed(lambda fn=fn: fn(Run(run_dir)))  # a fresh Run: footers checked, as in the CLI
        run = Run(run_dir)
        fn(run)
        warm = min(timed(lambda fn=fn, run=run: fn(run))[0] for _ in range(repeat))
        n = out.num_rows if isinstance(out, pa.Table) else len(out)
        rows.append({"op": name, "cold_s": round(cold, 3), "warm_s": round(warm, 3), "out_rows": n})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "telemetry", "metrics", str(run_dir)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    rows.append({"op": "python -m telemetry metrics", "cold_s": round(wall, 3), "warm_s": None, "out_rows": 1})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default=str(pathlib.Path(tempfile.gettempdir()) / "megacontext-bench-telemetry"))
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--decisions", type=int, default=1250, help="decision rows per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="warm repetitions per read (best is reported)")
    ap.add_argument("--regen", action="store_true", help="regenerate the run even if a matching one exists")
    ap.add_argument("--target-s", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run_dir = pathlib.Path(args.run_dir)
    load0 = load_average()
    write, reused = ensure_run(run_dir, args.steps, args.decisions, args.seed, args.regen)
    reads = bench_reads(run_dir, args.repeat)
    load1 = load_average()

    note = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, pyarrow {pa.__version__}, "
        f"duckdb {duckdb.__version__}; load average (1/5/15 min) {load0} before, {load1} after"
    )
    r, mb = write["rows"], 2**20
    print(f"\n{note}\nrun: {run_dir} ({'reused' if reused else 'generated'} now; write numbers from its generation, "
          f"load then {write['load_average']})\n")  # fmt: skip
    print("| table | rows | parts | MB on disk | bytes/row |")
    print("|---|---:|---:|---:|---:|")
    for t in ("decisions", "entries", "nodes", "steps"):
        b = write["bytes"][t]
        print(f"| {t} | {r[t]:,} | {write['parts'][t]} | {b / mb:.1f} | {b / max(r[t], 1):.2f} |")
    print(
        f"\nwrite: decisions {write['decision_rows_per_s']:,} rows/s (conversion + flush of that table); all tables "
        f"{write['all_rows_per_s']:,} rows/s over {write['t_sink_s']} s in the sink "
        f"(events made in {write['t_make_events_s']} s, not counted); whole folder {write['bytes_total'] / mb:.1f} MB\n"
    )
    print(f"| read (target <= {args.target_s:g} s) | cold s (fresh Run) | warm s (best of {args.repeat}) | rows out |")
    print("|---|---:|---:|---:|")
    for x in reads:
        flag = "" if x["cold_s"] <= args.target_s else " **over**"
        warm = "" if x["warm_s"] is None else f"{x['warm_s']:.3f}"
        print(f"| {x['op']} | {x['cold_s']:.3f}{flag} | {warm} | {x['out_rows']:,} |")
    if args.json:
        out = {"machine": note, "run_dir": str(run_dir), "reused": reused, "write": write, "reads": reads}
        pathlib.Path(args.json).write_text(json.dumps({**out, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
