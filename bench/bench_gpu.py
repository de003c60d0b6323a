"""Refocus step against the base model's forward, on one GPU, with the default model: the GPU engine's cost.

One session streams `--tokens` tokens of real text (standard-library sources) at `wc.w_max`
(default 4,096). The history is ingested with the cheap recency scorer (GistNet still gists every
block: that is the ingest rate reported); the last `--steps` refocus steps run the LensNet scorer,
and their time is split into tree (GistNet on the new block), scorer (view + LensNet) and
allocator. Materialisation of the final WC and the base model's forward over it (the WC plus one
block, the shape of the NLL forward) are then timed on their own, synchronised, `--reps` times.
The figure of merit is focus / forward, where focus = tree + scorer + allocator + materialise.

    python bench/bench_gpu.py [--model default] [--device cuda] [--tokens 1048576] [--json out.json]
    python bench/bench_gpu.py --model tiny --device cpu --tokens 20000 --steps 20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_refocus import stdlib_text  # noqa: E402
from contract.config import RunConfig, apply_overrides  # noqa: E402
from contract.events import StepRecorded  # noqa: E402
from engine.materialize import materialize  # noqa: E402
from engine.runtime import build_engine  # noqa: E402
from engine.scorers import build_scorer  # noqa: E402


class Switch:
    """Recency (no vectors) for the ingest, then the engine's LensNet for the timed steps."""

    name = "lensnet"

    def __init__(self, cheap, real, from_step: int):
        self.cheap, self.real, self.from_step, self.step = cheap, real, from_step, 0

    @property
    def needs_vectors(self) -> bool:
        return self.step >= self.from_step

    def score(self, view):
        self.step = view.step + 1  # what the session asks `needs_vectors` next is about the next step
        return (self.real if view.step >= self.from_step else self.cheap).score(view)


class Timings:
    def __init__(self, from_step: int):
        self.from_step, self.ingest, self.timed = from_step, [], []

    def emit(self, e) -> None:
        if isinstance(e, StepRecorded):
            (self.timed if e.step >= self.from_step else self.ingest).append(e)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, reps: int) -> list[float]:
    fn()  # warm-up (kernels, allocator)
    out = []
    for _ in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--w-max", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200, help="timed LensNet steps at the end")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    every = 32
    cfg = apply_overrides(RunConfig(), [f"wc.w_max={args.w_max}", "scorer.name=lensnet", "session.compute_nll=false",
                                        "session.record_gists=false", "session.check_invariants=false",
                                        f"session.max_tokens={args.tokens}"])  # fmt: skip
    eng = build_engine(cfg, args.model, args.device)
    dev = eng.model.device
    from_step = max(0, args.tokens // every - 1 - args.steps)
    scorer = Switch(build_scorer(apply_overrides(eng.cfg, ["scorer.name=recency"])), eng.scorer, from_step)
    sink = Timings(from_step)
    sess = eng.session(sink, "stdlib", scorer=scorer)
    t0 = time.perf_counter()
    sess.run(stdlib_text(args.tokens * 6))
    wall = time.perf_counter() - t0
    ing, tim = sink.ingest, sink.timed
    ingest_tokens = ing[-1].tokens_seen if ing else 0
    t_ingest = sum(s.t_tree_ms + s.t_scorer_ms + s.t_allocator_ms for s in ing) / 1000.0
    t_gist = sum(s.t_tree_ms for s in ing) / 1000.0

    wc, tree = sess.wc, sess.tree
    mat_ms = timed(lambda: materialize(wc, tree, eng.model, eng.cfg.wc.position_mode), dev, args.reps)
    m = materialize(wc, tree, eng.model, eng.cfg.wc.position_mode)
    nxt = torch.from_numpy(tree.tokens(max(0, tree.tokens_seen - every), tree.tokens_seen).astype(np.int64))
    x = torch.cat([m.inputs_embeds, eng.model.embed(nxt)[None]], dim=1)  # [1, T + 32, d]: the NLL forward's shape
    pos = torch.cat(
        [m.position_ids, torch.arange(m.next_position, m.next_position + nxt.shape[0], device=dev)[None]], 1
    )
    fwd_ms = timed(lambda: eng.model.forward(x, pos, logits_to_keep=every), dev, args.reps)

    def mean(key):
        return statistics.fmean(getattr(s, key) for s in tim) if tim else float("nan")

    parts = {"tree_ms": mean("t_tree_ms"), "scorer_ms": mean("t_scorer_ms"), "allocator_ms": mean("t_allocator_ms"),
             "materialize_ms": statistics.median(mat_ms)}  # fmt: skip
    focus = sum(parts.values())
    fwd = statistics.median(fwd_ms)
    out = {
        "model": eng.model.model_id, "device": str(dev), "dtype": str(eng.model.dtype).replace("torch.", ""),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "tokens": tree.tokens_seen, "w_max": args.w_max, "wc_entries": int(wc.n), "wc_cost": int(wc.total_cost),
        "timed_steps": len(tim), "focus_ms": round(focus, 3), **{k: round(v, 3) for k, v in parts.items()},
        "forward_ms": round(fwd, 3), "forward_tokens": int(x.shape[1]), "focus_over_forward": round(focus / fwd, 4),
        "ingest_tokens_per_s": round(ingest_tokens / t_ingest, 1) if t_ingest else None,
        "gistnet_ingest_tokens_per_s": round(ingest_tokens / t_gist, 1) if t_gist else None,
        "session_wall_s": round(wall, 1),
    }  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
