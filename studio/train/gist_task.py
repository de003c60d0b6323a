"""GistNet's task: a span replaced by its gist, judged by the frozen base model on the next H tokens.

A *window* is `[prefix | span | next]` cut from a tokenised document: `prefix` raw tokens, a span of
`n_gisted` aligned nodes at one level (LOD1 node = one block of `block_size` tokens, LOD2 node =
`block_size` blocks), then the `horizon` tokens whose next-token distributions we compare. The span
is shown to the base model in one of several *variants*:

- `full`: its raw tokens (the teacher for LOD1 gists: DESIGN section 3);
- `lod1`: its LOD1 gists, one per block (the teacher for LOD2 gists: a LOD2 gist replaces exactly
  its 32 LOD1 siblings in the working context, and 1,024 raw tokens plus a horizon would not fit a
  short-context base model);
- `gist`: one GistNet gist per node at the window's level;
- `mean_pool`: the mean of each node's children (an untrained GistNet's output);
- `drop`: nothing at all.

Positions follow `engine/materialize.py`: `global` keeps true stream positions (a gist at the centre
of its span), `compact` numbers the sequence 0..T-1. Used by the GistNet trainer (KL objective) and
by `engine eval` (gist quality, ΔNLL@H). This module does not own an optimizer or read files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.model import lm_forward

VARIANTS = ("full", "lod1", "gist", "mean_pool", "drop")


@dataclass(frozen=True, eq=False)
class Window:
    tokens: torch.Tensor  # [B, prefix + n_gisted * span + horizon] int64
    start: torch.Tensor  # [B] int64: stream position of tokens[:, 0]
    prefix: int  # raw tokens before the span (>= 1, so `drop` can predict the first target)
    level: int  # LOD of the gisted nodes (1 or 2)
    n_gisted: int  # nodes replaced, side by side
    span: int  # tokens under one node at `level`
    horizon: int  # H: targets after the span

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, -self.horizon :]  # [B, H]

    def to(self, device: torch.device | str) -> Window:
        """The same window with its tensors on `device` (windows are drawn on the CPU)."""
        return dataclasses.replace(self, tokens=self.tokens.to(device), start=self.start.to(device))


def node_span(level: int, block_size: int) -> int:
    return block_size**level


def valid_starts(doc_len: int, prefix: int, region: int, horizon: int, span: int) -> int:
    """How many aligned span starts `s = k*span` leave room: `s >= prefix` and `s + region + horizon <= doc_len`."""
    lo = -(-prefix // span)  # first k with k*span >= prefix
    hi = (doc_len - region - horizon) // span  # last k that fits
    return max(0, hi - lo + 1)


def sample_windows(
    docs: list[np.ndarray],
    batch: int,
    *,
    level: int,
    n_gisted: int,
    prefix: int,
    horizon: int,
    block_size: int,
    gen: torch.Generator,
) -> Window:
    """Draw `batch` windows, uniformly over all valid aligned span positions of all documents.

    Raises ValueError if no document is long enough for one window.
    """
    if prefix < 1 or horizon < 1 or n_gisted < 1:
        raise ValueError("a gist window needs prefix >= 1, horizon >= 1 and n_gisted >= 1")
    span = node_span(level, block_size)
    region = n_gisted * span
    counts = torch.tensor([valid_starts(len(d), prefix, region, horizon, span) for d in docs], dtype=torch.float64)
    if float(counts.sum()) == 0:
        raise ValueError(
            f"no document has {prefix + region + horizon} tokens for a level-{level} gist window "
            f"(prefix {prefix}, {n_gisted} x {span}, horizon {horizon})"
        )
    which = torch.multinomial(counts, batch, replacement=True, generator=gen)  # [B]
    rows, starts = [], []
    for i in which.tolist():
        k0 = -(-prefix // span)
        k = k0 + int(torch.randint(int(counts[i]), (1,), generator=gen))
        s = k * span - prefix  # window start
        rows.append(torch.from_numpy(docs[i][s : s + prefix + region + horizon].astype(np.int64)))
        starts.append(s)
    return Window(torch.stack(rows), torch.tensor(starts), prefix, level, n_gisted, span, horizon)


def _children(base, gistnet, win: Window) -> torch.Tensor:
    """[B, n_gisted, block_size, d]: what GistNet reads for each node (token embeddings or LOD1 gists)."""
    B = win.tokens.shape[0]
    emb = base.get_input_embeddings()
    region = win.tokens[:, win.prefix : win.prefix + win.n_gisted * win.span]  # [B, R]
    x = emb(region)  # [B, R, d]
    d = x.shape[-1]
    bs = gistnet.block_size
    if win.level == 1:
        return x.reshape(B, win.n_gisted, bs, d)
    # Level 2: children are the LOD1 gists of the node's blocks, made by the same (current) GistNet,
    # without gradient: the tree stores them once, the LOD2 gist is what we train here.
    with torch.no_grad():
        lod1 = gistnet(x.reshape(-1, bs, d), 1)  # [B*n*bs, d]
    return lod1.reshape(B, win.n_gisted, bs, d)


def _span_vectors(base, gistnet, win: Window, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [B, k, d], their offsets [k] in tokens from the span start) for one variant."""
    bs = gistnet.block_size if gistnet is not None else None
    B, n = win.tokens.shape[0], win.n_gisted
    centre = (win.span - 1) // 2  # materialize puts a gist at (start + end - 1) // 2
    dev = win.tokens.device
    node_off = torch.arange(n, device=dev) * win.span + centre  # [n]
    if variant == "full":
        region = win.tokens[:, win.prefix : win.prefix + n * win.span]  # [B, R]
        return base.get_input_embeddings()(region), torch.arange(n * win.span, device=dev)
    if variant == "drop":
        d = base.get_input_embeddings().weight.shape[1]
        return torch.zeros(B, 0, d, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    kids = _children(base, gistnet, win)  # [B, n, bs, d]
    if variant == "gist":
        d = kids.shape[-1]
        g = gistnet(kids.reshape(B * n, bs, d), win.level)  # [B*n, d]
        return g.reshape(B, n, d), node_off
    if variant == "mean_pool":
        return kids.mean(dim=2), node_off  # [B, n, d]
    if variant == "lod1":
        if win.level != 2:
            raise ValueError("variant 'lod1' is the teacher of level-2 windows only")
        sub = bs  # LOD1 gists under one LOD2 node, each at the centre of its block
        offs = torch.arange(n, device=dev)[:, None] * win.span + torch.arange(sub, device=dev)[None] * bs
        offs = (offs + (bs - 1) // 2).reshape(-1)
        return kids.reshape(B, n * sub, -1), offs
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def build_inputs(base, gistnet, win: Window, variant: str, position_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds [B, T, d], position_ids [B, T]) of `prefix + span variant + next[:-1]`.

    `base` is the Hugging Face model (`BaseModel.model`). The last H positions predict the H targets.
    Gradients flow into GistNet for the `gist` variant; the base model's weights stay frozen.
    """
    emb = base.get_input_embeddings()
    dt = emb.weight.dtype
    pre = emb(win.tokens[:, : win.prefix])  # [B, p, d]
    nxt = emb(win.targets[:, :-1])  # [B, H-1, d]
    mid, mid_off = _span_vectors(base, gistnet, win, variant)  # [B, k, d], [k]
    x = torch.cat([pre, mid.to(dt), nxt], dim=1)  # [B, T, d]
    B, T = x.shape[0], x.shape[1]
    if position_mode == "compact":
        pos = torch.arange(T, device=x.device).expand(B, T)
    elif position_mode == "global":
        p, R = win.prefix, win.n_gisted * win.span
        ar = lambda k: torch.arange(k, device=x.device)  # noqa: E731
        rel = torch.cat([ar(p), p + mid_off.to(x.device), p + R + ar(win.horizon - 1)])  # [T]
        pos = win.start[:, None] + rel[None]  # [B, T]
    else:
        raise ValueError(f"position_mode must be 'global' or 'compact', got {position_mode!r}")
    return x, pos.to(torch.long)


def horizon_logits(base, gistnet, win: Window, variant: str, position_mode: str) -> torch.Tensor:
    """[B, H, V] float32 logits predicting the window's H targets under one variant."""
    dev = base.get_input_embeddings().weight.device
    x, pos = build_inputs(base, gistnet, win.to(dev), variant, position_mode)
    out = lm_forward(base, x, pos.to(dev), logits_to_keep=win.horizon)
    return out.logits.float()


def kl_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); both [B, H, V] logits. A scalar (nats)."""
    t = F.log_softmax(teacher, dim=-1)
    s = F.log_softmax(student, dim=-1)
    return (t.exp() * (t - s)).sum(dim=-1).mean()


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, H] per-token NLL (nats) of `targets` [B, H] under `logits` [B, H, V]."""
    B, H, V = logits.shape
    return F.cross_entropy(logits.reshape(B * H, V), targets.reshape(-1).to(logits.device), reduction="none").reshape(
        B, H
    )
