"""Batched continuation NLL of the base model after several working contexts at once.

Label generation and evaluation ask the same question many times: "how well does the base model
predict these next H tokens after this WC?", for many WCs that differ by one edit. WCs of equal cost
materialise to sequences of equal length, so they are stacked into one forward (no padding needed).
The answer is per-token NLL in nats, plus whether each token was the model's argmax (greedy
recovery, for the recall scenario). This module does not choose WCs or edits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.materialize import Materialized, materialize


@dataclass(frozen=True, eq=False)
class ContinuationScore:
    nll: np.ndarray  # float32[k, H] per-token NLL of the targets after each WC
    hit: np.ndarray  # bool[k, H] target token was the argmax of the model's prediction
    # with attention=True: per WC, float32[n_i + 1] attention mass the H predicting queries gave each
    # entry (the last element: the WC's raw tail, 0 if it has none), layers and heads averaged; else None
    entry_mass: list[np.ndarray] | None = None


@torch.no_grad()
def continuation_scores(model, mats: list[Materialized], targets: np.ndarray, max_batch: int = 8,
                        attention: bool = False) -> ContinuationScore:  # fmt: skip
    """Score `targets` (int[H], H >= 1) after each materialised WC; WCs of equal length share forwards.

    `model` is a `BaseModel`. Target j sits at position `next_position + j` of its WC (so `global`
    and `compact` numbering both follow materialize). Row i of the result belongs to `mats[i]`.
    With `attention`, also where the predicting queries looked (`ContinuationScore.entry_mass`).
    """
    tgt = torch.as_tensor(np.asarray(targets, np.int64), device=model.device)  # [H]
    H = int(tgt.shape[0])
    k = len(mats)
    nll = np.zeros((k, H), np.float32)
    hit = np.zeros((k, H), bool)
    mass: list[np.ndarray | None] = [None] * k
    if k == 0 or H == 0:
        return ContinuationScore(nll, hit, [] if attention else None)
    tail = model.embed(tgt[:-1])  # [H-1, d]: the model reads targets 0..H-2 to predict 1..H-1
    by_len: dict[int, list[int]] = {}
    for i, m in enumerate(mats):
        by_len.setdefault(int(m.inputs_embeds.shape[1]), []).append(i)
    for _, rows in sorted(by_len.items()):
        for lo in range(0, len(rows), max_batch):
            part = rows[lo : lo + max_batch]
            g = len(part)
            x = torch.cat([mats[i].inputs_embeds for i in part], dim=0)  # [g, T, d]
            x = torch.cat([x, tail[None].expand(g, -1, -1)], dim=1)  # [g, T+H-1, d]
            tpos = torch.stack([torch.arange(mats[i].next_position, mats[i].next_position + H - 1) for i in part])
            pos = torch.cat([torch.cat([mats[i].position_ids for i in part], dim=0), tpos.to(model.device)], dim=1)
            if attention:
                logits, where = model.forward_tail(x, pos, tail=H, logits_to_keep=H)  # [g, H, V], [L, g, T+H-1]
                per_pos = where.mean(dim=0).float().cpu().numpy()  # [g, T+H-1] layers averaged
                for j, i in enumerate(part):
                    e = mats[i].entry_of_pos  # [T]: entry of each WC position (n = the tail)
                    n1 = mats[i].n_entries + 1
                    mass[i] = np.bincount(e, weights=per_pos[j, : e.shape[0]], minlength=n1)[:n1].astype(np.float32)
            else:
                logits, _ = model.forward(x, pos, logits_to_keep=H)  # [g, H, V]
            V = logits.shape[-1]
            ce = F.cross_entropy(logits.reshape(g * H, V), tgt.repeat(g), reduction="none").reshape(g, H)
            nll[part] = ce.cpu().numpy()
            hit[part] = (logits.argmax(dim=-1) == tgt[None]).cpu().numpy()
    return ContinuationScore(nll, hit, mass if attention else None)


def wc_scores(model, tree, wcs: list, targets: np.ndarray, position_mode: str, max_batch: int = 8,
              attention: bool = False) -> ContinuationScore:  # fmt: skip
    """`continuation_scores` of several WCs over the same tree (materialised here)."""
    mats = [materialize(wc, tree, model, position_mode) for wc in wcs]
    return continuation_scores(model, mats, targets, max_batch, attention)
