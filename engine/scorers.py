"""Scorers: the policies that give every working-context entry a signed utility at a refocus step,
and `build_scorer`, the registry that makes the one a config names.

Each scorer implements `score(view) -> ScoreResult` (engine/view.py): `scores` is float32[n] in
[-1, 1]; positive = the entry wants more detail than it has now, negative = less, 0 = it is where the
policy wants it. Every scorer is a deterministic function of (its constructor args, the view), so a
recorded session can be re-scored exactly (exact replay, `studio/replay.py`, depends on this).

- `recency`: the plain truncated-context transformer (newest W blocks raw, older as coarse as legal).
- `compressive`: detail decays with age (Compressive Transformer): newest raw, then LOD1, then coarsest.
- `retrieval`: cosine top-k against the tail query (kNN-LM, RETRO, Memorizing Transformers).
- `hopfield`: one modern-Hopfield update over the entries (associative recall).
- `attention`: heavy hitters (H2O, SnapKV): expand what the newest block attended to, collapse the rest.
- `sink`: StreamingLLM: the oldest blocks (the attention sink) and a recent window raw, the rest coarse.
- `random`: seeded control.
- `lensnet`: the learned scorer (engine/lensnet.py), wrapped.

The scorers themselves live in `engine/structure_scorers.py` (the vector-free ones: recency,
compressive, sink, attention, random, and their block geometry) and `engine/vector_scorers.py`
(retrieval, hopfield, lensnet); this module holds the contract above and the registry.

This module does not decide edits (that is engine/allocator.py: thresholds, legality, budget) and
does not build vectors or run the base model (the session does, and fills the view). Vector-free
scorers (`needs_vectors = False`) ignore the view's vectors; `attention` reads the view's
`attention_mass` instead, which the session fills for a scorer with `needs_attention = True`.
"""

from __future__ import annotations

import torch

from contract.config import RunConfig
from engine.structure_scorers import AttentionScorer, CompressiveScorer, RandomScorer, RecencyScorer, SinkScorer
from engine.vector_scorers import HopfieldScorer, LensNetScorer, RetrievalScorer

# Vector-free scorers (`attention` reads the view's attention mass, the others only its structure).
_STRUCTURE = {
    "recency": RecencyScorer,
    "compressive": CompressiveScorer,
    "sink": SinkScorer,
    "attention": AttentionScorer,
    "random": RandomScorer,
}
_VECTOR = {"retrieval": RetrievalScorer, "hopfield": HopfieldScorer}


def build_scorer(cfg: RunConfig, d_embed: int | None = None, lensnet=None):
    """The scorer named by `cfg.scorer.name`.

    For "lensnet" without a `lensnet` module, builds a random-initialised `LensNet(d_embed,
    cfg.lensnet)` seeded with `cfg.scorer.seed` (an untrained control), leaving torch's global RNG
    state untouched. `d_embed` is required then and ignored otherwise.
    """
    name = cfg.scorer.name
    if name in _STRUCTURE:
        return _STRUCTURE[name](cfg)
    if name in _VECTOR:
        return _VECTOR[name](cfg)
    if name == "lensnet":
        if lensnet is None:
            if d_embed is None:
                raise ValueError("build_scorer: scorer 'lensnet' without a trained LensNet needs d_embed")
            from engine.lensnet import LensNet  # lazy: structure-only users never import the model code

            # LensNet draws its initial weights from `seed` inside its own RNG fork; this outer fork
            # keeps the caller's CPU RNG untouched even if construction ever draws outside that one.
            with torch.random.fork_rng(devices=[]):
                lensnet = LensNet(d_embed, cfg.lensnet, seed=cfg.scorer.seed)
            lensnet.eval()
        return LensNetScorer(cfg, lensnet)
    raise ValueError(f"unknown scorer {name!r}")  # unreachable: ScorerConfig validates the name
