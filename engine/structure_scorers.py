"""The vector-free scorers: utilities from the working context's structure, or its attention mass.

- `recency`: the plain truncated-context transformer (newest W blocks raw, older as coarse as legal).
- `compressive`: detail decays with age (Compressive Transformer): newest raw, then LOD1, then coarsest.
- `sink`: StreamingLLM: the oldest blocks (the attention sink) and a recent window raw, the rest coarse.
- `attention`: heavy hitters (H2O, SnapKV): expand what the newest block attended to, collapse the rest
  (reads the view's `attention_mass`; `attention_utility` is also LensNet's auxiliary target).
- `random`: seeded control.
With the block geometry the banded ones share (`prefix_cost`, `coarsest_level`, `desired_lod`,
`layout_cost`, `window_blocks`). Each scorer follows the contract told in `engine/scorers.py`.

This module imports no torch and reads no vectors: the vector scorers (retrieval, hopfield, lensnet)
are in `engine/vector_scorers.py`, and `engine/scorers.py` builds the one a config names.
"""

from __future__ import annotations

import math

import numpy as np

from contract import nodes
from contract.config import RunConfig, protected_blocks
from engine.view import ScoreResult, ScoreView
from engine.working_context import WorkingContext


def _empty() -> ScoreResult:
    return ScoreResult(scores=np.zeros(0, np.float32))


# ----------------------------------------------------------------------------------------------
# Geometry shared by the structure-only scorers. All positions here are in *block* units.


def prefix_cost(lo: int, hi: int, block_size: int, max_lod: int) -> int:
    """WC cost of tiling complete blocks `[lo, hi)` with the coarsest legal gists.

    A full aligned group of `block_size**(l-1)` blocks (l <= max_lod) can be one LOD-l gist; what is
    left over at either end of a level's run of full groups goes one level down; every gist costs 1.
    Coarsest-first is the cheapest tiling because every gist costs the same.
    """
    cost, segs = 0, [(lo, hi)] if lo < hi else []
    for lod in range(max_lod, 0, -1):
        size = block_size ** (lod - 1)  # blocks under one LOD-`lod` gist
        nxt = []
        for a, b in segs:
            g0, g1 = -(-a // size) * size, (b // size) * size  # aligned full groups inside [a, b)
            if g0 < g1:
                cost += (g1 - g0) // size
                nxt += [(a, g0), (g1, b)]
            else:
                nxt.append((a, b))
        segs = [(a, b) for a, b in nxt if a < b]  # at most two leftovers per level
    return cost


def coarsest_level(block: np.ndarray, lo: int, hi: int, block_size: int, max_lod: int) -> np.ndarray:
    """int8[k]: level of the gist that covers each block in the coarsest tiling of `[lo, hi)`.

    That is the largest l <= max_lod whose aligned group around the block lies inside `[lo, hi)`;
    groups are nested, so scanning levels upward keeps the largest one that fits. Blocks outside
    `[lo, hi)` get 1 (their own LOD1 gist); callers only ask about blocks inside.
    """
    block = np.asarray(block, dtype=np.int64)  # [k]
    level = np.ones(block.shape, np.int8)  # [k]: every complete block has a LOD1 gist
    for lod in range(2, max_lod + 1):
        size = block_size ** (lod - 1)
        g0 = (block // size) * size  # [k] first block of the aligned group
        level = np.where((g0 >= lo) & (g0 + size <= hi), np.int8(lod), level)
    return level


def desired_lod(wc: WorkingContext, raw_from: int, lod1_from: int) -> np.ndarray:
    """int8[n]: the level a banded policy wants for each entry.

    Blocks `>= raw_from` want LOD0, blocks in `[lod1_from, raw_from)` want LOD1, older blocks (from
    the eviction point) want the level of the coarsest legal tiling of that older region. An entry
    spanning several blocks takes the wish of its *last* (newest) block: bands get finer with
    recency, so that is the finest wish among its blocks, and an entry reaching into a finer band
    asks to be expanded.
    """
    bs = wc.block_size
    last = (wc.end - 1) // bs  # int64[n]: newest block under each entry
    old = coarsest_level(last, wc.evicted_upto // bs, lod1_from, bs, wc.max_lod)  # int8[n]
    return np.where(last >= raw_from, 0, np.where(last >= lod1_from, 1, old)).astype(np.int8)


def _signed_gap(wc: WorkingContext, desired: np.ndarray) -> np.ndarray:
    """float32[n]: +1 where the entry is coarser than desired (expand), -1 finer (collapse), 0 equal.

    A gist that wants to be coarser scores 0 until all `block_size` siblings are entries at its
    level: only then is the group collapse legal, and asking earlier only adds `illegal` decision
    rows (typically the step where the group's last block is still LOD0; it asks one step later).
    """
    lod = wc.lod.astype(np.int32)  # [n]
    scores = np.sign(lod - desired.astype(np.int32)).astype(np.float32)  # [n]
    gist_up = (lod >= 1) & (lod < desired)  # [n]: gists that want their parent
    if gist_up.any():
        parent = nodes.node_id(lod + 1, wc.index // wc.block_size)  # [n]: meaningful where lod >= 1
        _, inv, counts = np.unique(np.where(lod >= 1, parent, -1), return_inverse=True, return_counts=True)
        scores[gist_up & (counts[inv] < wc.block_size)] = 0.0
    return scores


def layout_cost(wc: WorkingContext, sink_blocks: int, window: int) -> int:
    """WC cost of: the oldest `sink_blocks` covered blocks raw, the newest `window` blocks raw, the tail,
    and the coarsest legal tiling of the blocks in between (`sink_blocks + window` <= blocks covered)."""
    bs, n_blocks = wc.block_size, wc.complete_blocks()
    lo = wc.evicted_upto // bs + sink_blocks  # first block of the gisted middle
    return (sink_blocks + window) * bs + wc.tail_len + prefix_cost(lo, n_blocks - window, bs, wc.max_lod)


def window_blocks(wc: WorkingContext, w_max: int, protect_blocks: int = 0, sink_blocks: int = 0) -> int:
    """Number W of newest complete blocks a recency window keeps at LOD0 under budget `w_max`.

    W is the largest W in [0, blocks still covered - sink_blocks] with
    `layout_cost(wc, sink_blocks, W) <= w_max`, i.e. `W*block_size + tail_len + prefix_cost(evicted
    block, first window block)` when `sink_blocks` is 0 (plain recency; the sink scorer holds that
    many oldest blocks raw too), raised to at least `protect_blocks` (capped at the blocks left). It
    depends only on the WC's geometry (tokens seen, eviction point), never on its current LODs, so
    it does not chase its own edits.
    """
    avail = wc.complete_blocks() - wc.evicted_upto // wc.block_size - sink_blocks

    def fits(w: int) -> bool:
        return layout_cost(wc, sink_blocks, w) <= w_max

    # Cost is strictly increasing in W: one more raw block adds block_size positions and takes at
    # most one gist (cost 1) out of the prefix, so `fits` is monotone and we can bisect.
    w = 0
    if fits(0):
        lo, hi = 0, avail  # invariant: fits(lo)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        w = lo
    return min(avail, max(w, protect_blocks))


# ----------------------------------------------------------------------------------------------
# Structure-only scorers.


class RecencyScorer:
    """Sliding window: the newest `window_blocks` blocks at LOD0, everything older as coarse as legal.

    Scores are exactly +1 / 0 / -1 (see `desired_lod` with both bands starting at the window):
    +1 for a gist that overlaps the window, -1 for an older entry finer than the coarsest legal
    tiling wants it, 0 otherwise. LOD0 entries inside the window score 0 (not +1) so the allocator
    logs no illegal LOD0 expansions; for the same reason leftover LOD1 gists whose sibling group is
    not wholly older than the window, or not yet all LOD1, score 0 (not -1): their collapse would be
    illegal now.
    """

    name = "recency"
    needs_vectors = False

    def __init__(self, cfg: RunConfig):
        self.protect = protected_blocks(cfg.tree, cfg.wc)

    def score(self, view: ScoreView) -> ScoreResult:
        wc = view.wc
        if wc.n == 0:
            return _empty()
        start = wc.complete_blocks() - window_blocks(wc, view.w_max, self.protect)  # first window block
        return ScoreResult(scores=_signed_gap(wc, desired_lod(wc, start, start)))


class CompressiveScorer:
    """Detail decays with age (Compressive Transformer), in three bands by block position.

    - raw band: the newest `R = max(floor(raw_share * w_max / block_size), protected blocks)` complete
      blocks want LOD0 (the tail is always raw and not counted; it is under one block);
    - LOD1 band: the next `K = floor(lod1_share * w_max)` older blocks want LOD1 (K gists cost K);
    - older blocks want the coarsest legal tiling (LOD2 where a whole sibling group is old enough).
    An entry's band is that of its last (newest) block, so a gist reaching into a finer band expands.
    Score = +1 if the desired LOD is finer than the current one, -1 if coarser, 0 if equal (and 0
    for a gist whose sibling group is not yet whole at its level, see `_signed_gap`).
    """

    name = "compressive"
    needs_vectors = False

    def __init__(self, cfg: RunConfig):
        self.protect = protected_blocks(cfg.tree, cfg.wc)
        self.raw_share = cfg.scorer.compressive_raw_share
        self.lod1_share = cfg.scorer.compressive_lod1_share

    def bands(self, wc: WorkingContext, w_max: int) -> tuple[int, int]:
        """(lod1_from, raw_from): first block of the LOD1 band and of the raw band."""
        # The tiny epsilon keeps e.g. 0.29 * 100 = 28.999... from flooring to 28.
        raw = max(math.floor(self.raw_share * w_max / wc.block_size + 1e-9), self.protect)
        lod1 = math.floor(self.lod1_share * w_max + 1e-9)
        first = wc.evicted_upto // wc.block_size
        raw_from = max(first, wc.complete_blocks() - raw)
        return max(first, raw_from - lod1), raw_from

    def score(self, view: ScoreView) -> ScoreResult:
        wc = view.wc
        if wc.n == 0:
            return _empty()
        lod1_from, raw_from = self.bands(wc, view.w_max)
        return ScoreResult(scores=_signed_gap(wc, desired_lod(wc, raw_from, lod1_from)))


class SinkScorer:
    """StreamingLLM: the attention sink (the oldest blocks) and a recent window at LOD0, the rest coarse.

    With e = `evicted_upto // block_size` (the oldest block still covered) and S = `sink_blocks`:
    - sink: blocks `[e, e+S)` want LOD0;
    - window: the newest `W = window_blocks(wc, w_max, protected blocks, S)` complete blocks want LOD0,
      W the largest with `W*block_size + tail + S*block_size + prefix_cost(e+S, n-W) <= w_max`;
    - middle: blocks `[e+S, n-W)` want the coarsest legal tiling of that range. A LOD2 group holding
      a sink block is not inside it, so its other blocks want LOD1, never their (illegal) LOD2 gist.
    If the sink and the protected blocks do not fit `w_max` together, S shrinks to the largest that
    does (at 0 this is `recency`): the sink never pushes the desired layout over the budget.
    An entry wants the finest level among its blocks, which is that of its first or its last block
    (the middle's levels only fall towards its ends), so a gist holding a sink or window block asks to
    expand. Scores are +1 / 0 / -1 as `_signed_gap` gives them (0 while a collapse is still illegal).
    """

    name = "sink"
    needs_vectors = False

    def __init__(self, cfg: RunConfig):
        self.protect = protected_blocks(cfg.tree, cfg.wc)
        self.sink_blocks = cfg.scorer.sink_blocks

    def layout(self, wc: WorkingContext, w_max: int) -> tuple[int, int]:
        """(sink_end, window_start): the first block after the sink, the first block of the window."""
        first, n_blocks = wc.evicted_upto // wc.block_size, wc.complete_blocks()
        sink = min(self.sink_blocks, n_blocks - first)
        while sink > 0 and layout_cost(wc, sink, min(self.protect, n_blocks - first - sink)) > w_max:
            sink -= 1  # degrade towards recency rather than plan a layout over the budget
        return first + sink, n_blocks - window_blocks(wc, w_max, self.protect, sink)

    def score(self, view: ScoreView) -> ScoreResult:
        wc = view.wc
        if wc.n == 0:
            return _empty()
        sink_end, window_start = self.layout(wc, view.w_max)
        bs = wc.block_size

        def wish(block: np.ndarray) -> np.ndarray:  # int8[n]: the level each block wants
            middle = coarsest_level(block, sink_end, window_start, bs, wc.max_lod)
            return np.where((block < sink_end) | (block >= window_start), np.int8(0), middle)

        desired = np.minimum(wish(wc.start // bs), wish((wc.end - 1) // bs)).astype(np.int8)  # [n]
        return ScoreResult(scores=_signed_gap(wc, desired))


class AttentionScorer:
    """Heavy hitters (H2O, SnapKV): expand the entries the newest block attended to most, collapse the least.

    `view.attention_mass[i]` is the share of the newest block's attention that entry i drew in the
    latest base-model forward (layers and heads averaged; NaN if the entry was not in that forward).
    Attention is compared per position, so a raw block (32 positions) must draw 32 times a gist's
    mass to look as attended:
        density_i = mass_i / cost_i
        r_i = density_i / (sum of finite mass / sum of the cost of those entries)   (r = 1: average)
        score_i = tanh(log(max(r_i, 1e-6)))   in [-1, 1]; r = 3 scores 0.8, r = 1/3 scores -0.8.
    Entries with NaN mass (new since that forward) score 0, as does every entry when the view has no
    mass at all (the first step) or the finite mass sums to 0. LOD0 entries can only lose detail, so
    they score `min(score, 0)`; entries at `max_lod` can only gain, so `max(score, 0)`.
    Deterministic given the view; no knobs. The session runs the base model every step for it.
    The unclamped score is `attention_utility` (also LensNet's auxiliary training target).
    """

    name = "attention"
    needs_vectors = False
    needs_attention = True
    R_FLOOR = 1e-6  # r below this (no attention at all) scores as this: tanh(log(1e-6)) ~ -1

    def __init__(self, cfg: RunConfig):
        del cfg  # no knobs: the allocator's thresholds decide how much attention is "heavy"

    def score(self, view: ScoreView) -> ScoreResult:
        wc = view.wc
        if wc.n == 0:
            return _empty()
        if view.attention_mass is None:  # no forward yet: no opinion
            return ScoreResult(scores=np.zeros(wc.n, np.float32))
        mass = np.asarray(view.attention_mass, dtype=np.float64)  # [n]
        if mass.shape != (wc.n,):
            raise ValueError(f"scorer 'attention': attention_mass must be [n={wc.n}], got {mass.shape}")
        s = attention_utility(mass, wc.cost, self.R_FLOOR)  # [n]: 0 for NaN mass, all 0 if no mass at all
        s = np.where(wc.lod == 0, np.minimum(s, 0.0), s)  # raw blocks cannot expand
        s = np.where(wc.lod == wc.max_lod, np.maximum(s, 0.0), s)  # the top level cannot collapse
        return ScoreResult(scores=s.astype(np.float32))


class RandomScorer:
    """Seeded control: uniform in [-1, 1), a function of (seed, step, n) only, hence replay-safe."""

    name = "random"
    needs_vectors = False

    def __init__(self, cfg: RunConfig):
        self.seed = cfg.scorer.seed

    def score(self, view: ScoreView) -> ScoreResult:
        rng = np.random.default_rng([self.seed, view.step])  # fresh per step: no hidden state to replay
        return ScoreResult(scores=rng.uniform(-1.0, 1.0, view.n).astype(np.float32))


def attention_utility(mass: np.ndarray, cost: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """float32[n] in [-1, 1]: how much attention each entry drew per position, against the average.

    r = (mass / cost) / (sum of mass / sum of cost) over the entries whose mass is known (r = 1:
    average attention per position); utility = tanh(log r), 0 for entries with unknown (NaN) mass.
    The heavy-hitter policy's score and LensNet's auxiliary target.
    """
    mass = np.asarray(mass, np.float64)
    cost = np.asarray(cost, np.float64)
    out = np.zeros(mass.shape, np.float32)
    known = np.isfinite(mass)
    total, spent = mass[known].sum(), cost[known].sum()
    if total <= 0 or spent <= 0:
        return out
    r = (mass[known] / cost[known]) / (total / spent)
    out[known] = np.tanh(np.log(np.maximum(r, floor)))
    return out
