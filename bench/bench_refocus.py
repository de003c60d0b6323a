"""Refocus step time and memory against history length, at a fixed budget.

The design's promise is constant compute: whatever the history (4k or 1M tokens), a refocus step
touches only the bounded working context. This streams real text (standard-library sources) through
one session with the tiny model and, at each checkpoint, reports the mean per-step time of the
last `--window` steps split into tree / scorer / allocator / model, and the process's resident
memory beyond the tree's own storage. Ratios are taken within the one run (the machine is shared).

    python bench/bench_refocus.py [--checkpoints 4096,65536,262144,1048576] [--scorer lensnet] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import sysconfig
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from contract.config import RunConfig, apply_overrides  # noqa: E402
from contract.events import NullSink, StepRecorded  # noqa: E402
from engine.runtime import build_engine  # noqa: E402


def stdlib_text(min_bytes: int):
    """Yield stdlib source files' text until `min_bytes` have been produced (cycling if needed)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and p.stat().st_size > 2000)
    produced = 0
    while produced < min_bytes:
        for f in files:
            t = f.read_text(encoding="utf-8", errors="replace").replace("\x00", "")
            t = t.encode("utf-8", errors="replace").decode("utf-8")
            yield t
            produced += len(t.encode())
            if produced >= min_bytes:
                return


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class CheckpointSink:
    def __init__(self, session_ref, checkpoints: list[int], window: int):
        self.session_ref, self.checkpoints, self.window = session_ref, checkpoints, window
        self.recent: list[StepRecorded] = []
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()

    def emit(self, e) -> None:
        if not isinstance(e, StepRecorded):
            return
        self.recent = (self.recent + [e])[-self.window :]
        if self.checkpoints and e.tokens_seen >= self.checkpoints[0]:
            self.checkpoints.pop(0)
            n = len(self.recent)
            mean = {k: sum(getattr(s, k) for s in self.recent) / n for k in
                    ("t_tree_ms", "t_scorer_ms", "t_allocator_ms", "t_model_ms")}  # fmt: skip
            tree = self.session_ref[0].tree
            self.rows.append(
                {
                    "tokens": e.tokens_seen,
                    "n_entries": e.n_entries,
                    "wc_cost": e.wc_cost,
                    **{k: round(v, 3) for k, v in mean.items()},
                    "step_ms": round(sum(mean.values()), 3),
                    "rss_mb": round(rss_mb(), 1),
                    "tree_mb": round(tree.nbytes() / 2**20, 1),
                    "wall_s": round(time.perf_counter() - self.t0, 1),
                }
            )
            print(json.dumps(self.rows[-1]), file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", default="4096,65536,262144,1048576")
    # recency keeps the WC at the budget from ~2k tokens on, so every checkpoint runs the model on the
    # same WC size; a random-init LensNet collapses most of the WC and would make model time vary.
    ap.add_argument("--scorer", default="recency")
    ap.add_argument("--w-max", type=int, default=2048)
    ap.add_argument("--window", type=int, default=64, help="steps averaged at each checkpoint")
    ap.add_argument("--nll", action="store_true", help="also run the base model each step (slow: ~45 ms/step on CPU)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    checkpoints = [int(x) for x in args.checkpoints.split(",")]
    cfg = apply_overrides(
        RunConfig(),
        [
            f"wc.w_max={args.w_max}",
            f"scorer.name={args.scorer}",
            f"session.max_tokens={checkpoints[-1]}",
            "session.check_invariants=false",
            f"session.compute_nll={args.nll}",
        ],  # fmt: skip
    )
    eng = build_engine(cfg, "tiny", "cpu")
    # Warm up (first forwards, allocator paths) so the 4k checkpoint is not charged for start-up.
    eng.session(NullSink(), "warm-up").run(stdlib_text(8192))
    ref: list = []
    sink = CheckpointSink(ref, list(checkpoints), args.window)
    sess = eng.session(sink, "stdlib")
    ref.append(sess)
    rss0 = rss_mb()
    sess.run(stdlib_text(checkpoints[-1] + 4096))
    rows = sink.rows
    base = rows[0]
    print(f"\nscorer={args.scorer} w_max={args.w_max} tiny cpu nll={args.nll}; RSS before streaming {rss0:.1f} MB\n")
    print("| history tokens | entries | step ms | tree | scorer | allocator | model | x 4k | RSS MB | tree MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tokens']:,} | {r['n_entries']} | {r['step_ms']:.2f} | {r['t_tree_ms']:.2f} "
            f"| {r['t_scorer_ms']:.2f} | {r['t_allocator_ms']:.2f} | {r['t_model_ms']:.2f} "
            f"| {r['step_ms'] / base['step_ms']:.2f} "
            f"| {r['rss_mb']:.0f} | {r['tree_mb']:.1f} |"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "rss_before_mb": rss0, **vars(args)}, indent=2))


if __name__ == "__main__":
    main()
