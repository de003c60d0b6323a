"""Carrying focus decisions out: `apply` edits a working context as a decision table says.

`edit_nodes` names the nodes one edit removes and adds. The table itself, and its codes, are
`contract.decisions`; this module holds no policy (that is the allocator's).
"""

from __future__ import annotations

import numpy as np

from contract import nodes
from contract.decisions import EVICT, EXPAND, Decisions
from engine.working_context import WorkingContext


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
