"""The compiled allocator: `@njit` twins of `engine.allocator.plan`'s stages, on plain arrays.

Why: the reference `plan` is ~800 small numpy calls, so it costs ~0.4-0.6 ms at 1k entries however
little work there is, and the knobs lab re-plans whole recordings step by step. These kernels do the
same work in loops: `_pipeline` is stages 1-2 (interpolation, shift + clip); `_plan` runs stages 4-8,
forced collapses, evictions and the state update, each under the reference's name (`_candidates`,
`_hysteresis`, `_budget_round`, `_restore_budget`, `_update_state`). Their one caller is
`engine.refocus.plan_jit`, the planner-facing side: it checks and normalises the inputs, packs the
knobs into the kernels' scalars, calls the two kernels and builds the `Plan` (`compiled=True`), or
hands the call to the reference.

How they stay bitwise identical (checked call by call against `plan` in tests/test_allocator_jit.py):
- float32 arithmetic is mirrored expression by expression. Under NumPy 2 promotion a Python float
  knob is cast to float32 *before* it meets a float32 array, so `g*raw + (1-g)*s_prev` is
  `f32(g)*raw + f32(1.0-g)*s_prev` in float32, and `s > tau`, `s < -tau`, `|s| <= tau + margin` compare
  float32 against `f32(tau)`, `f32(-tau)`, `f32(tau + margin)`. Group means are float64 sums in member
  order (`np.bincount`) divided by the count, then cast to float32. numba does no FMA contraction
  without fastmath, so each product and sum rounds like numpy's.
- sharpening (gamma != 1) stays in numpy (in `plan_jit`): `x ** gamma` may go through SIMD libraries
  whose rounding differs from libm's `powf`, so a kernel would not be bitwise portable.
- order: every sort of the reference (lexsort, stable argsort) is a total order on (flag, score, start,
  row), so `_order`/`_next` (a small sorted head, then a heap only if needed) yield the same candidates
  in the same order while paying for the few that a round looks at (about max_edits) out of thousands.
- memory of the input WC: each entry of the new WC carries its position in the input WC (or -1), which
  gives `_scores_on`'s score and `_update_state`'s s_prev / entered lookups without searching.

The array primitives the stages share come first: lookup (`_lookup_ids`, `_find`, `_edit_filter`),
the reference's total orders served lazily (`_less`, `_sift`, `_order`, `_next`: a small sorted head
first, a heap only if a round looks further), and structure (`_groups`, `_rebuild`).

Why every kernel is in this one file, although it passes ~400 lines: numba's on-disk cache
(`cache=True`) notices a change only in the file that defines the cached function, and a caller's
cached machine code contains its callees. Kernels split over two files would keep running stale
code after an edit to the other file. The first call compiles them (~10 s; then cached in
engine/__pycache__, ~0.2 s to load). This module holds no state.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from contract import decisions as dc
from contract.decisions import APPLIED
from contract.nodes import INDEX_MASK, LOD_SHIFT
from engine.allocator_types import PENDING


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


@njit(cache=True)
def _pipeline(raw, lod, index, st_node, st_sprev, max_lod, g, omg, left, right, use_left, use_right, lim):
    """Stages 1-2 (interpolation, shift + clip). Returns (raw ok, interp, shift, state position per entry)."""
    n = raw.size
    for i in range(n):
        if not np.isfinite(raw[i]) or abs(raw[i]) > lim:
            return False, np.empty(0, np.float32), np.empty(0, np.float32), np.zeros(0, np.int64)
    jpos = _lookup_ids(st_node, lod, index, max_lod)
    interp = np.empty(n, np.float32)
    for i in range(n):
        sp = st_sprev[jpos[i]] if jpos[i] >= 0 else np.float32(np.nan)
        interp[i] = raw[i] if np.isnan(sp) else g * raw[i] + omg * sp
    shift = interp.copy()
    if use_left:
        for i in range(1, n):
            shift[i] = shift[i] + left * interp[i - 1]
    if use_right:
        for i in range(n - 1):
            shift[i] = shift[i] + right * interp[i + 1]
    for i in range(n):
        if shift[i] < -1.0:
            shift[i] = -1.0
        elif shift[i] > 1.0:
            shift[i] = 1.0
    return True, interp, shift, jpos


# The stages of `engine.allocator.plan`, compiled, each under the reference's name. `_plan` runs them in
# order. Candidate tables are fixed-size arrays with their used length beside them (`ne`, `nc`).


@njit(cache=True)
def _candidates(s, lod, index, pw, bs, max_lod, p0, tau_e, neg_tau_c):
    """Stages 4 and 6: each entry's start token and the entries' cost; expansion candidates (entries
    above tau_expand, in WC order; LOD0 cannot expand) and collapse candidates in the reference's part
    order (LOD0 blocks, sibling groups level by level, max_lod entries), each with its legality
    outcome. `part[l]:part[l + 1]` are the collapse rows with lod_from l."""
    n, cost = s.size, 0
    start, ex_first, ex_node = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    ex_out, ne = np.empty(n, np.int8), 0
    for i in range(n):
        start[i] = index[i] * pw[max(lod[i], 1)]
        cost += bs if lod[i] == 0 else 1
        if s[i] > tau_e:
            ex_first[ne], ex_node[ne] = i, (np.int64(lod[i]) << LOD_SHIFT) | index[i]
            ex_out[ne], ne = dc.ILLEGAL if lod[i] == 0 else PENDING, ne + 1
    co_node, co_lf, co_score = np.empty(n, np.int64), np.empty(n, np.int8), np.empty(n, np.float32)
    co_first, co_count, co_out = np.empty(n, np.int64), np.ones(n, np.int64), np.empty(n, np.int8)
    part, nc = np.zeros(max_lod + 2, np.int64), 0
    for lv in range(max_lod + 1):
        part[lv] = nc
        if 0 < lv < max_lod:
            par, first, cnt, mean = _groups(lod, index, s, lv, bs)
            for g in range(par.size):
                if mean[g] < neg_tau_c:
                    co_node[nc], co_lf[nc], co_score[nc] = (np.int64(lv + 1) << LOD_SHIFT) | par[g], lv, mean[g]
                    co_first[nc], co_count[nc] = first[g], cnt[g]
                    co_out[nc] = PENDING if cnt[g] == bs else dc.ILLEGAL  # a group collapses only whole
                    nc += 1
            continue
        for i in range(n):  # LOD0 folds into LOD1 (protected blocks never); max_lod cannot collapse
            if lod[i] == lv and s[i] < neg_tau_c:
                co_node[nc], co_lf[nc] = (np.int64(max(lv, 1)) << LOD_SHIFT) | index[i], lv
                co_score[nc], co_first[nc] = s[i], i
                co_out[nc] = dc.ILLEGAL if lv == max_lod else (dc.PROTECTED if start[i] >= p0 else PENDING)
                nc += 1
    part[max_lod + 1] = nc
    ex = (ex_first[:ne], ex_node[:ne], ex_out[:ne])
    return start, cost, ex, co_node, co_lf, co_score, co_first, co_count, co_out, part, nc


@njit(cache=True)
def _hysteresis(s, ex_first, ex_node, ex_out, co_node, co_score, co_out, nc, bits, ed_node, ed_step, ed_dir, step,
                cooldown, hyst_steps, thr_e, thr_c):  # fmt: skip
    """Stage 5, in place: a pending candidate that reverses a remembered edit gets cooldown, or
    hysteresis if its score is weak (within the threshold plus the margin: `thr_e`, `thr_c`)."""
    ne = ex_out.size
    for k in range(ne + nc):
        is_ex, r = k < ne, k if k < ne else k - ne
        if (ex_out[r] if is_ex else co_out[r]) != PENDING:
            continue
        q = ex_node[r] if is_ex else co_node[r]
        if not bits[(q ^ (q >> 29)) & 4095]:  # tested inline: a call per candidate would cost more
            continue
        j = _find(ed_node, q)
        if j < 0 or ed_dir[j] != (-1 if is_ex else 1):
            continue
        age, sc = step - ed_step[j], s[ex_first[r]] if is_ex else co_score[r]
        verdict = PENDING
        if age < cooldown:
            verdict = dc.COOLDOWN
        elif age < hyst_steps and abs(sc) <= (thr_e if is_ex else thr_c):
            verdict = dc.HYSTERESIS
        if is_ex:
            ex_out[r] = verdict
        else:
            co_out[r] = verdict


@njit(cache=True)
def _budget_round(s, start, ex_first, ex_out, co_first, co_count, co_score, co_out, nc, cost, w_max, cap, b1):
    """Stages 7-8, in place: worst collapse / best expansion alternately, up to `cap` edits; what is
    left pending gets edit_cap. Returns (edits applied, cost after them, expansion seq, collapse seq)."""
    ne, n = ex_out.size, s.size
    ex_seq, co_seq, zeros = np.full(ne, -1, np.int32), np.full(nc, -1, np.int32), np.zeros(max(ne, nc), np.int8)
    neg, ex_start, co_start = -s[ex_first], start[ex_first], start[co_first[:nc]]
    t = max(min(cap, 16), 0) + 2  # candidates most rounds look at, beyond skips
    co_heap, co_state = _order(np.flatnonzero(co_out[:nc] == PENDING), zeros, co_score, co_start, t)
    ex_heap, ex_state = _order(np.flatnonzero(ex_out == PENDING), zeros, neg, ex_start, t)
    n_co, n_ex, used, gone = co_heap.size, ex_heap.size, 0, np.zeros(n, np.bool_)
    while used < cap and (n_co > 0 or n_ex > 0):
        if n_co > 0:
            k, n_co = _next(co_heap, co_state, zeros, co_score, co_start, 1), n_co - 1
            f, c = co_first[k], co_count[k]
            if gone[f : f + c].any():
                co_out[k] = dc.ILLEGAL  # an earlier edit this round already took a member
                continue
            gone[f : f + c] = True
            co_out[k], co_seq[k] = APPLIED, used
            used, cost = used + 1, cost - b1
            if used >= cap:
                break
        if n_ex > 0:
            k = _next(ex_heap, ex_state, zeros, neg, ex_start, 0)
            if gone[ex_first[k]]:
                ex_out[k], n_ex = dc.ILLEGAL, n_ex - 1
                _next(ex_heap, ex_state, zeros, neg, ex_start, 1)
            elif cost + b1 <= w_max:
                gone[ex_first[k]] = True
                ex_out[k], ex_seq[k] = APPLIED, used
                used, cost, n_ex = used + 1, cost + b1, n_ex - 1
                _next(ex_heap, ex_state, zeros, neg, ex_start, 1)
            elif n_co == 0:  # every expansion costs the same: if the best does not fit, none does
                for j in ex_heap[min(ex_state[0], ex_state[2]) : ex_state[2] + ex_state[1]]:  # the remaining ones
                    ex_out[j] = dc.ILLEGAL if gone[ex_first[j]] else dc.BUDGET
                n_ex = 0
    for k in range(ne + nc):
        if k < ne and ex_out[k] == PENDING:
            ex_out[k] = dc.EDIT_CAP
        elif k >= ne and co_out[k - ne] == PENDING:
            co_out[k - ne] = dc.EDIT_CAP
    return used, cost, ex_seq, co_seq


@njit(cache=True)
def _apply_voluntary(lod, index, s, ex_first, ex_out, co_node, co_first, co_count, co_out, nc, bs):
    """`apply` for this round's voluntary edits (disjoint by construction): the new WC's entries, each
    with its score (0 for new nodes, as `_scores_on`) and its position in the input WC (-1 if new)."""
    n = s.size
    op, op_node = np.zeros(n, np.int8), np.empty(n, np.int64)  # op_* are read only where op == 2
    op_score, op_src = np.empty(n, np.float32), np.empty(n, np.int64)
    for k in range(nc):
        if co_out[k] == APPLIED:
            op[co_first[k] : co_first[k] + co_count[k]] = 1
            op[co_first[k]], op_node[co_first[k]], op_score[co_first[k]], op_src[co_first[k]] = 2, co_node[k], 0, -1
    op[ex_first[ex_out == APPLIED]] = 3
    return _rebuild(lod, index, s, np.arange(n), op, op_node, op_score, op_src, bs)


@njit(cache=True)
def _restore_budget(c_lod, c_idx, c_score, c_src, s, ex_node, ex_first, ex_out, co_node, co_out, co_seq, part, nc,
                    bits, ed_node, ed_step, ed_dir, step, cooldown, cost, w_max, bs, max_lod, p0, pw, seq,
                    evicted_upto):  # fmt: skip
    """Forced collapses in batches (lowest score first, recent expansions last), then eviction of the
    oldest top-level gists, until the cost fits `w_max`. A forced collapse that a voluntary row names
    (refused for cooldown, edit cap...) turns that row into applied + forced (in place); others are new
    rows. Returns the WC's entries, cost, evicted_upto, the forced flags of the collapse rows, the new
    rows' columns and count, and the next seq."""
    b1 = bs - 1
    co_forced, size = np.zeros(nc, np.bool_), 3 * c_lod.size + 2 if cost > w_max else 0  # bound: see forced rows
    f_node, f_lf, f_lt = np.empty(size, np.int64), np.empty(size, np.int8), np.empty(size, np.int8)
    f_act, f_score, f_seq = np.empty(size, np.int8), np.empty(size, np.float32), np.empty(size, np.int32)
    nf, vx = 0, np.flatnonzero(ex_out == APPLIED)
    while cost > w_max:
        m = c_lod.size
        cid, csc, clf = np.empty(m, np.int64), np.empty(m, np.float32), np.empty(m, np.int8)
        cfirst, ccount, crec = np.empty(m, np.int64), np.ones(m, np.int64), np.zeros(m, np.int8)
        q = 0
        for i in range(m):  # `_collapsible`: unprotected LOD0 blocks, then whole sibling groups by level
            if c_lod[i] == 0 and c_idx[i] * bs < p0:
                cid[q], csc[q], clf[q], cfirst[q] = (np.int64(1) << LOD_SHIFT) | c_idx[i], c_score[i], 0, i
                q += 1
        for lv in range(1, max_lod):
            par, first, cnt, mean = _groups(c_lod, c_idx, c_score, lv, bs)
            for g in np.flatnonzero(cnt == bs):
                cid[q], csc[q], clf[q] = (np.int64(lv + 1) << LOD_SHIFT) | par[g], mean[g], lv
                cfirst[q], ccount[q] = first[g], bs
                q += 1
        if q == 0:
            break
        cst = c_idx[cfirst[:q]] * pw[np.maximum(c_lod[cfirst[:q]], 1)]  # the first member's start
        for k in range(q):
            x = cid[k]
            if bits[(x ^ (x >> 29)) & 4095]:
                j = _find(ed_node, x)
                crec[k] = j >= 0 and ed_dir[j] == 1 and step - ed_step[j] < cooldown
        need = (cost - w_max + b1 - 1) // b1
        h, sth = _order(np.arange(q), crec, csc, cst, min(need, 64))
        nh = q
        op, op_node = np.zeros(m, np.int8), np.empty(m, np.int64)
        op_score, op_src = np.empty(m, np.float32), np.empty(m, np.int64)
        while need > 0 and nh > 0:
            k, nh = _next(h, sth, crec, csc, cst, 1), nh - 1
            nid, lf = cid[k], clf[k]
            r = part[lf] + np.searchsorted(co_node[part[lf] : part[lf + 1]], nid)  # a part's ids increase
            if r < part[lf + 1] and co_node[r] == nid and co_out[r] != APPLIED and not co_forced[r]:
                # a voluntary row names this node (refused for cooldown, edit cap...): now applied + forced
                co_out[r], co_forced[r], co_seq[r] = APPLIED, True, seq
            else:
                f_node[nf], f_lf[nf], f_lt[nf] = nid, lf, lf + 1
                f_act[nf], f_score[nf], f_seq[nf], nf = dc.COLLAPSE, csc[k], seq, nf + 1
            # Its score from now on (`_scores_on`): the input WC's if it was an entry there, else csc. (Only a
            # node expanded this round could be; unreachable today, as an applied expansion fits the budget.)
            sc, src = csc[k], -1
            for kk in vx:
                if ex_node[kk] == nid:
                    sc, src = s[ex_first[kk]], ex_first[kk]
            op[cfirst[k] : cfirst[k] + ccount[k]] = 1
            op[cfirst[k]], op_node[cfirst[k]], op_score[cfirst[k]], op_src[cfirst[k]] = 2, nid, sc, src
            need, seq, cost = need - 1, seq + 1, cost - b1
        c_lod, c_idx, c_score, c_src = _rebuild(c_lod, c_idx, c_score, c_src, op, op_node, op_score, op_src, bs)
    e0 = 0  # still over: evict the oldest top-level gists, one position each
    while cost > w_max and e0 < c_lod.size and c_lod[e0] == max_lod:
        f_node[nf], f_lf[nf], f_lt[nf] = (np.int64(max_lod) << LOD_SHIFT) | c_idx[e0], max_lod, dc.EVICTED_LOD
        f_act[nf], f_score[nf], f_seq[nf] = dc.EVICT, c_score[e0], seq
        evicted_upto = max(evicted_upto, (c_idx[e0] + 1) * pw[max_lod])
        nf, e0, seq, cost = nf + 1, e0 + 1, seq + 1, cost - 1
    forced = (f_node, f_lf, f_lt, f_act, f_score, f_seq)
    return c_lod[e0:], c_idx[e0:], c_src[e0:], cost, evicted_upto, co_forced, forced, nf, seq


@njit(cache=True)
def _decision_columns(s, lod, ex_first, ex_node, ex_out, ex_seq, co_node, co_lf, co_score, co_out, co_forced, co_seq,
                      nc, forced, nf):  # fmt: skip
    """The round's decision rows: collapse rows, expansion rows, then the new forced rows. Returns the
    eight columns and how many applied edits (evictions aside) the state must remember."""
    f_node, f_lf, f_lt, f_act, f_score, f_seq = forced
    ne = ex_out.size
    rows = nc + ne + nf
    d_node, d_lf, d_lt = np.empty(rows, np.int64), np.empty(rows, np.int8), np.empty(rows, np.int8)
    d_act, d_score, d_out = np.empty(rows, np.int8), np.empty(rows, np.float32), np.empty(rows, np.int8)
    d_forced, d_seq, n_new = np.empty(rows, np.bool_), np.empty(rows, np.int32), 0
    for r in range(rows):
        if r < nc:
            d_node[r], d_lf[r], d_lt[r], d_act[r] = co_node[r], co_lf[r], co_lf[r] + 1, dc.COLLAPSE
            d_score[r], d_out[r], d_forced[r], d_seq[r] = co_score[r], co_out[r], co_forced[r], co_seq[r]
        elif r < nc + ne:
            k, i = r - nc, ex_first[r - nc]
            d_node[r], d_lf[r], d_lt[r], d_act[r], d_score[r] = ex_node[k], lod[i], max(lod[i] - 1, 0), dc.EXPAND, s[i]
            d_out[r], d_forced[r], d_seq[r] = ex_out[k], False, ex_seq[k]
        else:
            k = r - nc - ne
            d_node[r], d_lf[r], d_lt[r], d_act[r], d_score[r] = f_node[k], f_lf[k], f_lt[k], f_act[k], f_score[k]
            d_out[r], d_forced[r], d_seq[r] = APPLIED, True, f_seq[k]
        n_new += d_out[r] == APPLIED and d_act[r] != dc.EVICT
    return (d_node, d_lf, d_lt, d_act, d_score, d_out, d_forced, d_seq), n_new


@njit(cache=True)
def _update_state(cols, n_new, c_lod, c_idx, c_src, interp, jpos, st_entered, ed_node, ed_step, ed_dir, step,
                  max_lod, horizon):  # fmt: skip
    """The allocator's memory after the round: the new WC's entries sorted by node id (= by level, then
    WC order) with the interpolated score and entry step of those that were entries of the input WC;
    and the edits, this round's applied ones (row order) replacing older ones of the same node, the
    ones older than `horizon` forgotten."""
    d_node, d_act, d_out = cols[0], cols[3], cols[5]
    m, o = c_lod.size, 0
    st_node, st_sprev, st_ent = np.empty(m, np.int64), np.empty(m, np.float32), np.empty(m, np.int32)
    for lv in range(max_lod + 1):
        for i in range(m):
            if c_lod[i] == lv:
                src = c_src[i]
                st_node[o] = (np.int64(lv) << LOD_SHIFT) | c_idx[i]
                st_sprev[o] = interp[src] if src >= 0 else np.float32(np.nan)
                pe = st_entered[jpos[src]] if src >= 0 and jpos[src] >= 0 else -1
                st_ent[o] = pe if src >= 0 and not np.isnan(st_sprev[o]) and pe >= 0 else step
                o += 1
    new_node, new_dir, k = np.empty(n_new, np.int64), np.empty(n_new, np.int8), 0
    for r in range(d_node.size):
        if d_out[r] == APPLIED and d_act[r] != dc.EVICT:
            new_node[k], new_dir[k], k = d_node[r], 1 if d_act[r] == dc.EXPAND else -1, k + 1
    keep = step - ed_step < horizon
    for j in range(ed_node.size):
        for x in new_node:
            keep[j] = keep[j] and ed_node[j] != x
    e_node = np.concatenate((ed_node[keep], new_node))
    e_step = np.concatenate((ed_step[keep], np.full(n_new, step, np.int32)))
    e_dir = np.concatenate((ed_dir[keep], new_dir))
    srt = np.argsort(e_node, kind="mergesort")  # stable, as the reference's
    return st_node, st_sprev, st_ent, e_node[srt], e_step[srt], e_dir[srt]


@njit(cache=True)
def _plan(s, interp, lod, index, jpos, st_entered, ed_node, ed_step, ed_dir, thresholds, scalars):
    """Stages 4-8, forced collapses, evictions and the state update, on the final scores `s`. One array
    each of float32 thresholds and int64 scalars: numba types an array faster than a dozen arguments."""
    tau_e, neg_tau_c, thr_e, thr_c = thresholds[0], thresholds[1], thresholds[2], thresholds[3]
    bs, max_lod, p0, tail_len, w_max, evicted_upto, cooldown, hyst_steps, cap, step, horizon = scalars
    pw = np.ones(max_lod + 2, np.int64)  # pw[l] = bs**l; a node at lod l spans pw[max(l, 1)] tokens
    for lv in range(1, max_lod + 2):
        pw[lv] = pw[lv - 1] * bs
    start, entries_cost, ex, co_node, co_lf, co_score, co_first, co_count, co_out, part, nc = _candidates(
        s, lod, index, pw, bs, max_lod, p0, tau_e, neg_tau_c
    )
    ex_first, ex_node, ex_out = ex
    bits = _edit_filter(ed_node)
    _hysteresis(s, ex_first, ex_node, ex_out, co_node, co_score, co_out, nc, bits, ed_node, ed_step, ed_dir, step,
                cooldown, hyst_steps, thr_e, thr_c)  # fmt: skip
    used, cost, ex_seq, co_seq = _budget_round(s, start, ex_first, ex_out, co_first, co_count, co_score, co_out, nc,
                                               tail_len + entries_cost, w_max, cap, bs - 1)  # fmt: skip
    c_lod, c_idx, c_score, c_src = _apply_voluntary(lod, index, s, ex_first, ex_out, co_node, co_first, co_count,
                                                    co_out, nc, bs)  # fmt: skip
    c_lod, c_idx, c_src, cost, evicted_upto, co_forced, forced, nf, seq = _restore_budget(
        c_lod,
        c_idx,
        c_score,
        c_src,
        s,
        ex_node,
        ex_first,
        ex_out,
        co_node,
        co_out,
        co_seq,
        part,
        nc,
        bits,
        ed_node,
        ed_step,
        ed_dir,
        step,
        cooldown,
        cost,
        w_max,
        bs,
        max_lod,
        p0,
        pw,
        used,
        evicted_upto,
    )
    cols, n_new = _decision_columns(s, lod, ex_first, ex_node, ex_out, ex_seq, co_node, co_lf, co_score, co_out,
                                    co_forced, co_seq, nc, forced, nf)  # fmt: skip
    st = _update_state(cols, n_new, c_lod, c_idx, c_src, interp, jpos, st_entered, ed_node, ed_step, ed_dir, step,
                       max_lod, horizon)  # fmt: skip
    return cost <= w_max, cols, c_lod, c_idx, evicted_upto, st, used, seq > 0
