"""Train GistNet against the frozen base model (DESIGN section 3), resumably, and ship its weights.

Objective: cut a window `[prefix | span | next H]` from a training document, show the base model the
span as its gist(s) and minimise KL(teacher || student) between its next-token distributions on the
H tokens, teacher = the span's raw tokens for LOD1 gists, its 32 LOD1 gists for LOD2 gists (see
`studio/train/gist_task.py`). Each step draws the level (LOD2 with probability `lod2_share`), the
prefix length and how many adjacent blocks are gisted at once from the run's seeded generator, so a
resumed run draws exactly what an uninterrupted one would.

The run folder holds `checkpoint.safetensors` + `state.json` (studio/train/common.py); the finished
weights are written with `GistNet.save` to `--out` (normally `models/<m>/gistnet.safetensors`, where
`--model <m>` loads them). The architecture is `RunConfig().gistnet` (plus `--set-engine`), so the
shipped file loads with the engine's default knobs. This module does not evaluate policies.

    python -m studio.train.gistnet_train --model default --corpus data/corpus --run-dir runs/train/gistnet \
        --out models/default/gistnet.safetensors --set steps=400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract.config import RunConfig, apply_overrides, check_knobs, knob
from engine.gistnet import GistNet
from studio.train.common import (
    Budget,
    Checkpointer,
    ProgressLog,
    cosine_lr,
    restore_training,
    seeded_generator,
    training_tensors,
)
from studio.train.gist_task import Window, horizon_logits, kl_loss, node_span, sample_windows, token_nll, valid_starts


@dataclass(frozen=True)
class GistTrainConfig:
    steps: int = knob(400, "optimizer steps in total, across resumes", lo=1)
    max_seconds: float = knob(0.0, "wall-clock cap on training, across resumes (0 = none)", lo=0)
    batch_size: int = knob(16, "windows per step", lo=1)
    lr: float = knob(2e-3, "peak AdamW learning rate (warmup, then cosine decay)", lo=0, lo_open=True)
    weight_decay: float = knob(0.01, "AdamW decoupled weight decay", lo=0)
    grad_clip: float = knob(1.0, "max global gradient norm", lo=0, lo_open=True)
    horizon: int = knob(64, "H: tokens after the span whose distributions are matched", lo=2)
    prefix_blocks_max: int = knob(8, "raw prefix before the span: 1..this many blocks, drawn per step", lo=1)
    max_gisted: int = knob(2, "LOD1 steps gist 1..this many adjacent blocks at once", lo=1)
    lod2_share: float = knob(0.2, "share of steps that train LOD2 gists (when documents are long enough)", lo=0, hi=1)
    position_mode: str = knob(
        "compact", 'positions as the engine will use them: "global" or "compact"', choices=("global", "compact")
    )
    val_windows: int = knob(32, "held-out windows per level for the validation numbers", lo=1)
    log_every: int = knob(10, "steps between progress lines (and validation points: every 5th line)", lo=1)
    save_every_s: float = knob(60.0, "seconds between checkpoints (and one at the end)", lo=0, lo_open=True)
    seed: int = knob(0, "GistNet's initial weights and every draw of the run", lo=0)

    def __post_init__(self) -> None:
        check_knobs(self, "gistnet_train")


def _draw_task(cfg: GistTrainConfig, gen: torch.Generator, lod2_ok: bool) -> tuple[int, int, int]:
    """(level, n_gisted, prefix blocks) for one step, from the run's generator."""
    u = float(torch.rand((), generator=gen))
    level = 2 if lod2_ok and u < cfg.lod2_share else 1
    n = 1 if level == 2 else int(torch.randint(1, cfg.max_gisted + 1, (), generator=gen))
    p = int(torch.randint(1, cfg.prefix_blocks_max + 1, (), generator=gen))
    return level, n, p


def _lod2_possible(docs: list[np.ndarray], cfg: GistTrainConfig, bs: int) -> bool:
    return any(valid_starts(len(d), bs, node_span(2, bs), cfg.horizon, node_span(2, bs)) for d in docs)


def val_windows(docs: list[np.ndarray], cfg: GistTrainConfig, bs: int, max_lod: int) -> dict[int, Window]:
    """Fixed held-out windows per level (prefix 4 blocks, one node), drawn from their own generator."""
    gen = seeded_generator(cfg.seed + 1_000_003)
    out = {}
    for level in range(1, min(max_lod, 2) + 1):
        if level == 2 and not _lod2_possible(docs, cfg, bs):
            continue
        out[level] = sample_windows(docs, cfg.val_windows, level=level, n_gisted=1, prefix=4 * bs,
                                    horizon=cfg.horizon, block_size=bs, gen=gen)  # fmt: skip
    return out


@torch.no_grad()
def gist_metrics(base, net: GistNet, win: Window, position_mode: str) -> dict[str, float]:
    """KL of the gist vs its teacher, and ΔNLL@H (vs the teacher) of gist, drop and mean-pool."""
    teacher = "full" if win.level == 1 else "lod1"
    logits = {v: horizon_logits(base, net, win, v, position_mode) for v in (teacher, "gist", "drop", "mean_pool")}
    nll = {v: float(token_nll(lg, win.targets).mean()) for v, lg in logits.items()}
    return {
        "kl": float(kl_loss(logits[teacher], logits["gist"])),
        "teacher_nll": nll[teacher],
        "d_gist": nll["gist"] - nll[teacher],
        "d_drop": nll["drop"] - nll[teacher],
        "d_mean_pool": nll["mean_pool"] - nll[teacher],
    }


def train_gistnet(
    cfg: GistTrainConfig,
    model,
    train_docs: list[np.ndarray],
    val_docs: list[np.ndarray],
    run_dir: str | Path,
    out_path: str | Path | None = None,
    engine_cfg: RunConfig | None = None,
    stream=None,
    max_new_steps: int = 0,
    base_model: str = "",
) -> dict:
    """Train (or resume) GistNet for `model` (a `BaseModel`) and return a summary dict.

    Writes the run folder's checkpoint at least every `save_every_s` and at the end; writes the
    shipped weights to `out_path` when given. `max_new_steps > 0` stops this call after that many
    steps (checkpoint saved), so a caller can train in slices; a later call resumes exactly.
    Raises CheckpointError on a corrupt run folder.
    """
    ecfg = engine_cfg or RunConfig()
    bs, max_lod = ecfg.tree.block_size, ecfg.tree.max_lod
    base = model.model  # the Hugging Face module: we need gradients through it, not BaseModel's no_grad calls
    net = GistNet(model.hidden_size, ecfg.gistnet, max_lod, bs, seed=cfg.seed).to(model.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = seeded_generator(cfg.seed)
    ckpt = Checkpointer(Path(run_dir), every_s=cfg.save_every_s)
    budget = Budget(max_steps=cfg.steps, max_seconds=cfg.max_seconds)
    resumed = ckpt.load()
    curve = None
    if resumed is not None:
        tensors, state = resumed
        restore_training(net, opt, gen, tensors)
        budget.resume(state)
        curve = state.get("curve")
    log = ProgressLog(every=cfg.log_every, stream=stream, curve=curve)
    val = val_windows(val_docs, cfg, bs, max_lod)
    lod2_ok = max_lod >= 2 and _lod2_possible(train_docs, cfg, bs)
    net.eval()
    initial = {lvl: gist_metrics(base, net, w, cfg.position_mode) for lvl, w in val.items()}
    config_dict = {"train": dataclasses.asdict(cfg), "gistnet": dataclasses.asdict(ecfg.gistnet),
                   "tree": dataclasses.asdict(ecfg.tree), "model": model.model_id}  # fmt: skip
    net.train()
    first = budget.step
    while not budget.done() and not (max_new_steps and budget.step - first >= max_new_steps):
        level, n, p = _draw_task(cfg, gen, lod2_ok)
        win = sample_windows(train_docs, cfg.batch_size, level=level, n_gisted=n, prefix=p * bs,
                             horizon=cfg.horizon, block_size=bs, gen=gen)  # fmt: skip
        for g in opt.param_groups:
            g["lr"] = cosine_lr(budget.fraction(), cfg.lr)
        with torch.no_grad():
            teacher = horizon_logits(base, net, win, "full" if level == 1 else "lod1", cfg.position_mode)  # [B, H, V]
        student = horizon_logits(base, net, win, "gist", cfg.position_mode)  # [B, H, V]
        loss = kl_loss(teacher, student)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        budget.advance(tokens=int(win.tokens.numel()))
        extra = {}
        if budget.step % (5 * cfg.log_every) == 0 or budget.done():
            net.eval()
            for lvl, w in val.items():
                m = gist_metrics(base, net, w, cfg.position_mode)
                extra |= {f"val{lvl}_kl": m["kl"], f"val{lvl}_d_gist": m["d_gist"]}
            net.train()
        log.step(budget, loss=float(loss.detach()), **extra)
        if ckpt.due() or budget.done() or (max_new_steps and budget.step - first >= max_new_steps):
            ckpt.save(training_tensors(net, opt, gen), log.state(budget, config_dict))
    net.eval()
    final = {lvl: gist_metrics(base, net, w, cfg.position_mode) for lvl, w in val.items()}
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        net.save(out_path, {"base_model": base_model} if base_model else None)
    return {"steps": budget.step, "elapsed_s": round(budget.elapsed_s, 1), "curve": log.curve,
            "val_initial": {f"lod{k}": v for k, v in initial.items()},
            "val": {f"lod{k}": v for k, v in final.items()}, "out": str(out_path) if out_path else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from engine.model_loader import ModelLoadError, load_model
    from studio.train.common import CheckpointError
    from studio.train.knob_sets import apply_sets
    from studio.train.token_docs import load_token_docs

    ap = argparse.ArgumentParser(prog="python -m studio.train.gistnet_train", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="'tiny', 'default' or a local Hugging Face model folder")
    ap.add_argument("--corpus", required=True, help="corpus folder (studio/train/corpus.py) with train/validation")
    ap.add_argument("--run-dir", required=True, help="run folder: checkpoint + state (resumed if present)")
    ap.add_argument("--out", required=True, help="where to write the finished gistnet.safetensors")
    ap.add_argument("--max-chars", type=int, default=4_000_000, help="training text to tokenise (0 = all)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="GistTrainConfig knob")
    ap.add_argument("--set-engine", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="engine knob (tree.*, gistnet.*) the weights are built for")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        cfg = apply_sets(GistTrainConfig(), args.set)
        ecfg = apply_overrides(RunConfig(), args.set_engine)
        model = load_model(args.model, device=args.device)
        gen = seeded_generator(cfg.seed + 7)
        tok = model.tokenize
        train = load_token_docs(args.corpus, "train", tok, max_chars=args.max_chars, min_chars=2_000, gen=gen)
        val = load_token_docs(args.corpus, "validation", tok, max_chars=args.max_chars // 8, min_chars=2_000, gen=gen)
        print(f"gistnet: {len(train)} train / {len(val)} validation documents", file=sys.stderr)
        from engine.default_model import model_identity
        from engine.runtime import nets_dir

        identity = model_identity(args.model, nets_dir(args.model) if args.model != "default" else None)
        out = train_gistnet(cfg, model, [d.tokens for d in train], [d.tokens for d in val], args.run_dir, args.out,
                            ecfg, base_model=identity)  # fmt: skip
    except (ValueError, OSError, ModelLoadError, CheckpointError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
