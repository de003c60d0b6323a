"""The vector scorers: utilities from the entries' vectors against the tail query, computed with torch.

- `retrieval`: cosine top-k against the tail query (kNN-LM, RETRO, Memorizing Transformers).
- `hopfield`: one modern-Hopfield update over the entries (associative recall).
- `lensnet`: the learned scorer (engine/lensnet.py), wrapped.
Each reads the view's `entry_vecs` and `query_vecs`, which the session fills for a scorer with
`needs_vectors = True`, and follows the contract told in `engine/scorers.py`.

This module does not build the vectors (the session does) and does not hold the structure-only or
attention scorers (`engine/structure_scorers.py`); `engine/scorers.py` builds the one a config names.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from contract.config import RunConfig
from engine.structure_scorers import _empty
from engine.view import ScoreResult, ScoreView

# ----------------------------------------------------------------------------------------------
# Vector scorers: inputs are the view's torch tensors, computed in float32 on their device.


def _vectors(view: ScoreView, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries float32[n, d], mean tail query float32[d]); ValueError when the view lacks them."""
    if view.entry_vecs is None or view.query_vecs is None:
        raise ValueError(
            f"scorer {name!r} needs view.entry_vecs and view.query_vecs, got None; "
            "build vectors in the session or use a vector-free scorer (recency, compressive, sink, attention, random)"
        )
    x = view.entry_vecs.detach().float()  # [n, d]
    q = view.query_vecs.detach().float()  # [m, d]
    if x.ndim != 2 or x.shape[0] != view.n:
        raise ValueError(f"scorer {name!r}: entry_vecs must be [n={view.n}, d], got {tuple(x.shape)}")
    if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != x.shape[1]:
        raise ValueError(f"scorer {name!r}: query_vecs must be [m>=1, d={x.shape[1]}], got {tuple(q.shape)}")
    return x, q.mean(dim=0)  # [n, d], [d]


class RetrievalScorer:
    """Cosine top-k against the tail query (kNN-LM, RETRO, Memorizing Transformers).

    With `c = max(cos(entry, mean query), 0)`: the top-k entries by cosine score `0.5 + 0.5*c` in
    [0.5, 1]; the others score `-(1 - 0.5*c)` in [-1, -0.5]. Both clear the default thresholds
    (0.2), and within each group a more similar entry scores higher. Ranking uses the raw cosine;
    ties go to the newest entry (larger start) first. Scores ignore the entry's current LOD.
    """

    name = "retrieval"
    needs_vectors = True

    def __init__(self, cfg: RunConfig):
        self.top_k = cfg.scorer.retrieval_top_k

    def score(self, view: ScoreView) -> ScoreResult:
        if view.n == 0:
            return _empty()
        x, q = _vectors(view, self.name)
        cos = F.cosine_similarity(x, q[None, :], dim=1, eps=1e-8).cpu().numpy().astype(np.float32)  # [n]
        order = np.lexsort((-view.wc.start, -cos))  # [n]: cosine descending, then newest first
        top = np.zeros(view.n, bool)
        top[order[: self.top_k]] = True
        c = np.maximum(cos, 0.0)  # [n] in [0, 1]
        scores = np.where(top, 0.5 + 0.5 * c, -(1.0 - 0.5 * c)).astype(np.float32)
        return ScoreResult(scores=scores)


class HopfieldScorer:
    """One modern-Hopfield update (Ramsauer et al.) over the entries: associative recall.

    X = row-normalised entries [n, d], q = normalised mean tail query [d]:
    p = softmax(beta X q); q' = normalise(X^T p); p' = softmax(beta X q'); score = tanh(log(n p')).
    Uniform attention (p' = 1/n) scores 0, attended entries tend to +1, ignored ones to -1.
    """

    name = "hopfield"
    needs_vectors = True

    def __init__(self, cfg: RunConfig):
        self.beta = cfg.scorer.hopfield_beta

    def score(self, view: ScoreView) -> ScoreResult:
        if view.n == 0:
            return _empty()
        x, q = _vectors(view, self.name)
        x = F.normalize(x, dim=1)  # [n, d]
        q = F.normalize(q, dim=0)  # [d]
        p = torch.softmax(self.beta * (x @ q), dim=0)  # [n]
        q = F.normalize(x.T @ p, dim=0)  # [d]: the retrieved pattern, the new state
        # log(n p') via log_softmax: no log(0) when p' underflows at large beta.
        logits = math.log(view.n) + torch.log_softmax(self.beta * (x @ q), dim=0)  # [n]
        return ScoreResult(scores=torch.tanh(logits).cpu().numpy().astype(np.float32))


class LensNetScorer:
    """The learned scorer: `lensnet.score_view(view)` (scores and attention), run without autograd.

    The module's train/eval mode is the caller's: a scorer shared with a trainer must not flip it.
    `build_scorer` puts the random-initialised LensNet it makes in eval mode.
    """

    name = "lensnet"
    needs_vectors = True

    def __init__(self, cfg: RunConfig, lensnet):
        self.cfg = cfg
        self.lensnet = lensnet

    def score(self, view: ScoreView) -> ScoreResult:
        if view.n == 0:  # nothing to attend over; LensNet need not handle empty sets
            return ScoreResult(scores=np.zeros(0, np.float32), attention=np.zeros(0, np.float32))
        _vectors(view, self.name)  # the same clear error as the other vector scorers
        with torch.no_grad():
            res = self.lensnet.score_view(view)
        attn = None if res.attention is None else np.asarray(res.attention, dtype=np.float32)
        return ScoreResult(scores=np.asarray(res.scores, dtype=np.float32), attention=attn)
