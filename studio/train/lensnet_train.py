"""Train LensNet on counterfactual ΔNLL labels (DESIGN section 3), resumably, and ship its weights.

Labels come from `studio/train/lens_labels.py` (u = value of one level of detail per position, per
entry, NaN where not measured). Per state the labels are centred on their median (the allocator
compares entries with one another: collapse the least useful detail, expand the most useful gist)
and squashed, `y = tanh((u - median) / scale)`, with `scale` one constant for the whole label set
(a high percentile of |u - median|, saved in the run state). The loss on each state is

    mean (score - y)^2  +  rank_weight * mean softplus(-rank_sharpness * (score_i - score_j))
                       +  aux_weight * mean (aux - attention_utility)^2

over measured entries, the second term over the decisive pairs, (u_i - u_j) / scale > rank_margin
(RankNet; most one-level edits barely move the next tokens' NLL, and ranking those near-ties would
only fit noise), the third over every entry (the base model's attention, a cheap dense target).

`prev_score` is fed as 0 and its input weights are zeroed: the labelled states come from other
policies, whose previous scores mean something else than LensNet's own would at run time.

The run folder holds `labels.safetensors` (resumable per episode), `checkpoint.safetensors` and
`state.json`; the finished weights go to `--out` via `LensNet.save`, with the architecture of
`RunConfig().lensnet`, so `--model <m>` loads them with the default knobs.

    python -m studio.train.lensnet_train --model default --corpus data/corpus --run-dir runs/train/lensnet \
        --out models/default/lensnet.safetensors --set steps=600 --set-labels episodes=40
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
import torch.nn.functional as F

from contract.config import RunConfig, apply_overrides, check_knobs, knob
from engine.lensnet import FEATURE_NAMES, LensNet
from studio.train.common import (
    Budget,
    Checkpointer,
    ProgressLog,
    cosine_lr,
    restore_training,
    seeded_generator,
    training_tensors,
)

PREV = FEATURE_NAMES.index("prev_score")


@dataclass(frozen=True)
class LensTrainConfig:
    steps: int = knob(600, "optimizer steps in total, across resumes", lo=1)
    max_seconds: float = knob(0.0, "wall-clock cap on training, across resumes (0 = none)", lo=0)
    states_per_step: int = knob(8, "labelled WC states per optimizer step", lo=1)
    lr: float = knob(1e-3, "peak AdamW learning rate (warmup, then cosine decay)", lo=0, lo_open=True)
    weight_decay: float = knob(0.01, "AdamW decoupled weight decay", lo=0)
    grad_clip: float = knob(1.0, "max global gradient norm", lo=0, lo_open=True)
    rank_weight: float = knob(1.0, "weight of the pairwise ranking term", lo=0)
    rank_sharpness: float = knob(5.0, "RankNet slope on score differences (scores live in [-1, 1])", lo=0, lo_open=True)
    rank_margin: float = knob(0.5, "rank only pairs whose labels differ by more than this many label scales", lo=0)
    aux_weight: float = knob(
        0.3, "weight of the auxiliary target: the base model's attention utility of every entry", lo=0
    )
    scale_quantile: float = knob(
        0.8,
        "label scale = this quantile of |u - state median| over the training set",
        lo=0,
        hi=1,
        lo_open=True,
        hi_open=True,
    )
    val_share: float = knob(0.15, "share of states (the last ones) held out for validation", lo=0, hi=1, hi_open=True)
    log_every: int = knob(20, "steps between progress lines (validation every 5th line)", lo=1)
    save_every_s: float = knob(60.0, "seconds between checkpoints (and one at the end)", lo=0, lo_open=True)
    seed: int = knob(0, "LensNet's initial weights and every draw of the run", lo=0)

    def __post_init__(self) -> None:
        check_knobs(self, "lensnet_train")


def usable(states: list[dict]) -> list[dict]:
    """States with at least two measured entries (a ranking needs a pair)."""
    return [s for s in states if int(torch.isfinite(s["label"]).sum()) >= 2]


def label_scale(states: list[dict], quantile: float) -> float:
    """One scale for the whole set: the `quantile` of |u - state median| over measured entries."""
    dev = []
    for s in states:
        u = s["label"][torch.isfinite(s["label"])]
        dev.append((u - u.median()).abs())
    q = float(torch.quantile(torch.cat(dev).double(), quantile)) if dev else 0.0
    return q if q > 0 else 1e-4


def state_loss(net: LensNet, s: dict, scale: float, cfg: LensTrainConfig) -> tuple[torch.Tensor, dict]:
    """(loss, numbers) of one state: regression onto tanh((u - median)/scale), RankNet over the pairs
    that differ by more than `rank_margin` scales (`pair_acc` is measured on those too), and the
    auxiliary attention target on every entry that has one."""
    feats = s["feats"].clone()
    feats[:, PREV] = 0.0  # see the module docstring
    out = net(s["entry_vecs"], feats, s["queries"])
    scores = out.scores  # [n]
    aux_y = s["aux"].to(scores.device)  # [n]
    has = torch.isfinite(aux_y)
    aux = F.mse_loss(out.aux[has], aux_y[has]) if has.any() else scores.sum() * 0.0
    m = torch.isfinite(s["label"]).to(scores.device)
    u = s["label"].to(scores.device)[m]  # [k]
    z = (u - u.median()) / scale  # [k]
    y = torch.tanh(z)  # [k]
    sc = scores[m]  # [k]
    reg = F.mse_loss(sc, y)
    # Most edits barely move the next tokens' NLL: ranking near-ties only fits noise, so the ranking
    # term (and its accuracy) counts the decisive pairs, whose labels differ by more than the margin.
    better = (z[:, None] - z[None, :]) > cfg.rank_margin  # [k, k]: pair (i, j) with u_i clearly > u_j
    diff = sc[:, None] - sc[None, :]  # [k, k]
    rank = F.softplus(-cfg.rank_sharpness * diff[better]).mean() if better.any() else sc.sum() * 0.0
    with torch.no_grad():
        acc = float((diff[better] > 0).float().mean()) if better.any() else float("nan")
    loss = reg + cfg.rank_weight * rank + cfg.aux_weight * aux
    return loss, {"reg": float(reg.detach()), "rank": float(rank.detach()), "aux": float(aux.detach()), "pair_acc": acc}


@torch.no_grad()
def evaluate(net: LensNet, states: list[dict], scale: float, cfg: LensTrainConfig) -> dict[str, float]:
    """Mean regression loss, ranking loss and pairwise ranking accuracy over `states`."""
    if not states:
        return {}
    rows = [state_loss(net, s, scale, cfg)[1] for s in states]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def train_lensnet(
    cfg: LensTrainConfig,
    states: list[dict],
    d_embed: int,
    run_dir: str | Path,
    out_path: str | Path | None = None,
    engine_cfg: RunConfig | None = None,
    stream=None,
    max_new_steps: int = 0,
    device: str = "cpu",
    base_model: str = "",
) -> dict:
    """Train (or resume) LensNet on labelled states; return a summary (curve, validation numbers).

    The last `val_share` of the states are held out. `max_new_steps > 0` stops this call after that
    many steps (checkpoint saved); a later call resumes exactly. `base_model` (the identity of the base
    model the labels came from) is written into the weights file.
    """
    ecfg = engine_cfg or RunConfig()
    states = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in s.items()} for s in usable(states)]
    n_val = int(round(cfg.val_share * len(states)))
    train, val = states[: len(states) - n_val], states[len(states) - n_val :]
    if not train:
        raise ValueError("no labelled states to train LensNet on (documents too short for the budgets?)")
    net = LensNet(d_embed, ecfg.lensnet, seed=cfg.seed)
    with torch.no_grad():
        net.feat_proj.weight[:, PREV] = 0.0
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = seeded_generator(cfg.seed)
    ckpt = Checkpointer(Path(run_dir), every_s=cfg.save_every_s)
    budget = Budget(max_steps=cfg.steps, max_seconds=cfg.max_seconds)
    resumed = ckpt.load()
    curve, scale = None, label_scale(train, cfg.scale_quantile)
    if resumed is not None:
        tensors, state = resumed
        restore_training(net, opt, gen, tensors)
        budget.resume(state)
        curve, scale = state.get("curve"), float(state.get("label_scale", scale))
    log = ProgressLog(every=cfg.log_every, stream=stream, curve=curve)
    config_dict = {"train": dataclasses.asdict(cfg), "lensnet": dataclasses.asdict(ecfg.lensnet)}
    initial = evaluate(net.eval(), val or train, scale, cfg)
    net.train()
    first = budget.step
    while not budget.done() and not (max_new_steps and budget.step - first >= max_new_steps):
        pick = torch.randint(len(train), (cfg.states_per_step,), generator=gen).tolist()
        for g in opt.param_groups:
            g["lr"] = cosine_lr(budget.fraction(), cfg.lr)
        losses = [state_loss(net, train[i], scale, cfg)[0] for i in pick]
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        budget.advance(tokens=sum(int(train[i]["label"].shape[0]) for i in pick))
        extra = {}
        if val and (budget.step % (5 * cfg.log_every) == 0 or budget.done()):
            net.eval()
            extra = {f"val_{k}": v for k, v in evaluate(net, val, scale, cfg).items()}
            net.train()
        log.step(budget, loss=float(loss.detach()), **extra)
        if ckpt.due() or budget.done() or (max_new_steps and budget.step - first >= max_new_steps):
            ckpt.save(training_tensors(net, opt, gen), log.state(budget, config_dict, label_scale=scale))
    net.eval()
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        net.save(out_path, {"base_model": base_model} if base_model else None)
    return {"steps": budget.step, "elapsed_s": round(budget.elapsed_s, 1), "states": len(states),
            "train_states": len(train), "val_states": len(val), "label_scale": scale, "curve": log.curve,
            "val_initial": initial, "val": evaluate(net, val or train, scale, cfg),
            "out": str(out_path) if out_path else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from engine.gistnet import GistNet
    from engine.model_loader import ModelLoadError, load_model
    from engine.runtime import GISTNET_FILE
    from studio.train.common import CheckpointError
    from studio.train.knob_sets import apply_sets
    from studio.train.lens_labels import LabelConfig, generate_labels
    from studio.train.token_docs import load_token_docs

    ap = argparse.ArgumentParser(prog="python -m studio.train.lensnet_train", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="'tiny', 'default' or a local Hugging Face model folder")
    ap.add_argument("--corpus", required=True, help="corpus folder (studio/train/corpus.py)")
    ap.add_argument("--run-dir", required=True, help="run folder: labels, checkpoint, state (resumed if present)")
    ap.add_argument("--out", required=True, help="where to write the finished lensnet.safetensors")
    ap.add_argument("--gistnet", default="", help="GistNet weights for the trees (default: beside the model)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="LensTrainConfig knob")
    ap.add_argument("--set-labels", action="append", default=[], metavar="FIELD=VALUE", help="LabelConfig knob")
    ap.add_argument("--set-engine", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="engine knob (tree.*, wc.*, lensnet.*, ...) of the sessions and weights")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        cfg = apply_sets(LensTrainConfig(), args.set)
        lcfg = apply_sets(LabelConfig(), args.set_labels)
        # Label sessions run at budgets below the default; relax the config check to the smallest budget.
        ecfg = apply_overrides(RunConfig(), [f"wc.w_max={lcfg.w_max_max}", *args.set_engine])
        model = load_model(args.model, device=args.device)
        from engine.default_model import model_identity
        from engine.runtime import check_base, nets_dir

        gpath = Path(args.gistnet) if args.gistnet else None
        if gpath is None and args.model != "tiny":
            gpath = nets_dir(args.model) / GISTNET_FILE
        identity = model_identity(args.model, nets_dir(args.model) if args.model != "default" else None)
        d, bs, lod = model.hidden_size, ecfg.tree.block_size, ecfg.tree.max_lod
        if gpath is not None:
            check_base(gpath, "GistNet", identity)
            gistnet = GistNet.load(gpath, d, ecfg.gistnet, lod, bs).to(model.device)
        else:
            gistnet = GistNet(d, ecfg.gistnet, lod, bs)
        gen = seeded_generator(lcfg.seed + 11)
        # Long documents only (an episode reads up to max_tokens), and only about as many as the episodes use.
        cap = 8 * lcfg.max_tokens * min(lcfg.episodes, 150)  # documents are reused round-robin beyond that
        docs = load_token_docs(args.corpus, "train", model.tokenize, max_chars=cap, min_chars=4 * lcfg.max_tokens,
                               gen=gen)  # fmt: skip
        print(f"lensnet: {len(docs)} long training documents", file=sys.stderr)
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        states = generate_labels(model, gistnet, docs, lcfg, ecfg, run_dir / "labels.safetensors", log=say)
        out = train_lensnet(cfg, states, d, run_dir, args.out, ecfg, device=str(model.device), base_model=identity)
    except (ValueError, OSError, ModelLoadError, CheckpointError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
