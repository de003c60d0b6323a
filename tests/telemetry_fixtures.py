"""Hand-made engine event streams for the telemetry tests (no session, no model, no allocator).

`events(n_steps)` builds a small plausible run: block b of the stream is LOD0 while it is among the
newest `protect` blocks or inside a detail window that moves one block per step, else a LOD1 gist.
Decisions are the diff between one step's WC and the next (expand / collapse of the block's LOD1
node), plus one rejected candidate per step and one forced eviction, so every column has values.
"""

from __future__ import annotations

import numpy as np

from contract import (
    AttentionRecorded,
    DecisionsRecorded,
    EntriesRecorded,
    GistsRecorded,
    LensAttention,
    NodesAdded,
    RunConfig,
    RunFinished,
    RunStarted,
    StepRecorded,
    TextRecorded,
    make_decisions,
    nodes,
)

BS = 32
MODEL = {"id": "tiny", "hidden_size": 32, "vocab_size": 100, "dtype": "float32", "device": "cpu"}


def started(config: RunConfig | None = None) -> RunStarted:
    return RunStarted(config or RunConfig(), MODEL, "recency", "input.txt", "2025-01-01T00:00:00Z")


def lods(step: int, protect: int = 2, window: int = 2) -> np.ndarray:
    """LOD of every block at the start of `step` (step + 4 blocks read)."""
    n = step + 4
    b = np.arange(n)
    lo = step % 3  # the window walks over blocks 0..3 and back: expansions, collapses and ping-pongs
    detail = (b >= n - protect) | ((b >= lo) & (b < lo + window))
    return np.where(detail, 0, 1).astype(np.int8)


def entries_event(step: int, lod: np.ndarray, iteration: int = 0) -> EntriesRecorded:
    idx = np.arange(lod.size, dtype=np.int64)
    start = idx * BS
    raw = np.linspace(-1, 1, lod.size, dtype=np.float32) * (1 if step % 2 else -1)
    return EntriesRecorded(
        step=step,
        iteration=iteration,
        node_id=nodes.node_id(lod, idx),
        lod=lod,
        start=start,
        end=start + BS,
        cost=nodes.node_cost(lod, BS),
        raw_score=raw,
        score_interp=raw * 0.5,
        score_shift=raw * 0.25,
        score=raw * 0.125,
    )


def decisions_between(a: np.ndarray, b: np.ndarray, step: int):
    """Expand / collapse rows turning WC `a` into `b` (first a.size blocks), one rejected, maybe an evict."""
    rows = {k: [] for k in ("node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq")}

    def add(node, lf, lt, action, score, outcome, forced, seq):
        for k, v in zip(rows, (node, lf, lt, action, score, outcome, forced, seq), strict=True):
            rows[k].append(v)

    seq = 0
    for blk in np.flatnonzero(a != b[: a.size]):
        expand = a[blk] == 1
        add(int(nodes.node_id(1, blk)), 1 if expand else 0, 0 if expand else 1, 0 if expand else 1, 0.5, 0, False, seq)
        seq += 1
    add(int(nodes.node_id(1, 0)), 1, 0, 0, 0.3, 5, False, -1)  # a candidate refused for budget
    if step == 3:
        add(int(nodes.node_id(1, 0)), 1, -1, 2, 0.0, 0, True, seq)  # a forced eviction
    return make_decisions(rows)


def events(n_steps: int = 6, *, with_nll: bool = True, finish: bool = True, config: RunConfig | None = None):
    """A complete event stream of `n_steps` refocus steps, in the order a session emits them."""
    out = [started(config)]
    for t in range(n_steps):
        a, b = lods(t), lods(t + 1)
        n_new = a.size if t == 0 else 1
        new = np.arange(a.size - n_new, a.size, dtype=np.int64)
        lvl = np.concatenate([np.zeros(n_new, np.int8), np.ones(n_new, np.int8)])
        both = np.concatenate([new, new])
        out.append(
            NodesAdded(t, nodes.node_id(lvl, both), lvl, both * BS, both * BS + BS, [f"block {i} é" for i in both])
        )
        out.append(TextRecorded(t, nodes.node_id(np.zeros(n_new, np.int8), new), new * BS, new * BS + BS,
                                [f"the whole text of block {i} é\n" for i in new]))  # fmt: skip
        if n_new:  # one 4-d gist per new LOD1 node, its values derived from the index (checkable)
            vec = (new[:, None] + np.arange(4)[None, :] / 4).astype(np.float32)  # [n_new, 4]
            out.append(GistsRecorded(t, nodes.node_id(np.ones(n_new, np.int8), new), np.ones(n_new, np.int8), vec))
        out.append(entries_event(t, a))
        out.append(DecisionsRecorded(t, 0, decisions_between(a, b, t)))
        ids = nodes.node_id(a, np.arange(a.size))
        out.append(LensAttention(t, 0, ids, np.full(a.size, 1.0 / a.size, np.float32)))
        if t % 2 == 0:
            k = a.size + 1
            layer = np.repeat(np.arange(2, dtype=np.int16), k)
            node = np.tile(np.append(ids, -1), 2)
            out.append(AttentionRecorded(t, layer, node, np.full(2 * k, 1.0 / k, np.float32)))
        nll = (2.0 + 0.1 * t) if with_nll and t % 2 else None
        out.append(
            StepRecorded(
                step=t,
                tokens_seen=(t + 4) * BS + 5,
                n_entries_start=int(b.size - 1),
                n_entries=int(b.size - 1),
                wc_cost=int(nodes.node_cost(b[:-1], BS).sum()) + 5,
                w_max=2048,
                evicted_upto=0,
                n_applied=int((a != b[: a.size]).sum()),
                n_forced=int(t == 3),
                nll=nll,
                nll_full=None if nll is None else nll - 0.5,
                nll_recency=None if nll is None else nll + 0.25,
                t_tree_ms=1.0,
                t_scorer_ms=2.0,
                t_allocator_ms=0.5,
                t_model_ms=3.0,
            )
        )
    if finish:
        out.append(RunFinished("complete", tokens=(n_steps + 3) * BS + 5, steps=n_steps))
    return out


def record(run_dir, evs, **sink_kwargs):
    from telemetry import ParquetSink

    sink = ParquetSink(run_dir, **sink_kwargs)
    try:
        for e in evs:
            sink.emit(e)
    finally:
        sink.close()
    return sink


def per_token_lod(evs, step_lo: int, step_hi: int, t0: int, t1: int) -> np.ndarray:
    """Dense [steps, tokens] LOD grid (-1 where no entry covers) from the iteration-0 entries events."""
    grid = np.full((step_hi - step_lo + 1, t1 - t0), -1, np.int64)
    for e in evs:
        if isinstance(e, EntriesRecorded) and e.iteration == 0 and step_lo <= e.step <= step_hi:
            for lod, s, end in zip(e.lod, e.start, e.end, strict=True):
                lo, hi = max(int(s), t0), min(int(end), t1)
                if hi > lo:
                    grid[e.step - step_lo, lo - t0 : hi - t0] = lod
    return grid
