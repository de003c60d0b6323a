"""The working context (WC): which tree nodes the base model sees, at which level of detail.

A `WorkingContext` is an immutable set of entries sorted by start, each a node `(lod, index)`,
plus the raw tail (tokens of the last, incomplete block) and the eviction point. It covers
`[evicted_upto, tokens_seen)`. Edits make a new WC (`with_entries`); the allocator decides them.

`check_invariants` is the one checker of DESIGN section 2's seven invariants. This module is numpy
only: turning a WC into model inputs lives in `engine/materialize.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract import nodes


class InvariantError(AssertionError):
    """A working-context invariant was broken; the message names the invariant and the entry."""


@dataclass(frozen=True, eq=False)
class WorkingContext:
    block_size: int
    max_lod: int
    tokens_seen: int  # tokens read so far
    evicted_upto: int  # tokens before this were evicted (forced, logged); 0 if none
    lod: np.ndarray  # int8[n], entries sorted by start
    index: np.ndarray  # int64[n]

    @staticmethod
    def empty(block_size: int, max_lod: int) -> WorkingContext:
        return WorkingContext(block_size, max_lod, 0, 0, np.zeros(0, np.int8), np.zeros(0, np.int64))

    # -- derived geometry (cheap vectorised recomputation beats caching in a frozen object) --
    @property
    def n(self) -> int:
        return int(self.lod.shape[0])

    @property
    def start(self) -> np.ndarray:
        return nodes.node_start(self.lod, self.index, self.block_size)

    @property
    def end(self) -> np.ndarray:
        return self.start + nodes.span_tokens(self.lod, self.block_size)

    @property
    def cost(self) -> np.ndarray:
        return nodes.node_cost(self.lod, self.block_size)

    @property
    def node_id(self) -> np.ndarray:
        return nodes.node_id(self.lod, self.index)

    @property
    def tail_start(self) -> int:
        """Start of the raw tail = end of the last complete block."""
        return (self.tokens_seen // self.block_size) * self.block_size

    @property
    def tail_len(self) -> int:
        return self.tokens_seen - self.tail_start

    @property
    def total_cost(self) -> int:
        return int(self.cost.sum(dtype=np.int64)) + self.tail_len

    def complete_blocks(self) -> int:
        return self.tokens_seen // self.block_size

    # -- growth --
    def advance(self, tokens_seen: int) -> WorkingContext:
        """Read up to `tokens_seen`: every newly completed block joins as a LOD0 entry."""
        if tokens_seen < self.tokens_seen:
            raise ValueError("tokens_seen cannot go backwards")
        old_blocks, new_blocks = self.complete_blocks(), tokens_seen // self.block_size
        if new_blocks == old_blocks:
            return WorkingContext(self.block_size, self.max_lod, tokens_seen, self.evicted_upto, self.lod, self.index)
        add = np.arange(old_blocks, new_blocks, dtype=np.int64)
        return WorkingContext(
            self.block_size,
            self.max_lod,
            tokens_seen,
            self.evicted_upto,
            np.concatenate([self.lod, np.zeros(add.shape[0], np.int8)]),
            np.concatenate([self.index, add]),
        )

    def with_entries(self, lod: np.ndarray, index: np.ndarray, evicted_upto: int | None = None) -> WorkingContext:
        """A new WC with these entries, re-sorted by start (stable, so equal inputs give equal WCs)."""
        start = nodes.node_start(lod, index, self.block_size)
        order = np.argsort(start, kind="stable")
        return WorkingContext(
            self.block_size,
            self.max_lod,
            self.tokens_seen,
            self.evicted_upto if evicted_upto is None else evicted_upto,
            lod[order].astype(np.int8, copy=False),
            index[order].astype(np.int64, copy=False),
        )

    def same_as(self, other: WorkingContext) -> bool:
        return (
            self.tokens_seen == other.tokens_seen
            and self.evicted_upto == other.evicted_upto
            and np.array_equal(self.lod, other.lod)
            and np.array_equal(self.index, other.index)
        )


def protected_from(wc: WorkingContext, protect_blocks: int) -> int:
    """First token of the protected region: the newest `protect_blocks` complete blocks."""
    return max(0, (wc.complete_blocks() - protect_blocks) * wc.block_size)


def check_invariants(
    wc: WorkingContext,
    w_max: int,
    protect_blocks: int,
    *,
    after_refocus: bool = True,
    refocus_every: int = 0,
) -> None:
    """Raise `InvariantError` naming the first broken invariant of DESIGN section 2.

    1 coverage, 2 real aligned nodes, 3 a cut of the tree, 4 budget (after a refocus step; between
    steps at most `refocus_every` over), 5 protected recent blocks at LOD0, 6 legality of levels,
    7 eviction only from the front (coverage starts at `evicted_upto`).
    """
    lod, index = wc.lod, wc.index
    start, end = wc.start, wc.end
    bs = wc.block_size
    # 2: real nodes at legal levels, complete by now, aligned to their own span.
    if wc.n:
        if lod.min() < 0 or lod.max() > wc.max_lod:
            bad = int(np.flatnonzero((lod < 0) | (lod > wc.max_lod))[0])
            raise InvariantError(f"inv2: entry {bad} has lod {int(lod[bad])} outside [0, {wc.max_lod}]")
        if index.min() < 0:
            raise InvariantError("inv2: negative node index")
        incomplete = end > wc.tokens_seen
        if incomplete.any():
            bad = int(np.flatnonzero(incomplete)[0])
            raise InvariantError(
                f"inv2: entry {bad} (lod {int(lod[bad])}, index {int(index[bad])}) ends at {int(end[bad])} "
                f"after tokens_seen={wc.tokens_seen}: its node is not complete"
            )
    # 1 + 3 + 7: sorted, tiling [evicted_upto, tail_start) with no gap or overlap. A tiling by
    # aligned tree nodes with no overlap is exactly a cut (no entry has an ancestor entry).
    if wc.evicted_upto % bs or wc.evicted_upto > wc.tail_start:
        raise InvariantError(f"inv7: eviction point {wc.evicted_upto} is not a block boundary before the tail")
    expected_start = np.concatenate([[wc.evicted_upto], end[:-1]]) if wc.n else np.zeros(0, np.int64)
    if wc.n and not np.array_equal(start, expected_start):
        bad = int(np.flatnonzero(start != expected_start)[0])
        kind = "gap" if start[bad] > expected_start[bad] else "overlap"
        raise InvariantError(
            f"inv1/3: {kind} at entry {bad} (lod {int(lod[bad])}, index {int(index[bad])}): "
            f"starts at {int(start[bad])}, expected {int(expected_start[bad])}"
        )
    covered_to = int(end[-1]) if wc.n else wc.evicted_upto
    if covered_to != wc.tail_start:
        raise InvariantError(f"inv1: entries end at {covered_to} but the tail starts at {wc.tail_start}")
    # 4: budget.
    slack = 0 if after_refocus else refocus_every
    if wc.total_cost > w_max + slack:
        raise InvariantError(f"inv4: WC cost {wc.total_cost} exceeds w_max {w_max} (+{slack} allowed)")
    # 5: protected recent blocks stay raw.
    p0 = protected_from(wc, protect_blocks)
    hot = (end > p0) & (lod != 0)
    if hot.any():
        bad = int(np.flatnonzero(hot)[0])
        raise InvariantError(
            f"inv5: entry {bad} (lod {int(lod[bad])}) overlaps the protected recent tokens [{p0}, ...) but is not LOD0"
        )
    # 6: legality of levels is covered by 2 (lod range); collapse-legality is the allocator's
    # pre-condition and shows up here as a misaligned or overlapping entry.
