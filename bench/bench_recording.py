"""Recording overhead: the same session with the telemetry `ParquetSink` against `NullSink`.

Streams ~32k tokens of real text (standard-library sources, as in bench_refocus.py) through the tiny
model at w_max=1024, once per scorer (recency, lensnet), and times whole sessions: engine +
recording (the Parquet sink's conversion, schema checks, flushes, manifest heartbeats and final
close) against the engine alone. The machine is shared and noisy, so the two variants run as
interleaved pairs in one process, alternating which goes first, after one untimed warm-up session;
the ratio is median(parquet) / median(null), target <= 1.05. Because a neighbour's load moves wall
times by more than the effect measured, two steadier numbers are reported beside it: the ratio of
process CPU times (this process's threads only), and the time spent inside the sink itself (every
`emit` and the final `close`, timed in place) as a share of the NullSink session's wall time. Last,
one more session is kept in memory and its events replayed into a fresh ParquetSink (best of 3):
the sink's own cost with no engine around it to compete for caches and cores.
Not a test: nothing here asserts.

    python bench/bench_recording.py [--tokens 32768] [--scorers recency,lensnet] [--pairs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_refocus import stdlib_text  # noqa: E402

from contract.config import RunConfig, apply_overrides  # noqa: E402
from contract.events import MemorySink, NullSink  # noqa: E402
from engine.runtime import build_engine  # noqa: E402
from telemetry.writer import ParquetSink  # noqa: E402


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def folder_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class TimedParquetSink(ParquetSink):
    """ParquetSink that adds up the time spent in its own `emit` and `close` (perf_counter is ~100 ns)."""

    spent = 0.0

    def emit(self, event) -> None:
        t0 = time.perf_counter()
        try:
            super().emit(event)
        finally:
            self.spent += time.perf_counter() - t0

    def close(self, *a, **kw) -> None:
        t0 = time.perf_counter()
        try:
            super().close(*a, **kw)
        finally:
            self.spent += time.perf_counter() - t0


def one_session(eng, texts: list[str], run_dir: pathlib.Path | None) -> dict:
    """Time one whole session; with `run_dir`, recorded there by a ParquetSink (closed inside the timing)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if run_dir is None:
        done = eng.session(NullSink(), "stdlib").run(texts)
        out = {}
    else:
        sink = TimedParquetSink(run_dir, overwrite=True)
        try:
            done = eng.session(sink, "stdlib").run(texts)
        finally:
            sink.close()
        m = sink.manifest
        out = {"rows": {t: v["rows"] for t, v in m["tables"].items()}, "parts": m["tables"]["steps"]["parts"]}
        out["sink_s"] = round(sink.spent, 3)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if run_dir is not None:
        out["bytes"] = folder_bytes(run_dir)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "tokens": done.tokens, "steps": done.steps, **out}


def bench_scorer(scorer: str, args, texts: list[str], tmp: pathlib.Path) -> dict:
    sets = [f"wc.w_max={args.w_max}", f"scorer.name={scorer}", f"session.max_tokens={args.tokens}"]
    eng = build_engine(apply_overrides(RunConfig(), sets), "tiny", "cpu")
    one_session(eng, texts[: max(1, len(texts) // 16)], None)  # warm-up: torch kernels, allocator caches
    null, rec, recorded = [], [], None
    for i in range(args.pairs):
        order = ("null", "parquet") if i % 2 == 0 else ("parquet", "null")
        for kind in order:
            r = one_session(eng, texts, tmp / f"{scorer}-{i}" if kind == "parquet" else None)
            r["load_average"] = load_average()
            (rec if kind == "parquet" else null).append(r)
            if kind == "parquet":
                recorded = r
                shutil.rmtree(tmp / f"{scorer}-{i}", ignore_errors=True)
            print(json.dumps({"scorer": scorer, "pair": i, "sink": kind, **r}), file=sys.stderr, flush=True)
    mem = MemorySink()
    eng.session(mem, "stdlib").run(texts)
    replay = []
    for k in range(3):
        sink, t0 = ParquetSink(tmp / f"{scorer}-replay-{k}", overwrite=True), time.perf_counter()
        for ev in mem.events:
            sink.emit(ev)
        sink.close()
        replay.append(time.perf_counter() - t0)
        shutil.rmtree(tmp / f"{scorer}-replay-{k}", ignore_errors=True)
    med = statistics.median
    mn, mp = med(x["wall_s"] for x in null), med(x["wall_s"] for x in rec)
    return {
        "scorer": scorer,
        "null_s": [x["wall_s"] for x in null],
        "parquet_s": [x["wall_s"] for x in rec],
        "ratio": round(mp / mn, 4),
        "pair_ratios": [round(p["wall_s"] / n["wall_s"], 4) for n, p in zip(null, rec, strict=True)],
        "cpu_ratio": round(med(x["cpu_s"] for x in rec) / med(x["cpu_s"] for x in null), 4),
        "sink_s": [x["sink_s"] for x in rec],
        "sink_share": round(med(x["sink_s"] for x in rec) / mn, 4),
        "sink_ms_per_step": round(1000 * med(x["sink_s"] for x in rec) / max(1, recorded["steps"]), 3),
        "replay_s": round(min(replay), 3),
        "replay_share": round(min(replay) / mn, 4),
        "tokens": recorded["tokens"],
        "steps": recorded["steps"],
        "rows": recorded["rows"],
        "parts_per_table": recorded["parts"],
        "bytes": recorded["bytes"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--w-max", type=int, default=1024)
    ap.add_argument("--scorers", default="recency,lensnet")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--target", type=float, default=1.05)
    # One intra-op thread: on a few shared cores, spinning OpenMP threads turn a neighbour's load into
    # swings of the engine's own time far larger than the sink's cost. 0 keeps torch's default.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = load_average()
    texts = list(stdlib_text(args.tokens * 8))  # well over the token budget: session.max_tokens stops the stream
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mc-bench-recording-"))
    try:
        results = [bench_scorer(s, args, texts, tmp) for s in args.scorers.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = load_average()
    note = (
        f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"tiny model on CPU, w_max={args.w_max}, {args.tokens:,} tokens of stdlib source; "
        f"load average (1/5/15 min) {load0} before, {load1} after"
    )
    print(f"\n{note}\n")
    print(f"| scorer | steps | NullSink wall s | ParquetSink wall s | wall ratio (target <= {args.target}) "
          "| per-pair | CPU ratio | in-sink s | in-sink share | in-sink ms/step | replay s (share) |")  # fmt: skip
    print("|---|---:|---|---|---:|---|---:|---|---:|---:|---:|")
    for r in results:
        flag = "" if r["ratio"] <= args.target else " **over**"
        print(
            f"| {r['scorer']} | {r['steps']:,} | {' / '.join(f'{x:.2f}' for x in r['null_s'])} "
            f"| {' / '.join(f'{x:.2f}' for x in r['parquet_s'])} | {r['ratio']:.3f}{flag} "
            f"| {' / '.join(f'{x:.3f}' for x in r['pair_ratios'])} | {r['cpu_ratio']:.3f} "
            f"| {' / '.join(f'{x:.2f}' for x in r['sink_s'])} | {100 * r['sink_share']:.1f}% "
            f"| {r['sink_ms_per_step']:.2f} | {r['replay_s']:.2f} ({100 * r['replay_share']:.1f}%) |"
        )
    print("\n| scorer | rows written per table | parts per table | MB on disk |")
    print("|---|---|---:|---:|")
    for r in results:
        rows = ", ".join(f"{t} {n:,}" for t, n in r["rows"].items() if n)
        print(f"| {r['scorer']} | {rows} | {r['parts_per_table']} | {r['bytes'] / 2**20:.2f} |")
    if args.json:
        out = {"machine": note, "results": results, "args": vars(args)}
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
