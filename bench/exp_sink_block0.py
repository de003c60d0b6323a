"""Indicative experiment (not a policy): how much the attention sink alone is worth to a policy.

Streams one held-out document under each named policy exactly as `engine eval` does (w_max 1,024,
the next block's NLL every 4th step, the first 16,384 tokens), but measures every NLL with block
0's 32 raw tokens put in front of the working context whenever the WC does not already start with
them (compact positions, so 32 positions over the budget). The focus decisions are the policy's
own; only what the base model sees when scored changes. Compare with the policy's row of
`bench/results/eval_policies_default.json` (same blocks). models/README.md reports the result.

    python bench/exp_sink_block0.py [--input runs/train/corpus/test/tarfile.py] [--policies recency,lensnet]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine.session as session_module  # noqa: E402
from contract.config import apply_overrides  # noqa: E402
from engine.materialize import Materialized, materialize  # noqa: E402
from engine.runtime import build_engine  # noqa: E402
from studio.eval import _weighted, eval_run_config, run_policy  # noqa: E402


def with_block0(wc, tree, model, position_mode: str = "global") -> Materialized:
    """`materialize`, with block 0's raw tokens in front unless the WC starts with them (compact only)."""
    m = materialize(wc, tree, model, position_mode)
    if wc.n and wc.lod[0] == 0 and wc.start[0] == 0:
        return m
    bs = wc.block_size
    head = model.embed(torch.from_numpy(tree.tokens(0, bs).astype(np.int64))).to(m.inputs_embeds.dtype)  # [bs, d]
    embeds = torch.cat([head[None], m.inputs_embeds], dim=1)  # [1, bs + T, d]
    pos = torch.arange(embeds.shape[1], device=m.position_ids.device)[None]  # [1, bs + T]
    entry_of_pos = np.concatenate([np.zeros(bs, np.int64), m.entry_of_pos])
    return Materialized(embeds, pos, entry_of_pos, m.next_position + bs, m.n_entries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=str(REPO / "runs" / "train" / "corpus" / "test" / "tarfile.py"))
    ap.add_argument("--policies", default="recency,lensnet")
    args = ap.parse_args()
    cfg = eval_run_config(["session.max_tokens=16384"])
    engine = build_engine(apply_overrides(cfg, ["scorer.name=lensnet"]), "default", "cpu")
    if engine.cfg.wc.position_mode != "compact":
        sys.exit("error: this experiment assumes compact positions")
    session_module.materialize = with_block0  # the NLL forwards (and the attention mass they leave)
    text = pathlib.Path(args.input).read_text()
    for policy in args.policies.split(","):
        t0 = time.perf_counter()
        rows = run_policy(engine, engine.cfg, policy, [(args.input, text)], 4)
        nll = _weighted([(r[3], r[2]) for r in rows if r[3] is not None])
        print(f"{policy}: nll with block 0 raw in front {nll:.4f} over {len(rows)} blocks "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
