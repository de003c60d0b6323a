"""What a scorer sees at one refocus step, and what it returns.

`ScoreView` bundles the working context's structure (numpy) with the vectors that learned or
similarity-based scorers need (torch tensors made by the session from the tree). Structure-only
scorers (recency, compressive, random) ignore the vectors, so tests can leave them `None`.

This module holds data only: no scoring logic, no model calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.working_context import WorkingContext

if TYPE_CHECKING:  # torch stays an optional import for structure-only users of the view
    import torch


@dataclass(frozen=True)
class ScoreView:
    wc: WorkingContext  # the entries, sorted by start
    step: int  # refocus step index (0-based)
    w_max: int  # budget, in token positions
    prev_score: np.ndarray  # float32[n]: the node's final score at its last step in the WC, 0 if none
    age_steps: np.ndarray  # int32[n]: steps since the entry took its current LOD (0 = this step)
    entry_vecs: torch.Tensor | None = None  # [n, d] gist, or mean token embedding of a LOD0 block
    query_vecs: torch.Tensor | None = None  # [m, d] token embeddings of the newest blocks + tail
    recent_gists: torch.Tensor | None = None  # [g, d] newest LOD1 gists (LensNet's extra queries)
    # float32[n]: share of the newest block's attention each entry drew in the latest base-model
    # forward (layers and heads averaged); NaN for an entry that was not in that forward
    attention_mass: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.wc.n


@dataclass(frozen=True)
class ScoreResult:
    scores: np.ndarray  # float32[n] in [-1, 1]; positive = wants more detail
    attention: np.ndarray | None = None  # float32[n]: LensNet's attention mass per entry, if any


class Scorer(Protocol):
    name: str  # the scorer.name knob value
    needs_vectors: bool  # False: the session skips building entry/query vectors for it
    # (optional) needs_attention: bool, True: the session runs the base model every step and fills
    # `ScoreView.attention_mass`

    def score(self, view: ScoreView) -> ScoreResult: ...
