"""Recording speed beside a competing process: OpenMP wait policy x thread policy, alone and loaded.

A recording shares a few cores with the app, UMAP and a browser. This streams real text
(standard-library sources, as in bench_refocus.py) through a session with a null sink and measures
tokens/s alone and beside `--competitors` busy processes (`python -c "while True: pass"`, pinned
to the last cores with `--pin`), for each thread policy:

  2 threads  torch fixed at `--threads` (MCS_THREADS=fixed)
  1 thread   torch fixed at 1 (MCS_THREADS=fixed)
  governor   engine/threads.py's ThreadGovernor, starting at `--threads`

and each OpenMP wait policy: `spin` (torch's default: workers spin a while before sleeping),
`short` (GOMP_SPINCOUNT=10000) and `passive` (OMP_WAIT_POLICY=PASSIVE, what `python -m engine`
sets). The wait policy is read when
torch loads, so each (model, wait policy) runs in its own worker process; inside it, alone and
loaded measurements alternate, repeated `--reps` times, and the figure is the slowdown
median(alone) / median(loaded) within that one process. The machine is shared: the CPU time
other processes used during each measurement (besides our own competitor) is reported with it.
Not a test: nothing here asserts.

    python bench/bench_contention.py [--models tiny,default] [--reps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

MODES = ("2 threads", "1 thread", "governor")
# The OpenMP wait settings compared (libgomp reads them when torch loads): torch's default spins up
# to 300k iterations before sleeping; "short" spins 10k.
WAIT_POLICIES = {"spin": {}, "short": {"GOMP_SPINCOUNT": "10000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
MODEL_SETS = {"tiny": [], "default": ["session.nll_every=8", "wc.w_max=1024"]}
BUSY = "while True: pass"


def pieces(texts, size: int = 2048):
    """Cut text into ~`size`-character pieces at newlines, so that a deadline can stop the stream promptly."""
    for t in texts:
        while len(t) > size:
            cut = t.rfind("\n", 0, size) + 1 or size
            yield t[:cut]
            t = t[cut:]
        if t:
            yield t


def until(texts, deadline: float):
    """Stop yielding at `deadline` (perf_counter): the session then ends normally."""
    for t in texts:
        if time.perf_counter() >= deadline:
            return
        yield t


def start_load(n: int, pin: bool) -> list[subprocess.Popen]:
    cpus = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(n):
        cpu = cpus[-1 - i % len(cpus)]
        pre = (lambda cpu=cpu: os.sched_setaffinity(0, {cpu})) if pin else None
        procs.append(subprocess.Popen([sys.executable, "-c", BUSY], preexec_fn=pre))
    time.sleep(0.3)  # let them reach the scheduler's steady state
    return procs


def cpu_seconds(procs: list[subprocess.Popen]) -> float:
    """CPU seconds (user + system) the given processes have used, from /proc/PID/stat."""
    total = 0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / os.sysconf("SC_CLK_TCK")


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


# ----------------------------------------------------------------------------------------------
# the worker: one model, one wait policy (set in its environment before torch loads)


def worker(args) -> None:
    import torch
    from bench_refocus import stdlib_text

    from contract.config import RunConfig, apply_overrides
    from contract.events import NullSink
    from engine.runtime import build_engine
    from engine.session import Session
    from engine.threads import ThreadGovernor, cpu_sample, other_busy_cores

    sets = [f"session.max_tokens={args.tokens}", "session.check_invariants=false", *MODEL_SETS[args.worker]]
    eng = build_engine(apply_overrides(RunConfig(), sets), args.worker, "cpu")
    texts = list(pieces(stdlib_text(args.tokens * 8)))

    def one(mode: str, procs: list[subprocess.Popen]) -> dict:
        torch.set_num_threads(1 if mode == "1 thread" else args.threads)
        seen = []  # the governor's choices
        gov = ThreadGovernor(
            enabled=mode == "governor", set_threads=lambda n: (seen.append(n), torch.set_num_threads(n))
        )
        sess = Session(eng.cfg, eng.model, eng.gistnet, eng.scorer, NullSink(), "stdlib", governor=gov)
        s0, c0, t0 = cpu_sample(), cpu_seconds(procs), time.perf_counter()
        done = sess.run(until(texts, t0 + args.max_seconds))
        wall, s1, c1 = time.perf_counter() - t0, cpu_sample(), cpu_seconds(procs)
        load = len(procs)
        return {"model": args.worker, "wait": args.wait, "mode": mode, "competitors": load,
                "tok_s": round(done.tokens / wall, 1), "ms_step": round(1000 * wall / max(done.steps, 1), 2),
                "tokens": done.tokens, "wall_s": round(wall, 2),
                "competitor_cores": round((c1 - c0) / wall, 2),
                "others_cores": round(max(0.0, other_busy_cores(s0, s1) - (c1 - c0) / wall), 2),
                "governor_sets": seen, "governor_changes": gov.changes}  # fmt: skip

    one("2 threads", [])  # warm-up: kernels, allocator caches, the first forwards
    rows = []
    for rep in range(args.reps):
        for load in (0, args.competitors) if rep % 2 == 0 else (args.competitors, 0):
            procs = start_load(load, args.pin) if load else []
            try:
                for mode in MODES:
                    rows.append(one(mode, procs) | {"rep": rep})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            finally:
                stop_load(procs)
    print(json.dumps(rows))


# ----------------------------------------------------------------------------------------------
# the parent: one worker per (model, wait policy), then the table


def run_worker(model: str, wait: str, args) -> list[dict]:
    drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MCS_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in drop} | WAIT_POLICIES[wait]
    cmd = [sys.executable, __file__, "--worker", model, "--wait", wait, "--reps", str(args.reps),
           "--threads", str(args.threads), "--competitors", str(args.competitors),
           "--tokens", str(args.tokens_tiny if model == "tiny" else args.tokens_default),
           "--max-seconds", str(args.max_seconds)] + (["--pin"] if args.pin else [])  # fmt: skip
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> list[dict]:
    med = statistics.median
    out = []
    order = list(WAIT_POLICIES)
    keys = sorted({(r["model"], r["wait"], r["mode"]) for r in rows},
                  key=lambda k: (k[0], order.index(k[1]), MODES.index(k[2])))  # fmt: skip
    for model, wait, mode in keys:
        sel = [r for r in rows if (r["model"], r["wait"], r["mode"]) == (model, wait, mode)]
        alone = med(r["tok_s"] for r in sel if not r["competitors"])
        loaded = med(r["tok_s"] for r in sel if r["competitors"])
        out.append({"model": model, "wait": wait, "mode": mode, "alone_tok_s": alone, "loaded_tok_s": loaded,
                    "slowdown": round(alone / loaded, 2),
                    "others_cores_alone": med(r["others_cores"] for r in sel if not r["competitors"]),
                    "others_cores_loaded": med(r["others_cores"] for r in sel if r["competitors"]),
                    "governor_threads_loaded": [r["governor_sets"] for r in sel if r["competitors"]]})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,default")
    ap.add_argument("--waits", default="spin,short,passive", help="OpenMP wait policies to compare")
    ap.add_argument("--reps", type=int, default=2, help="alone/loaded pairs per mode")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="the fixed/starting count")
    ap.add_argument("--competitors", type=int, default=1, help="busy processes beside the loaded runs")
    ap.add_argument("--pin", action="store_true", help="pin each competitor to one core (the last ones)")
    ap.add_argument("--tokens-tiny", type=int, default=4096)
    ap.add_argument("--tokens-default", type=int, default=2048)
    ap.add_argument("--max-seconds", type=float, default=25.0, help="a measurement stops streaming after this")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--wait", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [r for m in args.models.split(",") for w in args.waits.split(",") for r in run_worker(m, w, args)]
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = summarise(rows)
    note = (f"{platform.machine()} {len(os.sched_getaffinity(0))} cores; {args.competitors} competing busy "
            f"process(es){' pinned' if args.pin else ''}; load average {load0} before, {load1} after")  # fmt: skip
    print(json.dumps({"machine": note, "summary": table}, indent=2))
    print(f"\n{note}\n")
    print("| model | wait policy | threads | alone tok/s | loaded tok/s | slowdown | others' cores alone / loaded |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['model']} | {r['wait']} | {r['mode']} | {r['alone_tok_s']:.0f} | {r['loaded_tok_s']:.0f} "
              f"| {r['slowdown']:.2f}x | {r['others_cores_alone']:.2f} / {r['others_cores_loaded']:.2f} |")  # fmt: skip
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"machine": note, "rows": rows, "summary": table,
                                                       "args": vars(args)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
