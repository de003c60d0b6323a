"""LensNet: the learned scorer. Gives every working-context entry a signed utility in [-1, 1].

Query tokens (the newest few gists and the token embeddings of the newest block(s) + tail) and
entry tokens (each entry's vector plus its structural features) talk through dual cross-attention:
in each layer the queries read the entries, then the entries read the updated queries. A tanh head
turns each entry token into a score; positive = wants more detail. The last layer's attention
weights are returned so that the session can record where the tail looked.

This module does not decide edits (the allocator does), gather vectors from the tree (the session
does) or train; it is features + network + safetensors save/load. No batch-dependent state.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from contract.config import LensNetConfig
from engine.gistnet import MLP, load_state, save_state
from engine.view import ScoreResult, ScoreView

MAX_LOD_FEATURE = 4  # one-hot width - 1; TreeConfig allows max_lod <= 4
LOG_SCALE = 10.0  # log1p(x) / 10 keeps token counts up to ~20k below 1 and 1M tokens near 1.4
FEATURE_NAMES = tuple(f"lod_is_{i}" for i in range(MAX_LOD_FEATURE + 1)) + (
    "lod_frac",  # lod / max_lod
    "log_span",  # log1p(span tokens) / LOG_SCALE
    "log_distance",  # log1p(tokens_seen - end) / LOG_SCALE: how far behind the cursor
    "rel_end",  # (end - evicted_upto) / (tokens_seen - evicted_upto): where in the WC, in [0, 1]
    "log_age",  # log1p(age_steps) / LOG_SCALE * 4: steps since the entry took its LOD (steps are few)
    "prev_score",  # the node's final score at its last step in the WC, in [-1, 1]
    "cost_frac",  # cost / block_size: 1 for raw blocks, 1/block_size for gists
)
N_FEATURES = len(FEATURE_NAMES)


def entry_features(view: ScoreView) -> torch.Tensor:
    """Per-entry structural features, float32 [n, N_FEATURES] on CPU (columns named by FEATURE_NAMES).

    A pure function of the view's numpy arrays: the same view gives the same features.
    """
    wc = view.wc
    lod = wc.lod.astype(np.int64)  # [n]
    start, end = wc.start.astype(np.float64), wc.end.astype(np.float64)  # [n]
    onehot = np.eye(MAX_LOD_FEATURE + 1, dtype=np.float64)[lod]  # [n, 5]
    covered = max(wc.tokens_seen - wc.evicted_upto, 1)
    cols = [
        lod / max(wc.max_lod, 1),
        np.log1p(end - start) / LOG_SCALE,
        np.log1p(np.maximum(wc.tokens_seen - end, 0)) / LOG_SCALE,
        (end - wc.evicted_upto) / covered,
        np.log1p(np.asarray(view.age_steps, np.float64)) / LOG_SCALE * 4,
        np.asarray(view.prev_score, np.float64),
        wc.cost.astype(np.float64) / wc.block_size,
    ]
    feats = np.concatenate([onehot, np.stack(cols, axis=1).reshape(wc.n, len(cols))], axis=1)  # [n, F]
    return torch.from_numpy(feats.astype(np.float32))


class DualCrossLayer(nn.Module):
    """Queries read entries, then entries read the updated queries; then an MLP on each. Pre-norm."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.ln_q, self.ln_e = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q2e = nn.MultiheadAttention(hidden, heads, dropout=0.0, batch_first=True)
        self.ln_q2, self.ln_e2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.e2q = nn.MultiheadAttention(hidden, heads, dropout=0.0, batch_first=True)
        self.ln_qm, self.ln_em = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.mlp_q, self.mlp_e = MLP(hidden), MLP(hidden)

    def forward(
        self, q: torch.Tensor, e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [1, m, h], e [1, n, h] -> (q, e, attn_q2e [1, m, n], attn_e2q [1, n, m]); attention head-averaged."""
        ek = self.ln_e(e)  # [1, n, h]
        dq, a_q2e = self.q2e(self.ln_q(q), ek, ek, need_weights=True, average_attn_weights=True)
        q = q + dq  # [1, m, h]
        qk = self.ln_q2(q)  # [1, m, h]
        de, a_e2q = self.e2q(self.ln_e2(e), qk, qk, need_weights=True, average_attn_weights=True)
        e = e + de  # [1, n, h]
        q = q + self.mlp_q(self.ln_qm(q))  # [1, m, h]
        e = e + self.mlp_e(self.ln_em(e))  # [1, n, h]
        return q, e, a_q2e, a_e2q


class LensOutput(NamedTuple):
    scores: torch.Tensor  # [n] in [-1, 1]: the utility the allocator reads
    aux: torch.Tensor  # [n] in [-1, 1]: predicted base-model attention utility (an auxiliary training target)
    attn_q2e: torch.Tensor  # [m, n] last layer, head-averaged: where each query looked
    attn_e2q: torch.Tensor  # [n, m]


def query_gists_used(view: ScoreView, query_gists: int) -> int:
    """How many of the view's recent gists lead LensNet's queries (the rest are `view.query_vecs`)."""
    g = view.recent_gists
    return min(g.shape[0], query_gists) if g is not None and query_gists > 0 else 0


def lens_queries(view: ScoreView, query_gists: int) -> torch.Tensor:
    """[m, d] LensNet's queries for a view: its newest `query_gists` recent gists (if any), then its
    `query_vecs` (the newest blocks' and the tail's token embeddings), in the query vectors' dtype."""
    parts, k = [view.query_vecs], query_gists_used(view, query_gists)
    if k:
        parts.insert(0, view.recent_gists[-k:].to(view.query_vecs.device, view.query_vecs.dtype))
    return torch.cat(parts, dim=0)


class LensNet(nn.Module):
    """Scores WC entries from their vectors, their features and the tail's query vectors.

    `seed` alone decides the initial weights (drawn inside `torch.random.fork_rng`; the caller's
    global RNG is untouched). No dropout, so train and eval modes compute the same function.
    """

    def __init__(self, d_embed: int, cfg: LensNetConfig, seed: int = 0):
        super().__init__()
        self.d_embed, self.cfg = d_embed, cfg
        h = cfg.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Entry vectors and queries both live in the base model's embedding space, whose scale
            # differs between models: normalise, then one shared projection.
            self.in_norm = nn.LayerNorm(d_embed)
            self.proj = nn.Linear(d_embed, h)
            self.feat_proj = nn.Linear(N_FEATURES, h)
            self.layers = nn.ModuleList([DualCrossLayer(h, cfg.heads) for _ in range(cfg.layers)])
            self.ln_f = nn.LayerNorm(h)
            self.head = nn.Linear(h, 1)
            # Predicts how much attention the base model gives the entry (training signal only: it
            # shapes the entry tokens; the allocator reads `head`).
            self.aux_head = nn.Linear(h, 1)

    def forward(self, entry_vecs: torch.Tensor, feats: torch.Tensor, queries: torch.Tensor) -> LensOutput:
        """entry_vecs [n, d], feats [n, F], queries [m, d] (m >= 1) -> `LensOutput` (attention from the
        last layer, head-averaged; each attention row sums to 1). Inputs are cast to the module's
        device and dtype.
        """
        w = self.proj.weight
        ev = entry_vecs.to(w.device, w.dtype)  # [n, d]
        f = feats.to(w.device, w.dtype)  # [n, F]
        qv = queries.to(w.device, w.dtype)  # [m, d]
        e = (self.proj(self.in_norm(ev)) + self.feat_proj(f))[None]  # [1, n, h]
        q = self.proj(self.in_norm(qv))[None]  # [1, m, h]
        a_q2e = a_e2q = None
        for layer in self.layers:
            q, e, a_q2e, a_e2q = layer(q, e)
        e = self.ln_f(e)  # [1, n, h]
        scores = torch.tanh(self.head(e)[0, :, 0])  # [n]
        aux = torch.tanh(self.aux_head(e)[0, :, 0])  # [n]
        return LensOutput(scores, aux, a_q2e[0], a_e2q[0])

    @torch.no_grad()
    def explain(self, view: ScoreView) -> LensOutput:
        """The whole forward on a view (n >= 1): scores, and where each query looked (`attn_q2e`
        [m, n]). Queries are the newest `cfg.query_gists` rows of `view.recent_gists` (may be None or
        empty) followed by `view.query_vecs`. Needs `view.entry_vecs` and `view.query_vecs`."""
        if view.entry_vecs is None or view.query_vecs is None:
            raise ValueError("LensNet needs view.entry_vecs and view.query_vecs; the session must fill them")
        if view.entry_vecs.shape[0] != view.n:
            raise ValueError(f"view.entry_vecs has {view.entry_vecs.shape[0]} rows for {view.n} entries")
        queries = lens_queries(view, self.cfg.query_gists)  # [m, d]
        if queries.shape[0] == 0:
            raise ValueError("LensNet needs at least one query vector (recent gists or tail/newest-block tokens)")
        return self.forward(view.entry_vecs, entry_features(view), queries)

    @torch.no_grad()
    def score_view(self, view: ScoreView) -> ScoreResult:
        """Score a view: float32 scores [n] and per-entry attention mass [n] (attn_q2e summed over
        queries; see `explain`)."""
        if view.entry_vecs is None or view.query_vecs is None:
            raise ValueError("LensNet needs view.entry_vecs and view.query_vecs; the session must fill them")
        if view.n == 0:
            return ScoreResult(scores=np.zeros(0, np.float32), attention=np.zeros(0, np.float32))
        out = self.explain(view)
        scores, attention = out.scores, out.attn_q2e.sum(dim=0)  # [n], [n]: how much the queries looked at each entry
        return ScoreResult(
            scores=scores.float().cpu().numpy().astype(np.float32),
            attention=attention.float().cpu().numpy().astype(np.float32),
        )

    # -- persistence --
    def save(self, path: str | Path, extra: dict[str, str] | None = None) -> None:
        """Write the weights to a safetensors file, with the shape-defining settings and `extra`
        (e.g. `base_model`) as metadata."""
        meta = (extra or {}) | {
            "kind": "lensnet",
            "d_embed": str(self.d_embed),
            "hidden": str(self.cfg.hidden),
            "layers": str(self.cfg.layers),
            "heads": str(self.cfg.heads),
            "n_features": str(N_FEATURES),
        }
        save_state(self, path, meta)

    @classmethod
    def load(cls, path: str | Path, d_embed: int, cfg: LensNetConfig) -> LensNet:
        """Build a LensNet for these settings and fill it from `path` (CPU, eval mode).

        Raises ValueError (one line) if the file is missing or unreadable, or its tensors do not
        match the settings.
        """
        net = cls(d_embed, cfg)
        load_state(net, path, "LensNet")
        return net.eval()
