"""Benchmark: focus-allocator plan time against working-context size (256 .. 16384 entries).

For each size it builds a realistic WC of exactly that many entries (block_size 32, max_lod 2): the
oldest ~1/8 are LOD2 gists, about half are LOD1 gists with runs of expanded LOD0 detail among them,
the newest blocks are raw, plus a partial tail. A realistic allocator state comes from 20 warm-up
refocus steps (advance one block, score, plan) starting from that WC, so the per-node state arrays
exist and hold history for its nodes. Then, with seeded random scores and default knobs, it times:

  plan          `plan(...)` on the built WC with the warmed state, budget = its cost + 8 expansions
                of headroom (voluntary edits only; expansions fit)
  plan+append   `plan(...)` after one more block arrives at a full budget (budget = the built WC's
                cost): what a session calls every refocus step; the voluntary collapses absorb it
  forced        `plan(...)` with the budget 16 collapses below the cost: forced collapses run too
  apply         `apply(wc, decisions)` of the `plan` call's decisions

With `--impl jit` or `both` (the default) each plan call is also timed through `plan_jit`
(engine/refocus.py; numba kernels in engine/allocator_jit.py), after checking that it returns the
same decisions and WC, and a second table gives its times and the numpy/jit ratio. The kernels
compile (or load from numba's cache) before the first timed size.

Every call gets the same inputs (plan is pure), GC is paused while timing (as timeit does), and
we report median and p90 per call in ms, plus median / 1 ms (the allocator's per-step target).
It does not run a scorer or a model; WC invariants are checked while setting up, not while timing.

    python bench/bench_allocator.py [--reps N] [--json out.json] [--sizes 256,1024] [--profile 8192]
                                    [--impl numpy|jit|both]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from the repo root without installing

from contract.config import (
    AllocatorConfig,  # noqa: E402
    PlanKnobs,  # noqa: E402
)
from engine.allocator import plan  # noqa: E402
from engine.allocator_types import AllocatorState  # noqa: E402
from engine.edits import apply  # noqa: E402
from engine.refocus import plan_jit  # noqa: E402
from engine.working_context import WorkingContext, check_invariants  # noqa: E402

SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384)
BS, MAX_LOD = 32, 2
PROTECT_BLOCKS = 4  # default protect_recent=128 tokens at block_size 32
WARMUP_STEPS = 20
TARGET_MS = 1.0


def build_wc(n: int, rng: np.random.Generator) -> WorkingContext:
    """A WC of exactly `n` entries: LOD2 oldest, LOD1 with runs of LOD0 detail, raw newest blocks."""
    n2 = n // 8
    n0 = (3 * n) // 8
    n0_tail = (3 * n0) // 4  # newest raw blocks (the rest of the LOD0 budget is detail among the LOD1)
    n1 = n - n2 - n0
    region = n1 + (n0 - n0_tail)  # blocks after the LOD2 span and before the raw tail
    # Detail comes in runs of 8 blocks, as an expansion of neighbours does, leaving many LOD1 sibling
    # groups whole (collapsible into LOD2) instead of peppering every group with one raw block.
    lod_region = np.ones(region, np.int8)
    slots = region // 8
    n_runs = min((n0 - n0_tail) // 8, slots)
    for s in rng.choice(slots, size=n_runs, replace=False):
        lod_region[8 * s : 8 * s + 8] = 0
    extra = (n0 - n0_tail) - 8 * n_runs  # leftover detail blocks, at random LOD1 spots
    if extra:
        lod_region[rng.choice(np.flatnonzero(lod_region == 1), size=extra, replace=False)] = 0
    first_block = n2 * BS  # LOD2 node i covers blocks [32i, 32i+32)
    lod = np.concatenate([np.full(n2, 2, np.int8), lod_region, np.zeros(n0_tail, np.int8)])
    index = np.concatenate([np.arange(n2), first_block + np.arange(region + n0_tail)]).astype(np.int64)
    tokens_seen = (first_block + region + n0_tail) * BS + 17  # 17-token raw tail
    wc = WorkingContext.empty(BS, MAX_LOD).advance(tokens_seen).with_entries(lod, index)
    assert wc.n == n
    return wc


def scores(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, n).astype(np.float32)


def setup(n: int, seed: int = 0):
    """(wc with exactly `n` entries, warmed-up state, step, rng)."""
    rng = np.random.default_rng(seed)
    wc = build_wc(n, rng)
    knobs = PlanKnobs(AllocatorConfig(), wc.total_cost + 8 * (BS - 1), PROTECT_BLOCKS)
    check_invariants(wc, knobs.w_max, knobs.protect_blocks)
    state = AllocatorState.initial(MAX_LOD)
    cur = wc
    for step in range(WARMUP_STEPS):
        cur = cur.advance(cur.tokens_seen + BS)
        p = plan(cur, scores(rng, cur.n), state, knobs, step)
        check_invariants(p.wc, knobs.w_max, knobs.protect_blocks)
        cur, state = p.wc, p.state
    return wc, state, WARMUP_STEPS, rng


def timeit(fn, reps: int) -> np.ndarray:
    """Per-call ms over `reps` calls (after one untimed call), GC paused."""
    fn()
    out = np.empty(reps)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for i in range(reps):
            t = time.perf_counter()
            fn()
            out[i] = (time.perf_counter() - t) * 1e3
    finally:
        if was:
            gc.enable()
    return out


def scenarios(n: int):
    """name -> (wc, scores, knobs) of each timed plan call, plus the warmed state and step."""
    wc, state, step, rng = setup(n)
    cost = wc.total_cost
    grown = wc.advance(wc.tokens_seen + BS)
    a = AllocatorConfig()
    cases = {
        "plan": (wc, scores(rng, wc.n), PlanKnobs(a, cost + 8 * (BS - 1), PROTECT_BLOCKS)),
        "plan_append": (grown, scores(rng, grown.n), PlanKnobs(a, cost, PROTECT_BLOCKS)),
        "forced": (wc, scores(rng, wc.n), PlanKnobs(a, cost - 16 * (BS - 1), PROTECT_BLOCKS)),
    }
    return cases, state, step


def bench_one(n: int, reps: int, impls: tuple[str, ...] = ("numpy",)) -> dict:
    cases, state, step = scenarios(n)
    wc = cases["plan"][0]
    lod_counts = np.bincount(wc.lod, minlength=MAX_LOD + 1)
    row = {
        "entries": int(wc.n),
        "lod0": int(lod_counts[0]),
        "lod1": int(lod_counts[1]),
        "lod2": int(lod_counts[2]),
        "wc_cost": int(wc.total_cost),
    }
    for name, (w, s, knobs) in cases.items():
        p = plan(w, s, state, knobs, step)
        d = p.decisions
        assert p.wc.total_cost <= knobs.w_max
        row |= {
            f"{name}_candidates": len(d),
            f"{name}_applied": int(d.applied.sum()),
            f"{name}_forced": int((d.applied & d.forced).sum()),
        }
        if "jit" in impls:
            q = plan_jit(w, s, state, knobs, step)
            assert q.wc.same_as(p.wc) and all(
                np.array_equal(getattr(q.decisions, f), getattr(d, f)) for f in ("node_id", "action", "outcome", "seq")
            ), f"plan_jit disagrees with plan ({name}, {n} entries)"
            t = timeit(lambda w=w, s=s, knobs=knobs: plan_jit(w, s, state, knobs, step), reps)
            row |= {
                f"jit_{name}_median_ms": float(np.median(t)),
                f"jit_{name}_p90_ms": float(np.percentile(t, 90)),
                f"jit_{name}_fallbacks": int(not q.compiled),  # 1: the call was answered by `plan`
            }
        if "numpy" not in impls:
            continue
        t = timeit(lambda w=w, s=s, knobs=knobs: plan(w, s, state, knobs, step), reps)
        row |= {
            f"{name}_median_ms": float(np.median(t)),
            f"{name}_p90_ms": float(np.percentile(t, 90)),
            f"{name}_target_ratio": float(np.median(t) / TARGET_MS),
        }
        if "jit" in impls:
            row[f"jit_{name}_speedup"] = row[f"{name}_median_ms"] / row[f"jit_{name}_median_ms"]
        if name == "plan":
            t_apply = timeit(lambda w=w, d=d: apply(w, d), reps)
            row |= {"apply_median_ms": float(np.median(t_apply)), "apply_p90_ms": float(np.percentile(t_apply, 90))}
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| entries | L0/L1/L2 | plan med ms | plan p90 ms | plan / 1 ms | plan+append med ms | plan+append / 1 ms | "
        "forced med ms (collapses) | forced / 1 ms | apply med ms |"
    )
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['entries']} | {r['lod0']}/{r['lod1']}/{r['lod2']} | {r['plan_median_ms']:.3f} | "
            f"{r['plan_p90_ms']:.3f} | {r['plan_target_ratio']:.2f}x | {r['plan_append_median_ms']:.3f} | "
            f"{r['plan_append_target_ratio']:.2f}x | {r['forced_median_ms']:.3f} ({r['forced_forced']}) | "
            f"{r['forced_target_ratio']:.2f}x | {r['apply_median_ms']:.3f} |"
        )
    return "\n".join(lines)


def jit_table(rows: list[dict]) -> str:
    """plan_jit per call (median / p90 ms), and numpy median / jit median where both were timed."""
    names = ("plan", "plan_append", "forced")
    both = "plan_median_ms" in rows[0]
    cols = [f"{c} jit med ms | {c} jit p90 ms" + (f" | {c} numpy/jit" if both else "")
            for c in ("plan", "plan+append", "forced")]  # fmt: skip
    head = "| entries | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        cells = []
        for c in names:
            cells += [f"{r[f'jit_{c}_median_ms']:.4f}", f"{r[f'jit_{c}_p90_ms']:.4f}"]
            cells += [f"{r[f'jit_{c}_speedup']:.1f}x"] if both else []
        lines.append(f"| {r['entries']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile(n: int, reps: int, top: int = 25) -> None:
    """cProfile each timed plan call at `n` entries; print the hottest functions by own time."""
    cases, state, step = scenarios(n)
    for name, (w, s, knobs) in cases.items():
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(reps):
            plan(w, s, state, knobs, step)
        prof.disable()
        print(f"\n## cProfile: {name}, {n} entries, {reps} calls (sorted by own time)\n")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="timed calls per measurement (default 200)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--sizes", type=str, default=",".join(map(str, SIZES)), help="comma-separated entry counts")
    ap.add_argument("--profile", type=int, default=0, help="also cProfile plan at this entry count")
    ap.add_argument("--impl", choices=("numpy", "jit", "both"), default="both", help="planner(s) to time")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    impls = ("numpy", "jit") if args.impl == "both" else (args.impl,)
    if "jit" in impls:
        t = time.perf_counter()
        bench_one(64, 1, ("jit",))  # compile the kernels (or load them from numba's cache) untimed
        print(f"plan_jit ready in {time.perf_counter() - t:.1f} s (numba compile or cache load)", file=sys.stderr)
    rows = []
    for n in sizes:
        rows.append(bench_one(n, args.reps, impls))
        r = rows[-1]
        msg = [f"plan median {r['plan_median_ms']:.3f} ms"] if "numpy" in impls else []
        msg += [f"plan_jit median {r['jit_plan_median_ms']:.4f} ms"] if "jit" in impls else []
        print(f"{n} entries: " + ", ".join(msg), file=sys.stderr, flush=True)
    if "numpy" in impls:
        print(table(rows))
    if "jit" in impls:
        print("\nplan_jit (engine/refocus.py, numba kernels):\n")
        print(jit_table(rows))
    meta = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "reps": args.reps,
        "warmup_steps": WARMUP_STEPS,
        "timing": "per-call ms, GC paused, same inputs every call; median and p90 over reps",
        "block_size": BS,
        "max_lod": MAX_LOD,
        "knobs": "AllocatorConfig() defaults",
        "target_ms": TARGET_MS,
        "impl": args.impl,
    }
    if "jit" in impls:
        import numba

        meta["numba"] = numba.__version__
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.profile:
        profile(args.profile, max(20, args.reps // 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
