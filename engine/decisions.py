"""Focus decisions: the allocator's verdicts as a columnar table, and `apply` to carry them out.

Every decision names the *coarse node* of its edit: the gist that is expanded, or the gist that a
collapse folds its children into. So an expand and the collapse that undoes it share one
`node_id`, which is what makes oscillation countable per node. Evictions name the evicted entry.

Codes are small ints here (vectorised work); their names, the public strings written to Parquet,
are `ACTIONS[code]` and `OUTCOMES[code]`. This module is numpy only and holds no policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine import nodes
from engine.working_context import WorkingContext

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


def edit_nodes(wc_block_size: int, action: int, coarse_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(removed, added) node ids of one edit on coarse node `coarse_id`.

    expand (l, i): removes (l, i), adds its children; collapse into (l, i): the reverse;
    evict: removes the node itself.
    """
    lod = int(nodes.node_lod(coarse_id))
    idx = int(nodes.node_index(coarse_id))
    if action == EVICT:
        return np.array([coarse_id], np.int64), np.zeros(0, np.int64)
    if lod == 1:
        children = nodes.node_id(0, np.array([idx]))
    else:
        children = nodes.node_id(lod - 1, np.arange(idx * wc_block_size, (idx + 1) * wc_block_size))
    parent = np.array([coarse_id], np.int64)
    return (parent, children) if action == EXPAND else (children, parent)


def apply(wc: WorkingContext, decisions: Decisions) -> WorkingContext:
    """Carry out the applied decisions, in `seq` order, and return the new WC.

    Raises ValueError if a decision removes a node that is not an entry at that point (a
    decision table that does not belong to this WC).
    """
    order = np.flatnonzero(decisions.applied)
    if order.size == 0:
        return wc
    order = order[np.argsort(decisions.seq[order], kind="stable")]
    # Edits are replayed on two small sets (what left the input WC, what was added this round):
    # an edit may fold nodes an earlier edit of the same round created.
    removed: dict[int, int] = {}  # node id -> the decision that removed it
    added: dict[int, None] = {}  # insertion-ordered set
    evicted_upto = wc.evicted_upto
    for k in order.tolist():
        rem, add = edit_nodes(wc.block_size, int(decisions.action[k]), int(decisions.node_id[k]))
        for r in rem.tolist():
            if r in added:
                del added[r]
            elif r in removed:
                raise ValueError(f"decision on node {int(decisions.node_id[k])} removes node {r} twice")
            else:
                removed[r] = k
        for a in add.tolist():
            added[a] = None
        if decisions.action[k] == EVICT:
            lod, idx = nodes.node_lod(decisions.node_id[k]), nodes.node_index(decisions.node_id[k])
            end = nodes.node_start(lod, idx, wc.block_size) + nodes.span_tokens(lod, wc.block_size)
            evicted_upto = max(evicted_upto, int(end))
    gone = np.fromiter(removed, np.int64, len(removed))
    keep = ~np.isin(wc.node_id, gone)  # `gone` is a handful of ids: cheap
    if int((~keep).sum()) != gone.size:
        missing = gone[~np.isin(gone, wc.node_id)]
        k = removed[int(missing[0])]
        raise ValueError(
            f"decision on node {int(decisions.node_id[k])} removes node {int(missing[0])}, "
            "which is not in the working context"
        )
    new_ids = np.fromiter(added, np.int64, len(added))
    lod = np.concatenate([wc.lod[keep], nodes.node_lod(new_ids)])
    index = np.concatenate([wc.index[keep], nodes.node_index(new_ids)])
    return wc.with_entries(lod, index, evicted_upto=evicted_upto)
