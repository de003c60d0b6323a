"""Fast replay of a long recording with new knobs, metrics included: what the knobs lab waits for.

Records (once, cached in --run-dir) a real run of --tokens tokens of standard-library source with
the tiny model and the --scorer scorer at w_max 2048 (no NLL: only the focus decisions matter
here), then times, in one process, two ways of answering a knob change:

- `lab` (what the app runs, `studio.fast_replay.replan`): re-plan every step with new hysteresis and
  sharpening knobs and measure as the events arrive: every metric series, the summary numbers and
  the 1000x400 LOD timeline of the re-planned run, with no per-entry rows;
- `tables` (the general path): re-plan into in-memory tables (entries: only the columns the
  metrics read) and compute every metric series on them with `telemetry.metrics`.

Loading the recorded scores is timed apart: the app loads a recording once per opened run.
Target (issue 3): at most 2 s for 256k tokens / 8,000 refocus steps, metrics included.

    python bench/bench_replay.py [--tokens 262144] [--run-dir bench/.cache/replay256k] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_refocus import stdlib_text  # noqa: E402
from contract.config import apply_overrides  # noqa: E402
from studio.fast_replay import replan, replay_fast  # noqa: E402
from studio.replay import load_recording  # noqa: E402
from telemetry import metrics  # noqa: E402
from telemetry.memory import LAB_ENTRIES, ArrowSink  # noqa: E402
from telemetry.reader import Run  # noqa: E402

NEW_KNOBS = ["allocator.cooldown_steps=4", "allocator.hysteresis_margin=0.2", "allocator.sharpen_gamma=2.0",
             "allocator.tau_expand=0.3"]  # fmt: skip


def ensure_recording(run_dir: pathlib.Path, tokens: int, scorer: str) -> None:
    if (run_dir / "manifest.json").exists() and Run(run_dir).status == "complete":
        return
    text = run_dir.with_suffix(".txt")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("".join(stdlib_text(tokens + 4096)))
    cmd = [sys.executable, "-m", "engine", "record", "--quiet", "--overwrite",
           "--model", "tiny", "--input", str(text), "--out",
           str(run_dir), "--scorer", scorer, "--set", "wc.w_max=2048", "--set", f"session.max_tokens={tokens}",
           "--set", "session.compute_nll=false", "--set", "session.check_invariants=false"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print(f"recorded {tokens} tokens in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=262_144)
    ap.add_argument("--scorer", default="random", help="scorer of the recording (random edits the most)")
    ap.add_argument("--run-dir", default=str(REPO / "bench" / ".cache" / "replay256k"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run_dir = pathlib.Path(args.run_dir)
    ensure_recording(run_dir, args.tokens, args.scorer)
    rows, labs = [], []
    replan(load_recording(run_dir), load_recording(run_dir).config)  # compile the kernels (cached on disk)
    for _ in range(args.reps):
        t0 = time.perf_counter()
        rec = load_recording(run_dir)
        t1 = time.perf_counter()
        cfg = apply_overrides(rec.config, NEW_KNOBS + ["session.check_invariants=false"])
        lab = replan(rec, cfg, timeline=(1000, 400))
        t_lab = time.perf_counter() - t1
        labs.append({"load_s": t1 - t0, "lab_s": t_lab, "cold_s": t1 - t0 + t_lab,
                     "allocator_s": lab.stats.allocator_ms / 1000, "ping_pongs": lab.summary["ping_pongs"],
                     "timeline_cells": int(lab.timeline.cells()["x_bin"].size)})  # fmt: skip
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in labs[-1].items()}),
              file=sys.stderr)  # fmt: skip
        t1 = time.perf_counter()
        # The knobs lab keeps only the entry columns the metrics read (LAB_ENTRIES), not every score stage.
        sink = ArrowSink(("steps", "decisions", "entries"), columns={"entries": LAB_ENTRIES})
        stats = replay_fast(rec, cfg, sink)
        t2 = time.perf_counter()
        steps, dec, ent = sink.table("steps"), sink.table("decisions"), sink.table("entries")
        t3 = time.perf_counter()
        out = {
            "swap_rate": metrics.swap_rate(steps, dec),
            "oscillation": metrics.oscillation(dec),
            "locality": metrics.locality(ent),
            "sequential": metrics.sequential(dec, cfg.tree.block_size),
            "utilization": metrics.utilization(steps),
            "coherence": metrics.coherence(ent, dec, cfg.allocator.tau_expand),
            "residency": metrics.residency(ent),
        }
        t4 = time.perf_counter()
        assert out["oscillation"]["ping_pongs"] == lab.summary["ping_pongs"]  # the two paths agree
        rows.append({"load_s": t1 - t0, "replan_s": t2 - t1, "tables_s": t3 - t2, "metrics_s": t4 - t3,
                     "total_s": t4 - t0, "steps": stats.steps, "decisions": dec.num_rows, "entries": ent.num_rows,
                     "allocator_s": stats.allocator_ms / 1000, "approximate": stats.approximate,
                     "ping_pongs": out["oscillation"]["ping_pongs"]})  # fmt: skip
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}),
              file=sys.stderr)  # fmt: skip
    best = min(rows, key=lambda r: r["total_s"])
    lb = min(labs, key=lambda r: r["lab_s"])
    print(f"\n{args.tokens} tokens, {best['steps']} steps, {best['decisions']:,} decision rows, "
          f"{best['entries']:,} entry rows; new knobs: {' '.join(NEW_KNOBS)}\n")  # fmt: skip
    print("| path | load (once per run) | re-plan + metrics (allocator) | knob change | cold | target |")
    print("|---|---:|---:|---:|---:|---:|")
    b = best
    print(f"| lab (`studio.fast_replay.replan`, timeline 1000x400 incl.) | {lb['load_s']:.2f} s | {lb['lab_s']:.2f} s "
          f"({lb['allocator_s']:.2f} s) | {lb['lab_s']:.2f} s | {lb['cold_s']:.2f} s | 2 s |")  # fmt: skip
    rest = b["replan_s"] + b["tables_s"] + b["metrics_s"]
    print(f"| tables (replay_fast + ArrowSink + telemetry.metrics) | {b['load_s']:.2f} s | {rest:.2f} s "
          f"({b['allocator_s']:.2f} s) | {rest:.2f} s | {b['total_s']:.2f} s | |")  # fmt: skip
    print(f"\nknob change, lab / tables in this run: {lb['lab_s'] / rest:.2f}")
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"runs": rows, "lab": labs, "knobs": NEW_KNOBS, **vars(args)}, indent=2)
        )


if __name__ == "__main__":
    main()
