"""Knob sweeps on local Ray against the same cells run one after another in one process (issue 14).

Two workloads, each swept three ways in one run of this script: sequentially in this machine's one
process (`--ray none`), then on an embedded Ray with 1 and with 2 workers (`--ray local`):

- `samples`: the six shipped sample runs x a 36-setting grid (w_max x tau_expand x max_edits): 216
  small cells (tens of ms each);
- `256k`: the 256k-token recording of bench_replay.py (8,192 steps; recorded once into bench/.cache)
  x 8 settings (cooldown x margin): cells of a second or two, as the issue describes them.

Reported per workload: throughput (cells/s) of each way, the Ray/sequential ratio excluding and
including Ray's start-up (joining and starting the actors, once per sweep), Ray's own overhead per
task (worker time not spent inside a cell, `workers x elapsed - sum of cell times`, over the cells,
as a share of a cell's mean time), and the scaling model `mean cell time x cells / workers` against
the measured elapsed time on 1 and 2 workers.

`--long` adds `samples-long` (the samples x 900 settings, 5,400 cells: minutes), where Ray's start and
stop weigh little, to measure the ratio with them included (sequential and 2 workers only).

Targets: throughput >= 1.7x sequential with local Ray on this 2-core machine; Ray's overhead per
task < 5% of a task's time.

    python bench/bench_sweep.py [--json bench/results/sweep.json] [--only NAME] [--long]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_replay import ensure_recording  # noqa: E402
from studio.sweep import sweep  # noqa: E402

WORKLOADS = {
    "samples": ([str(REPO / "sample_runs" / "*")],
                ["wc.w_max=640,768,896,1024", "allocator.tau_expand=0.1,0.2,0.3", "allocator.max_edits=2,4,8"]),
    "256k": ([str(REPO / "bench" / ".cache" / "replay256k")],
             ["allocator.cooldown_steps=0,2,4,8", "allocator.hysteresis_margin=0,0.2"]),
}  # fmt: skip
# A sweep long enough (minutes) that Ray's start and stop, once per sweep, weigh little: run with --long.
LONG = {
    "samples-long": ([str(REPO / "sample_runs" / "*")],
                     ["wc.w_max=512,576,640,704,768,832,896,960,1024", "allocator.tau_expand=0.1,0.15,0.2,0.3,0.4",
                      "allocator.sharpen_gamma=0.5,1,1.5,2", "allocator.max_edits=2,4,8,12,16"]),
}  # fmt: skip


def one(runs: list[str], grid: list[str], ray: str, workers: int | None) -> dict:
    out = pathlib.Path(tempfile.mkdtemp(prefix="bench-sweep-")) / "sw"
    try:
        m = sweep(runs, grid, out, ray=ray, workers=workers, progress=False, flush_cells=64)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    run_s = m["elapsed_s"] - m["ray_start_s"] - m["ray_stop_s"]  # the sweep itself: Ray up, actors started
    w = m["workers"] or 1
    return {"ray": ray, "workers": w, "cells": m["cells"], "elapsed_s": m["elapsed_s"], "ray_start_s": m["ray_start_s"],
            "ray_stop_s": m["ray_stop_s"],
            "sweep_s": round(run_s, 3), "task_s": m["task_s"], "mean_task_s": m["task_s"] / m["cells"],
            "cells_per_s": m["cells"] / run_s, "cells_per_s_with_start": m["cells"] / m["elapsed_s"],
            "overhead_per_task_s": (w * run_s - m["task_s"]) / m["cells"],
            "model_s": m["task_s"] / w}  # fmt: skip


def _line(r: dict | None) -> str:
    """One way's figures: throughput, cell time, and for Ray its start, stop, overhead and the model."""
    if r is None:
        return "not run"
    out = f"{r['cells_per_s']:.2f} cells/s (cell {r['mean_task_s'] * 1e3:.0f} ms"
    if r["ray"] != "none":
        out += (f"; start {r['ray_start_s']:.1f} s, stop {r['ray_stop_s']:.1f} s; overhead per task "
                f"{r['overhead_per_task_s'] / r['mean_task_s']:.1%}; model {r['model_s']:.1f} s against "
                f"{r['sweep_s']:.1f} s measured")  # fmt: skip
    return out + ")"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "sweep.json"))
    ap.add_argument("--only", choices=(*WORKLOADS, *LONG), default=None)
    ap.add_argument("--long", action="store_true", help="also the long sweep (about 8 minutes here)")
    args = ap.parse_args()
    ensure_recording(REPO / "bench" / ".cache" / "replay256k", 262144, "random")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = {"load": os.getloadavg()[0], "workloads": {}}
    workloads = {**WORKLOADS, **(LONG if args.long or args.only in LONG else {})}
    for name, (runs, grid) in workloads.items():
        if args.only and name != args.only:
            continue
        seq = one(runs, grid, "none", None)
        r1 = one(runs, grid, "local", 1) if name not in LONG else None  # the long one: sequential and 2 workers
        r2 = one(runs, grid, "local", 2)
        res = {"sequential": seq, "ray_1": r1, "ray_2": r2,
               "ratio": r2["cells_per_s"] / seq["cells_per_s"],
               "ratio_with_start": r2["cells_per_s_with_start"] / seq["cells_per_s_with_start"],
               "overhead_share": r2["overhead_per_task_s"] / r2["mean_task_s"],
               "overhead_share_1": r1["overhead_per_task_s"] / r1["mean_task_s"] if r1 else None}  # fmt: skip
        results["workloads"][name] = res
        print(f"{name}: {seq['cells']} cells; sequential {_line(seq)}; Ray x1 {_line(r1)}; x2 {_line(r2)}; "
              f"ratio {res['ratio']:.2f}x ({res['ratio_with_start']:.2f}x with Ray's start and stop)")  # fmt: skip
    results["load_after"] = os.getloadavg()[0]
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
