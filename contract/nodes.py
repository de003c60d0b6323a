"""Node identity and geometry of the gist tree, vectorised over numpy arrays.

A node is `(lod, index)`. LOD0 and LOD1 node `i` cover the same block `i`; a LOD`l>=1` node covers
`block_size**l` tokens. Its stable id packs both: `node_id = (lod << 40) | index`, so ids never
change as the tree grows, sort by level then position, and survive a round trip through Parquet.

This module knows nothing of vectors, models or budgets: only spans, costs and parentage.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MAX_LEVELS = 8  # levels a node id may name (config allows max_lod <= 4)
LOD_SHIFT = 40  # 2**40 blocks of 32 tokens is far beyond any stream we will read
INDEX_MASK = (1 << LOD_SHIFT) - 1


def node_id(lod, index):
    """Stable id of node(s) `(lod, index)`; works on ints or numpy arrays."""
    return (np.asarray(lod, dtype=np.int64) << LOD_SHIFT) | np.asarray(index, dtype=np.int64)


def node_lod(nid):
    return (np.asarray(nid, dtype=np.int64) >> LOD_SHIFT).astype(np.int8)


def node_index(nid):
    return np.asarray(nid, dtype=np.int64) & INDEX_MASK


@lru_cache(maxsize=16)
def _spans(block_size: int) -> np.ndarray:
    """int64[MAX_LEVELS]: tokens under one node of each level (a table: one gather beats a power per entry)."""
    return np.array([block_size ** max(lod, 1) for lod in range(MAX_LEVELS)], dtype=np.int64)


def span_tokens(lod, block_size: int):
    """Tokens covered by one node at `lod` (LOD0 and LOD1 both cover one block)."""
    return _spans(block_size)[np.maximum(np.asarray(lod, dtype=np.intp), 1)]  # as max(lod, 1): LOD0 = LOD1


def node_start(lod, index, block_size: int):
    return np.asarray(index, dtype=np.int64) * span_tokens(lod, block_size)


def node_span(nid, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end): the half-open token span of each node id."""
    lod = node_lod(nid)
    start = node_start(lod, node_index(nid), block_size)
    return start, start + span_tokens(lod, block_size)


@lru_cache(maxsize=16)
def _costs(block_size: int) -> np.ndarray:
    """int32[MAX_LEVELS]: the WC cost of an entry of each level (a gather beats a where per call)."""
    return np.array([block_size if lod == 0 else 1 for lod in range(MAX_LEVELS)], dtype=np.int32)


def node_cost(lod, block_size: int):
    """WC cost of an entry: a LOD0 entry costs its tokens, a gist costs one position."""
    return _costs(block_size)[np.asarray(lod, dtype=np.intp)]


def parent_index(lod, index, block_size: int):
    """Index of the parent at `lod + 1`. LOD0 block i's parent is LOD1 node i (same span)."""
    lod = np.asarray(lod)
    index = np.asarray(index, dtype=np.int64)
    return np.where(lod == 0, index, index // block_size)


def complete_nodes(tokens_seen: int, lod: int, block_size: int) -> int:
    """How many nodes at `lod` are complete after `tokens_seen` tokens (a node needs all its tokens)."""
    return int(tokens_seen // int(span_tokens(lod, block_size)))
