"""`python -m telemetry metrics` on long recordings: peak resident memory and time against run size.

Writes synthetic runs through the real `ParquetSink` (default flush settings, so parts of ~50k rows
as a recording makes them) and runs `python -m telemetry metrics RUN` on each in a fresh process,
reading its peak resident set size (`ru_maxrss` of the child) and wall time. Sizes: `--tokens`
(default 5M tokens, 156,250 steps of 32 tokens) and the small run `--small-tokens` the time is
compared with (per entry row: linear or better when the ratio is <= 1).

Each step's working context is a legal cut of a growing tree: up to `--entries` entries (default
2,000, so that a 5M-token run holds ~250M entry rows, the size at which the whole-table metrics of
issue 11 were killed at 23.5 GB), made of LOD2 gists for the older history (the oldest evicted), one
group expanded to LOD1 gists with a drifting LOD0 detail window inside, the last two groups as LOD1
gists and the newest four blocks raw. Every step also records its new nodes, 16 decision rows (a
few applied) and a steps row, with `bench_telemetry.py`'s builders.

Runs are generated once under `--run-dir` and reused while their parameters match. The target (issue
11): at most 2 GB resident for the 5M-token run. Not a test: nothing here asserts.

    python bench/bench_metrics_memory.py [--tokens 5000000] [--entries 1650] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench_telemetry import BS, GROUP, decisions_at, load_average, nodes_at, step_at  # noqa: E402

from contract import nodes  # noqa: E402
from contract.config import RunConfig, apply_overrides  # noqa: E402
from contract.events import DecisionsRecorded, EntriesRecorded, RunFinished, RunStarted  # noqa: E402
from telemetry.writer import ParquetSink  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
PARAMS = "bench_params.json"
PROTECT = 4  # newest blocks kept raw
DETAIL = 8  # LOD0 blocks of the detail window inside the expanded group


def wc_at(t: int, max_entries: int, rng: np.random.Generator) -> EntriesRecorded:
    """The WC at step t (t + 1 complete blocks), at most ~`max_entries` entries, tiling its span."""
    nb = t + 1
    n_groups = nb // GROUP
    tail0 = max(0, n_groups - 2) * GROUP  # the last two (complete) groups and the partial one: LOD1 + raw
    b = np.arange(tail0, nb)
    lod_t = np.where(b >= nb - PROTECT, 0, 1).astype(np.int8)
    idx_t = b.astype(np.int64)
    n2 = min(max(0, n_groups - 2), max(1, max_entries - 2 * GROUP - GROUP - 8))  # LOD2 gists kept
    g = np.arange(max(0, n_groups - 2) - n2, max(0, n_groups - 2))
    parts_lod, parts_idx = [], []
    if g.size:
        w = int(g[0] + (0.5 + 0.45 * np.sin(t / 300.0)) * (g.size - 1))  # the expanded group drifts
        blocks = np.arange(w * GROUP, (w + 1) * GROUP)
        lod_w = np.ones(GROUP, np.int8)
        lo = (t // 7) % (GROUP - DETAIL)
        lod_w[lo : lo + DETAIL] = 0
        parts_lod += [np.full(w - g[0], 2, np.int8), lod_w, np.full(g[-1] - w, 2, np.int8)]
        parts_idx += [np.arange(g[0], w), blocks, np.arange(w + 1, g[-1] + 1)]
    lod = np.concatenate([*parts_lod, lod_t])
    idx = np.concatenate([*parts_idx, idx_t]).astype(np.int64)
    start = nodes.node_start(lod, idx, BS)
    end = start + nodes.span_tokens(lod, BS)
    assert end[-1] == nb * BS and np.all(start[1:] == end[:-1])
    raw = rng.uniform(-1, 1, lod.size).astype(np.float32)
    return EntriesRecorded(t, 0, nodes.node_id(lod, idx), lod, start, end, nodes.node_cost(lod, BS), raw, raw, raw, raw)


def generate(run_dir: pathlib.Path, tokens: int, max_entries: int, seed: int = 0) -> dict:
    steps = tokens // BS
    params = {"tokens": tokens, "entries": max_entries, "seed": seed}
    saved = run_dir / PARAMS
    if saved.is_file() and json.loads(saved.read_text()).get("params") == params:
        return json.loads(saved.read_text())
    cfg = apply_overrides(RunConfig(), [f"session.max_tokens={tokens}"])
    model = {"id": "synthetic", "hidden_size": 64, "vocab_size": 1000, "dtype": "float32", "device": "cpu"}
    rng = np.random.default_rng(seed)
    t0, rows = time.perf_counter(), 0
    with ParquetSink(run_dir, overwrite=True) as sink:
        sink.emit(RunStarted(cfg, model, "lensnet", "synthetic", "2025-01-01T00:00:00Z"))
        for t in range(steps):
            e = wc_at(t, max_entries, rng)
            d = decisions_at(e, 16, rng)
            for ev in (nodes_at(t), e, DecisionsRecorded(t, 0, d), step_at(t, e, d, rng)):
                sink.emit(ev)
            rows += e.lod.size
            if t % 2000 == 0:
                print(f"\r{run_dir.name}: step {t}/{steps}, {rows:,} entry rows", end="", file=sys.stderr, flush=True)
        sink.emit(RunFinished("complete", steps * BS, steps))
    print("", file=sys.stderr)
    out = {
        "params": params,
        "steps": steps,
        "entry_rows": rows,
        "bytes": sum(p.stat().st_size for p in run_dir.rglob("*.parquet")),
        "entry_parts": len(list((run_dir / "entries").glob("*.parquet"))),
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    saved.write_text(json.dumps(out))
    return out


def measure(run_dir: pathlib.Path) -> dict:
    """Wall time and peak RSS of `python -m telemetry metrics RUN` in a child process of its own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "telemetry", "metrics", str(run_dir)], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if out.returncode != 0:
        raise SystemExit(f"metrics failed ({out.returncode}): {out.stderr.strip()}")
    if peak_kb <= before:  # ru_maxrss of children is the largest so far: measure the big run last
        print("warning: peak RSS not above an earlier child's; run sizes in increasing order", file=sys.stderr)
    s = json.loads(out.stdout)
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024), "steps": s["steps"],
            "locality": s["locality"], "residency_mean": s["residency_mean"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default=str(pathlib.Path(tempfile.gettempdir()) / "megacontext-bench-metrics"))
    ap.add_argument("--tokens", type=int, default=5_000_000)
    ap.add_argument("--small-tokens", type=int, default=16_384)
    ap.add_argument("--entries", type=int, default=2000, help="most entries in one step's WC")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = pathlib.Path(args.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for tokens in (args.small_tokens, args.tokens):  # increasing: ru_maxrss of children only grows
        run_dir = root / f"run-{tokens}"
        gen = generate(run_dir, tokens, args.entries)
        m = measure(run_dir)
        results.append({**gen, **m, "load_average": load_average()})
        print(json.dumps(results[-1]), file=sys.stderr)
    small, big = results
    per_row = [r["wall_s"] / r["entry_rows"] for r in results]
    report = {"runs": results, "time_per_row_ratio_big_over_small": round(per_row[1] / per_row[0], 3),
              "target_peak_rss_mb": 2048, "met": big["peak_rss_mb"] <= 2048}  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
