"""GistNet: compresses one block of child vectors into a single gist in the base model's embedding space.

A small pre-norm, bidirectional transformer reads the `block_size` children (LOD1: a block's token
embeddings; LOD2+: the LOD1+ gists below), tagged with a learned position per child slot and a
learned embedding of the target level, pools them (mean, or a learned query attending over the
children) and projects back to `d_embed`. The projection is zero-initialised and added to the
children's mean, so an untrained GistNet is exactly a mean-pool and training learns a correction.

This module does not build the tree, choose which blocks to gist, or train; it is the network plus
safetensors save/load. It has no batch-dependent state (no batch norm, no dropout, no caches):
each row of the output depends only on that row's children and `level`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from contract.config import GistNetConfig


class MLP(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.proj = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block with full (non-causal) self-attention over the children."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=0.0, batch_first=True)
        self.ln_2 = nn.LayerNorm(hidden)
        self.mlp = MLP(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)  # [B, C, h]
        x = x + self.attn(h, h, h, need_weights=False)[0]  # [B, C, h]
        return x + self.mlp(self.ln_2(x))  # [B, C, h]


class GistNet(nn.Module):
    """children [B, block_size, d_embed] + target level -> gists [B, d_embed].

    `seed` decides the initial weights alone: they are drawn inside `torch.random.fork_rng`, so
    the caller's global RNG is neither read nor advanced. Use in eval mode; there is no dropout,
    so train/eval modes compute the same function.

    Reproducibility: the same children and level give bit-identical gists on the same device and
    batch size. Row results can differ in the last bits between batch sizes (BLAS picks kernels by
    shape), so a caller that needs bit-for-bit reproducible trees must always use the same batching
    (e.g. one block at a time).
    """

    def __init__(self, d_embed: int, cfg: GistNetConfig, max_lod: int, block_size: int, seed: int = 0):
        super().__init__()
        self.d_embed, self.cfg, self.max_lod, self.block_size = d_embed, cfg, max_lod, block_size
        h = cfg.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Base-model embeddings vary wildly in scale between models; normalise before projecting.
            self.in_norm = nn.LayerNorm(d_embed)
            self.in_proj = nn.Linear(d_embed, h)
            self.pos_emb = nn.Parameter(0.02 * torch.randn(block_size, h))  # one per child slot
            self.level_emb = nn.Embedding(max_lod, h)  # row l-1 tags target level l
            nn.init.normal_(self.level_emb.weight, std=0.02)
            self.blocks = nn.ModuleList([Block(h, cfg.heads) for _ in range(cfg.layers)])
            self.ln_f = nn.LayerNorm(h)
            if cfg.pooling == "query":
                self.pool_query = nn.Parameter(0.02 * torch.randn(1, 1, h))
                self.pool_attn = nn.MultiheadAttention(h, cfg.heads, dropout=0.0, batch_first=True)
            self.out_proj = nn.Linear(h, d_embed)
        # Zero init: the output starts as exactly the children's mean (see forward).
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, children: torch.Tensor, level: int) -> torch.Tensor:
        """Gist each row's children for target LOD `level` (1..max_lod).

        Computes in the module's dtype and returns in the children's dtype, so a bf16 base model
        can feed a float32 GistNet and get bf16 gists back.
        """
        B, C, D = children.shape
        if C != self.block_size or D != self.d_embed:
            raise ValueError(
                f"GistNet expects children [B, {self.block_size}, {self.d_embed}], got {list(children.shape)}"
            )
        if not 1 <= level <= self.max_lod:
            raise ValueError(f"GistNet level must be in [1, {self.max_lod}], got {level}")
        dt = self.out_proj.weight.dtype
        c = children.to(dt)  # [B, C, d]
        lvl = self.level_emb.weight[level - 1]  # [h]
        x = self.in_proj(self.in_norm(c)) + self.pos_emb + lvl  # [B, C, h]
        for block in self.blocks:
            x = block(x)  # [B, C, h]
        x = self.ln_f(x)  # [B, C, h]
        if self.cfg.pooling == "query":
            q = (self.pool_query + lvl).expand(B, 1, -1)  # [B, 1, h]
            pooled = self.pool_attn(q, x, x, need_weights=False)[0][:, 0]  # [B, h]
        else:
            pooled = x.mean(dim=1)  # [B, h]
        out = c.mean(dim=1) + self.out_proj(pooled)  # [B, d]: mean-pool plus a learned correction
        return out.to(children.dtype)

    # -- persistence --
    def save(self, path: str | Path, extra: dict[str, str] | None = None) -> None:
        """Write the weights to a safetensors file, with the shape-defining settings and `extra`
        (e.g. `base_model`, the identity of the base model it was trained against) as metadata."""
        meta = (extra or {}) | {
            "kind": "gistnet",
            "d_embed": str(self.d_embed),
            "hidden": str(self.cfg.hidden),
            "layers": str(self.cfg.layers),
            "heads": str(self.cfg.heads),
            "pooling": self.cfg.pooling,
            "max_lod": str(self.max_lod),
            "block_size": str(self.block_size),
        }
        save_state(self, path, meta)

    @classmethod
    def load(cls, path: str | Path, d_embed: int, cfg: GistNetConfig, max_lod: int, block_size: int) -> GistNet:
        """Build a GistNet for these settings and fill it from `path` (CPU, eval mode).

        Raises ValueError (one line) if the file is missing or unreadable, or its tensors do not
        match the settings.
        """
        net = cls(d_embed, cfg, max_lod, block_size)
        load_state(net, path, "GistNet")
        return net.eval()


def save_state(net: nn.Module, path: str | Path, meta: dict[str, str]) -> None:
    """Write `net`'s weights to a safetensors file, with `meta` (string settings) in its header."""
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def read_meta(path: str | Path, what: str) -> dict[str, str]:
    """The string metadata of a safetensors weights file; one-line ValueError if unreadable."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ValueError(f"{what} weights file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error type for bad headers/truncation
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what} weights file {path} is corrupt or not safetensors: {first}") from e


def load_state(net: nn.Module, path: str | Path, what: str) -> None:
    """Load a safetensors file into `net`, strictly: same keys, same shapes. Errors are one-line ValueErrors."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} weights file {p} does not exist")
    try:
        state = load_file(str(p))
    except Exception as e:  # safetensors raises its own error type for bad headers/truncation
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what} weights file {p} is corrupt or not safetensors: {first}") from e
    own = net.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(
            f"{what} weights file {p} does not match the settings: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{what} weights file {p} does not match the settings: {k} has shape "
                f"{list(state[k].shape)}, expected {list(v.shape)}"
            )
    net.load_state_dict(state, strict=True)
