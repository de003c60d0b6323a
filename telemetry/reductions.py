"""The per-entry focus metrics, reduced step by step: one implementation for every caller.

Locality, residency runs, coherence and adjacency (DESIGN section 4) are quantities of one step's
working context, or of one round's. `StepReducer` computes them with compiled kernels over rows
*grouped by step*: group g is rows `bounds[g]:bounds[g + 1]`, one step's iteration-0 WC in token
order. It keeps what crosses steps (which nodes are entries since when, for residency runs), so it
can be fed one step at a time or many:

- the Knobs lab's one-pass measure (`studio.fast_replay.MeasureSink`) feeds it each step of a replay as
  its events arrive, one group per call, and never builds a table of entries;
- `telemetry.metrics` and `telemetry.run_metrics` feed it a run's tables, in batches of whole steps.

Both therefore get the same numbers from the same code. The per-step series follow from the counts
through `locality_of`, `coherence_of` and `residency_of`, which every caller uses.

A node is keyed densely by `index * LEVELS + lod`: the key space grows with the history (a few MB at
a million tokens), never with the number of steps, and growing it keeps every key.
"""

from __future__ import annotations

import numba
import numpy as np

from contract.decisions import EVICT, EXPAND
from contract.nodes import INDEX_MASK, LOD_SHIFT

LEVELS = 8  # node key = index * LEVELS + lod (tree.max_lod is at most 4)


@numba.njit(cache=True, nogil=True)
def _key(nid):
    return (nid & INDEX_MASK) * LEVELS + (nid >> LOD_SHIFT)


@numba.njit(cache=True, nogil=True)
def _max_key(node_id, lo, hi):
    m = -1
    for i in range(lo, hi):
        k = _key(node_id[i])
        if k > m:
            m = k
    return m


@numba.njit(cache=True, nogil=True)
def _entries(steps, bounds, node_id, lod, start, end, score, tau, since, seen_at, prev, st, c_key, c_first, c_len,
             step_out, counts, a, cand):  # fmt: skip
    """Each group g (step `steps[g]`), written to row a + g of `step_out` and of `counts` (n, detail,
    runs, candidates, finer): residency (a key absent at the previous group's step starts a run here; a
    key present then and absent now closes its run into c_key/c_first/c_len), locality counts (LOD0
    entries, their maximal contiguous runs) and coherence candidates (keys of gists scored above `tau`,
    appended to `cand`; finer is left 0 for `_finer`). `st` = [keys at the previous group, its step,
    closed runs, candidates], carried across calls. Returns -1, or the key-space size needed when a
    key does not fit (nothing is changed then)."""
    m = _max_key(node_id, bounds[0], bounds[-1])
    if m >= since.shape[0]:
        return m + 1
    n_prev, prev_t, n_closed, n_cand = st[0], st[1], st[2], st[3]
    for g in range(steps.shape[0]):
        t, lo, hi = steps[g], bounds[g], bounds[g + 1]
        for i in range(lo, hi):  # a node not present at the previous group's step starts a run here
            k = _key(node_id[i])
            if prev_t < 0 or seen_at[k] != prev_t:
                since[k] = t
        for i in range(lo, hi):
            seen_at[_key(node_id[i])] = t
        for j in range(n_prev):  # present before, absent now: its run closed at this step
            k = prev[j]
            if seen_at[k] != t:
                c_key[n_closed], c_first[n_closed], c_len[n_closed] = k, since[k], t - since[k]
                n_closed += 1
        d, r, c = 0, 0, 0
        for i in range(lo, hi):
            prev[i - lo] = _key(node_id[i])
            if lod[i] == 0:
                d += 1
                if not (i > lo and lod[i - 1] == 0 and end[i - 1] == start[i]):
                    r += 1
            elif score[i] > tau:
                cand[n_cand] = prev[i - lo]
                n_cand += 1
                c += 1
        row = a + g
        step_out[row] = t
        counts[0, row], counts[1, row], counts[2, row], counts[3, row], counts[4, row] = hi - lo, d, r, c, 0
        n_prev, prev_t = hi - lo, t
    st[0], st[1], st[2], st[3] = n_prev, prev_t, n_closed, n_cand
    return -1


@numba.njit(cache=True, nogil=True)
def _finer(counts, a, cand, d_lo, d_hi, d_node, d_action, last):
    """Per group g (row a + g of `counts`, whose candidates follow each other in `cand`): how many of its
    candidates had as their node's last applied edit of the step (d_*[d_lo[g]:d_hi[g]], in application
    order) an expand, into counts[4]; evictions are not edits of detail and are skipped. Returns -1, or
    the key-space size needed."""
    m = _max_key(d_node, 0, d_node.shape[0])
    if m >= last.shape[0]:
        return m + 1
    c0 = 0
    for g in range(d_lo.shape[0]):
        for j in range(d_lo[g], d_hi[g]):
            if d_action[j] != EVICT:  # (module constants are compile-time constants to numba)
                last[_key(d_node[j])] = d_action[j]
        hits, c1 = 0, c0 + counts[3, a + g]
        for i in range(c0, c1):
            hits += last[cand[i]] == EXPAND
        counts[4, a + g], c0 = hits, c1
        for j in range(d_lo[g], d_hi[g]):
            last[_key(d_node[j])] = -1
    return -1


@numba.njit(cache=True, nogil=True)
def _adjacent(e_bounds, lod, start, end, x_round, x_start, x_end, x_lod):
    """(expansions whose round's entries are given, those touching a finer entry of that round's WC):
    expansion j spans [x_start, x_end) at LOD x_lod, in round `x_round[j]` (rows e_bounds[r]:e_bounds[r+1],
    in token order), or -1 when its round was not recorded."""
    seen, hits = 0, 0
    for j in range(x_round.shape[0]):
        r = x_round[j]
        if r < 0:
            continue
        seen += 1
        lo, hi = e_bounds[r], e_bounds[r + 1]
        p = lo + np.searchsorted(end[lo:hi], x_start[j])  # a round's entries tile its WC: ends ascend
        hit = p < hi and end[p] == x_start[j] and lod[p] < x_lod[j]
        q = lo + np.searchsorted(start[lo:hi], x_end[j])
        if q < hi and start[q] == x_end[j] and lod[q] < x_lod[j]:
            hit = True
        hits += hit
    return seen, hits


def _grown(a: np.ndarray, size: int, fill) -> np.ndarray:
    if a.shape[0] >= size:
        return a
    return np.concatenate([a, np.full(max(size, 2 * a.shape[0]) - a.shape[0], fill, a.dtype)])


def locality_of(detail: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Per step: `1 - (runs - 1) / max(1, detail - 1)`, NaN where the step has no LOD0 entry (1 = all
    detail in one contiguous region)."""
    d, r = detail.astype(np.float64), runs.astype(np.float64)
    return np.where(d > 0, 1.0 - (r - 1.0) / np.maximum(1.0, d - 1.0), np.nan)


def coherence_of(candidates: np.ndarray, finer: np.ndarray) -> np.ndarray:
    """Per step: the share of the candidates that ended the step finer."""
    return finer / np.maximum(candidates.astype(np.float64), 1.0)


def residency_of(closed: np.ndarray, open_runs: int) -> dict:
    """Mean and p95 length of the closed residency runs (open ones are only counted: censored)."""
    closed = closed.astype(np.float64)
    return {
        "mean": float(closed.mean()) if closed.size else None,
        "p95": float(np.percentile(closed, 95)) if closed.size else None,
        "runs": int(closed.size),
        "open_runs": int(open_runs),
    }


_ROW_COLS = ("n", "detail_blocks", "runs", "candidates", "finer")


class StepReducer:
    """The per-entry focus metrics of a run, fed steps in step order (see the module docstring).

    `entries` takes the iteration-0 WCs of some steps, `decisions` those steps' applied edits (for
    coherence, which needs both), `adjacency` any rounds' WCs with their applied expansions. The results:
    `per_step()` (one row per step fed), `runs()` (residency runs), `closed_lengths()`, `open_runs`,
    and the adjacency counts `expansions` and `adjacent`.
    """

    def __init__(self, tau_expand: float, keys: int = 0) -> None:
        self.tau = np.float32(tau_expand)  # the allocator's own comparison: float32 score > float32 tau
        self.since, self.seen_at = np.zeros(keys, np.int32), np.full(keys, -1, np.int32)
        self.last = np.full(keys, -1, np.int8)
        self.prev = np.zeros(0, np.int64)
        self.st = np.array([0, -1, 0, 0], np.int64)  # n_prev, prev_t, n_closed, n_cand
        self.c_key, self.c_first, self.c_len = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32)
        self.cand = np.zeros(0, np.int64)
        # One row per step fed, in growable buffers (the kernels write into views of them).
        self.rows, self.step = 0, np.zeros(0, np.int64)
        self.counts = np.zeros((len(_ROW_COLS), 0), np.int32)
        self._pending: tuple[int, int] | None = None  # rows [a, b) whose candidates await their decisions
        self.expansions = self.adjacent = 0

    def entries(self, steps, bounds, node_id, lod, start, end, score) -> None:
        """Iteration-0 WCs: group g is step `steps[g]` (ascending, after every step fed before), rows
        `bounds[g]:bounds[g + 1]` of the columns, each group in token order. Its coherence candidates wait
        for `decisions` (without them, none counts as finer)."""
        st = self.st
        st[3] = 0  # candidates are only kept until their steps' decisions are in
        g, rows = steps.shape[0], int(bounds[-1] - bounds[0])
        widest = rows if g == 1 else int(np.diff(bounds).max(initial=0))  # one group's keys at a time
        if self.prev.shape[0] < widest:
            self.prev = _grown(self.prev, widest, 0)
        need = int(st[2] + st[0]) + rows
        if self.c_key.shape[0] < need:
            self.c_key, self.c_first, self.c_len = (_grown(a, need, 0) for a in (self.c_key, self.c_first, self.c_len))
        if self.cand.shape[0] < rows:
            self.cand = _grown(self.cand, rows, 0)
        a = self.rows
        if self.step.shape[0] < a + g:
            size = max(a + g, 2 * self.step.shape[0], 64)
            self.step = _grown(self.step, size, 0)
            self.counts = np.concatenate(
                [self.counts, np.zeros((len(_ROW_COLS), size - self.counts.shape[1]), np.int32)], 1
            )
        while True:
            need = _entries(steps, bounds, node_id, lod, start, end, score, self.tau, self.since, self.seen_at,
                            self.prev, st, self.c_key, self.c_first, self.c_len, self.step, self.counts, a,
                            self.cand)  # fmt: skip
            if need < 0:
                break
            self.since, self.seen_at = _grown(self.since, need, 0), _grown(self.seen_at, need, -1)
        self.rows, self._pending = a + g, (a, a + g)

    def decisions(self, lo, hi, node_id, action) -> None:
        """The applied edits of the steps of the last `entries` call: group g's rows `lo[g]:hi[g]` of
        `node_id` and `action`, in application order (iteration, then seq)."""
        if self._pending is None:
            return
        a, b = self._pending
        self._pending = None
        if lo.shape[0] != b - a:
            raise ValueError(f"decisions in {lo.shape[0]} groups for {b - a} steps of entries")
        if self.last.shape[0] < self.since.shape[0]:
            self.last = _grown(self.last, self.since.shape[0], -1)
        while True:
            need = _finer(self.counts, a, self.cand, lo, hi, node_id, action, self.last)
            if need < 0:
                break
            self.last = _grown(self.last, need, -1)

    def adjacency(self, e_bounds, lod, start, end, x_round, x_start, x_end, x_lod) -> None:
        """Applied expansions against their rounds' WCs (see `_adjacent`); the counts accumulate."""
        seen, hits = _adjacent(e_bounds, lod, start, end, x_round, x_start, x_end, x_lod)
        self.expansions += int(seen)
        self.adjacent += int(hits)

    # ------------------------------------------------------------------------------- results

    def per_step(self) -> dict[str, np.ndarray]:
        """One row per step fed: step, n (entries), detail_blocks, runs, candidates, finer."""
        out = {"step": self.step[: self.rows].copy()}
        for j, name in enumerate(_ROW_COLS):
            out[name] = self.counts[j, : self.rows].copy()
        return out

    def closed_lengths(self) -> np.ndarray:
        """Lengths of the closed residency runs, in the order they closed."""
        return self.c_len[: int(self.st[2])]

    @property
    def open_runs(self) -> int:
        """Runs still open at the last step fed (their nodes are entries there)."""
        return int(self.st[0])

    def runs(self) -> dict[str, np.ndarray]:
        """Every residency run: node_id, lod, first_step, length (to the step it was first seen missing,
        or for an `open` run, to one past the last step fed), open; by node, then first step."""
        n, n_prev, prev_t = int(self.st[2]), int(self.st[0]), int(self.st[1])
        k_open = self.prev[:n_prev]
        key = np.concatenate([self.c_key[:n], k_open])
        first = np.concatenate([self.c_first[:n], self.since[k_open]]).astype(np.int32)
        length = np.concatenate([self.c_len[:n], prev_t + 1 - self.since[k_open]]).astype(np.int32)
        is_open = np.concatenate([np.zeros(n, bool), np.ones(n_prev, bool)])
        lod, idx = (key % LEVELS).astype(np.int8), key // LEVELS
        node = (lod.astype(np.int64) << LOD_SHIFT) | idx
        order = np.lexsort((first, node))
        return {"node_id": node[order], "lod": lod[order], "first_step": first[order], "length": length[order],
                "open": is_open[order]}  # fmt: skip
