"""Focus decisions as data: the allocator's verdicts as a columnar table, and their codes.

Every decision names the *coarse node* of its edit: the gist that is expanded, or the gist that a
collapse folds its children into. So an expand and the collapse that undoes it share one
`node_id`, which is what makes oscillation countable per node. Evictions name the evicted entry.

Codes are small ints here (vectorised work); their names, the public strings written to Parquet,
are `ACTIONS[code]` and `OUTCOMES[code]`. This module is numpy only: carrying a decision out on a
working context is `engine.edits.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIONS = ("expand", "collapse", "evict")
EXPAND, COLLAPSE, EVICT = 0, 1, 2
OUTCOMES = ("applied", "cooldown", "hysteresis", "illegal", "protected", "budget", "edit_cap")
APPLIED, COOLDOWN, HYSTERESIS, ILLEGAL, PROTECTED, BUDGET, EDIT_CAP = range(7)
EVICTED_LOD = -1  # lod_to of an eviction: the span leaves the WC


@dataclass(frozen=True, eq=False)
class Decisions:
    """One row per candidate edit (or forced edit) of one allocator round."""

    node_id: np.ndarray  # int64[k] coarse node of the edit
    lod_from: np.ndarray  # int8[k]
    lod_to: np.ndarray  # int8[k]  (EVICTED_LOD for evictions)
    action: np.ndarray  # int8[k]  index into ACTIONS
    score: np.ndarray  # float32[k] the candidate's score after the pipeline (group mean for collapses)
    outcome: np.ndarray  # int8[k]  index into OUTCOMES
    forced: np.ndarray  # bool[k]  made to restore the budget, not asked for by the scorer
    seq: np.ndarray  # int32[k] order of application within the round; -1 if not applied

    @staticmethod
    def concat(parts: list[Decisions]) -> Decisions:
        if not parts:
            return empty_decisions()
        return Decisions(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def __len__(self) -> int:
        return int(self.node_id.shape[0])

    @property
    def applied(self) -> np.ndarray:
        return self.outcome == APPLIED

    def rows(self) -> list[dict]:
        """Row dicts with public string names (for sinks and tests; not a hot path)."""
        return [
            {
                "node_id": int(self.node_id[k]),
                "lod_from": int(self.lod_from[k]),
                "lod_to": int(self.lod_to[k]),
                "action": ACTIONS[self.action[k]],
                "score": float(self.score[k]),
                "outcome": OUTCOMES[self.outcome[k]],
                "forced": bool(self.forced[k]),
                "seq": int(self.seq[k]),
            }
            for k in range(len(self))
        ]


_FIELDS = ("node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq")
_DTYPES = (np.int64, np.int8, np.int8, np.int8, np.float32, np.int8, np.bool_, np.int32)


def empty_decisions() -> Decisions:
    return Decisions(*(np.zeros(0, dt) for dt in _DTYPES))


def make_decisions(cols: dict[str, list]) -> Decisions:
    return Decisions(*(np.asarray(cols[f], dtype=dt) for f, dt in zip(_FIELDS, _DTYPES, strict=True)))
