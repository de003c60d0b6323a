"""Array primitives of the compiled allocator: the `@njit` helpers its stages share.

- lookup: `_lookup_ids` (each WC entry's position in the allocator state, one forward pointer per
  level), `_find` (one id in a sorted array), `_edit_filter` (a presence filter of remembered edits);
- order: `_less`, `_sift`, `_order`, `_next`: the reference's total orders (lexsort, stable argsort)
  served lazily, a small sorted head first and a heap only if a round looks further;
- structure: `_groups` (sibling groups of one level with their mean score, as the reference's
  `np.bincount`) and `_rebuild` (carry out disjoint edits, WC order kept).

This module holds no allocator stage and no knob: the stages that call these helpers are in
`engine/allocator_jit_stages.py`, the planner-facing `plan_jit` in `engine/allocator_jit.py`.
Why the split matters when editing: numba's on-disk cache (`cache=True`) notices a change only in the
file that defines the cached function, and a caller's cached machine code contains these helpers; after
editing this file, also touch `engine/allocator_jit_stages.py` (or delete its entries in
engine/__pycache__) so that its kernels recompile.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from contract.nodes import INDEX_MASK, LOD_SHIFT


@njit(cache=True)
def _lookup_ids(keys, lod, index, max_lod):
    """Position of each entry's node id in sorted `keys` (leftmost match, as searchsorted), else -1.

    Along the WC each level's ids increase, so one forward pointer per level replaces n binary searches.
    """
    n, m = lod.size, keys.size
    out = np.full(n, -1, np.int64)
    if m == 0:
        return out
    ptr = np.zeros(max_lod + 1, np.int64)
    last = np.full(max_lod + 1, -1, np.int64)
    for lv in range(max_lod + 1):
        ptr[lv] = np.searchsorted(keys, np.int64(lv) << LOD_SHIFT)
    for i in range(n):
        lv = np.int64(lod[i])
        q = (lv << LOD_SHIFT) | index[i]
        if lv < 0 or lv > max_lod:
            p = np.searchsorted(keys, q)
        else:
            p = ptr[lv] if q >= last[lv] else np.searchsorted(keys, q)
            while p < m and keys[p] < q:
                p += 1
            ptr[lv], last[lv] = p, q
        if p < m and keys[p] == q:
            out[i] = p
    return out


@njit(cache=True)
def _find(keys, q):
    """`_lookup`'s search for one id: leftmost position of q in sorted keys, else -1."""
    if keys.size == 0:
        return -1
    p = min(np.searchsorted(keys, q), keys.size - 1)
    return p if keys[p] == q else -1


@njit(cache=True)
def _less(a, b, k1, k2, k3):
    """Lexicographic (k1, k2, k3, row) order: np.lexsort((k3, k2, k1)), stable."""
    if k1[a] != k1[b]:
        return k1[a] < k1[b]
    if k2[a] != k2[b]:
        return k2[a] < k2[b]
    if k3[a] != k3[b]:
        return k3[a] < k3[b]
    return a < b


@njit(cache=True)
def _sift(h, size, pos, k1, k2, k3):
    item = h[pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and _less(h[c + 1], h[c], k1, k2, k3):
            c += 1
        if not _less(h[c], item, k1, k2, k3):
            break
        h[pos] = h[c]
        pos = c
    h[pos] = item


@njit(cache=True)
def _order(rows, k1, k2, k3, t):
    """`rows` arranged for smallest-first popping: its t smallest first, sorted (one pass through a small
    sorted buffer), then the rest unordered; `_next` heapifies the rest only if a caller gets that far.
    A round pops about max_edits candidates of thousands: this costs one comparison per candidate."""
    t = min(t, rows.size)
    out, nb, nr = np.empty(rows.size, np.int64), 0, t
    for x in rows:
        if nb == t:
            if t == 0 or not _less(x, out[t - 1], k1, k2, k3):
                out[nr], nr = x, nr + 1
                continue
            out[nr], nr, nb = out[t - 1], nr + 1, nb - 1  # x displaces the buffer's largest
        i = nb
        while i > 0 and _less(x, out[i - 1], k1, k2, k3):
            out[i], i = out[i - 1], i - 1
        out[i], nb = x, nb + 1
    return out, np.array([0, rows.size - t, t])  # (next sorted position, size of the rest, t)


@njit(cache=True)
def _next(out, st, k1, k2, k3, pop):
    """The smallest remaining row of an `_order`ed array (removed if `pop`); st is its state, updated."""
    t = st[2]
    if st[0] < t:
        st[0] += pop
        return out[st[0] - pop]
    h = out[t:]
    if st[0] == t:  # the sorted head ran out: heapify the rest, once
        for pos in range(st[1] // 2 - 1, -1, -1):
            _sift(h, st[1], pos, k1, k2, k3)
        st[0] = t + 1
    top = h[0]
    if pop:
        st[1] -= 1
        if st[1] > 0:
            h[0] = h[st[1]]
            _sift(h, st[1], 0, k1, k2, k3)
    return top


@njit(cache=True)
def _rebuild(lod, index, score, src, op, op_node, op_score, op_src, bs):
    """Carry out disjoint edits in WC order: op 0 keep, 1 drop, 2 becomes node op_node (a collapse's first
    member), 3 expands into its children. Output stays sorted by start, as `apply` + `with_entries` leave it."""
    m = 0
    for i in range(lod.size):
        if op[i] == 0 or op[i] == 2:
            m += 1
        elif op[i] == 3:
            m += 1 if lod[i] == 1 else bs
    o_lod, o_idx = np.empty(m, np.int8), np.empty(m, np.int64)
    o_score, o_src = np.empty(m, np.float32), np.empty(m, np.int64)
    k = 0
    for i in range(lod.size):
        if op[i] == 0:
            o_lod[k], o_idx[k], o_score[k], o_src[k] = lod[i], index[i], score[i], src[i]
            k += 1
        elif op[i] == 2:
            o_lod[k], o_idx[k] = op_node[i] >> LOD_SHIFT, op_node[i] & INDEX_MASK
            o_score[k], o_src[k] = op_score[i], op_src[i]
            k += 1
        elif op[i] == 3:
            kids = 1 if lod[i] == 1 else bs
            first = index[i] if lod[i] == 1 else index[i] * bs
            for j in range(kids):
                o_lod[k], o_idx[k], o_score[k], o_src[k] = lod[i] - 1, first + j, 0.0, -1
                k += 1
    return o_lod, o_idx, o_score, o_src


@njit(cache=True)
def _groups(lod, index, score, lv, bs):
    """Sibling groups of the level-`lv` entries: runs of equal parent in WC order (`_runs`), with the mean
    of `score` as the reference's `np.bincount` gives it (float64 sum in member order, / count) in float32."""
    n, g, lo, hi = lod.size, -1, 0, 0
    par, first, cnt, acc = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n)
    for i in range(n):
        if lod[i] == lv:
            if g < 0 or not lo <= index[i] < hi:  # a new parent (one division per group, not per entry)
                g += 1
                par[g], first[g], cnt[g], acc[g] = index[i] // bs, i, 0, 0.0
                lo, hi = par[g] * bs, par[g] * bs + bs
            acc[g] += np.float64(score[i])
            cnt[g] += 1
    g += 1
    return par[:g], first[:g], cnt[:g], (acc[:g] / cnt[:g]).astype(np.float32)


@njit(cache=True)
def _edit_filter(ed_node):
    """A presence filter of the remembered edits: most candidates skip the search for theirs."""
    bits = np.zeros(4096, np.bool_)
    for x in ed_node:
        bits[(x ^ (x >> 29)) & 4095] = True
    return bits
