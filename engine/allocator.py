"""The focus allocator: turns per-entry utilities into legal expand/collapse edits under a budget.

`plan(wc, raw_scores, state, knobs, step)` is a pure function of its inputs (numpy only: no torch,
no model, no globals), so a recorded session can be re-planned anywhere with other knobs, and
identical inputs give identical decisions. Its pipeline (DESIGN section 3), each stage recorded:

  1 interpolation  s = g*raw + (1-g)*s_prev         (per node, NTM gate)
  2 shift          s += left*s[k-1] + right*s[k+1]   (along WC order), clipped to [-1, 1]
  3 sharpen        sign(s)*|s|**gamma
  4 thresholds     expand if s > tau_expand; collapse a sibling group if its mean < -tau_collapse
  5 hysteresis     reversing an edit: never within cooldown_steps; within hysteresis_steps only
                   if |s| clears the threshold by hysteresis_margin (Schmitt trigger)
  6 legality       LOD0 cannot expand, max_lod cannot collapse, a group collapses only whole;
                   protection: the newest protected blocks never collapse
  7 budget         collapses worst-first and expansions best-first, alternating; an expansion only
                   if it fits; then forced collapses (lowest score first) restore the budget, and
                   if even that fails the oldest top-level gists are evicted, each logged
  8 edit cap       max_edits voluntary edits per step, shared by the step's iterations

Outcome precedence for a candidate that fails several stages: illegal, protected, cooldown,
hysteresis, then budget / edit_cap. Every expand/collapse moves the cost by +/-(block_size - 1).

This module holds the stages only: the knobs they read (`PlanKnobs`) are the contract's
(`contract/config.py`), the types they return (`AllocatorState`, `Plan`, `AllocatorError`) are in
`engine/allocator_types.py`, the compiled twin's kernels in `engine/allocator_jit.py`, and the twin's
Python side (`plan_jit`) and the choice between the two in `engine/refocus.py` (`PLANNERS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract import nodes
from contract.config import AllocatorConfig, PlanKnobs
from contract.decisions import (
    APPLIED,
    BUDGET,
    COLLAPSE,
    COOLDOWN,
    EDIT_CAP,
    EVICT,
    EVICTED_LOD,
    EXPAND,
    HYSTERESIS,
    ILLEGAL,
    PROTECTED,
    Decisions,
    make_decisions,
)
from engine.allocator_types import PENDING, AllocatorError, AllocatorState, Plan, _lookup
from engine.edits import apply
from engine.working_context import WorkingContext, protected_from

# ---------------------------------------------------------------------------------------------
# Stages 1-3: the score pipeline.


def score_pipeline(raw: np.ndarray, s_prev: np.ndarray, a: AllocatorConfig) -> dict[str, np.ndarray]:
    """raw float32[n] + s_prev float32[n] (NaN = none) -> every stage's float32[n] output."""
    interp = np.where(np.isnan(s_prev), raw, a.interp_gate * raw + (1.0 - a.interp_gate) * s_prev).astype(np.float32)
    left, right = a.shift_kernel
    shift = interp.copy()
    if left:
        shift[1:] += np.float32(left) * interp[:-1]
    if right:
        shift[:-1] += np.float32(right) * interp[1:]
    np.clip(shift, -1.0, 1.0, out=shift)
    final = shift if a.sharpen_gamma == 1.0 else (np.sign(shift) * np.abs(shift) ** np.float32(a.sharpen_gamma))
    return {"raw": raw, "interp": interp, "shift": shift, "final": final.astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# Stage 4 + 6: candidates with their structural verdicts.


@dataclass
class _Cands:
    node: np.ndarray  # int64 coarse node ids
    lod_from: np.ndarray  # int8
    lod_to: np.ndarray  # int8
    score: np.ndarray  # float32
    first: np.ndarray  # int64 first member position in the WC (collapses), the entry (expands)
    count: np.ndarray  # int64 members (entries removed when applied)
    outcome: np.ndarray  # int8, PENDING or a final verdict


def _runs(keys: np.ndarray):
    """np.unique(keys, return_index, return_inverse, return_counts) for non-decreasing keys, without a sort.

    Entries are sorted by start, so the parents of one level's entries never decrease.
    """
    if keys.size == 0:
        z = np.zeros(0, np.int64)
        return keys, z, z, z
    new = np.empty(keys.size, bool)
    new[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    first = np.flatnonzero(new)
    inv = np.cumsum(new) - 1
    cnt = np.diff(np.append(first, keys.size))
    return keys[first], first, inv, cnt


def _expand_candidates(wc: WorkingContext, s: np.ndarray, tau: float) -> _Cands:
    pos = np.flatnonzero(s > tau)
    lod = wc.lod[pos]
    out = np.where(lod == 0, ILLEGAL, PENDING).astype(np.int8)  # LOD0 cannot expand
    return _Cands(
        wc.node_id[pos], lod, np.maximum(lod.astype(np.int16) - 1, 0).astype(np.int8), s[pos], pos,
        np.ones(pos.shape[0], np.int64), out,
    )  # fmt: skip


def _collapse_candidates(wc: WorkingContext, s: np.ndarray, tau: float, p0: int) -> _Cands:
    bs, lod, index, start = wc.block_size, wc.lod, wc.index, wc.start
    parts = []
    # LOD0 -> LOD1: a one-member group, same span. Protected blocks never collapse.
    pos = np.flatnonzero((lod == 0) & (s < -tau))
    out0 = np.where(start[pos] >= p0, PROTECTED, PENDING).astype(np.int8)
    parts.append((nodes.node_id(1, index[pos]), 0, s[pos], pos, np.ones(pos.shape[0], np.int64), out0))
    # LOD l -> l+1: sibling groups by parent; the group collapses only whole.
    for level in range(1, wc.max_lod):
        m = np.flatnonzero(lod == level)
        if m.size == 0:
            continue
        uniq, first_k, inv, cnt = _runs(index[m] // bs)
        mean = (np.bincount(inv, weights=s[m]) / cnt).astype(np.float32)
        g = np.flatnonzero(mean < -tau)
        out = np.where(cnt[g] == bs, PENDING, ILLEGAL).astype(np.int8)
        parts.append((nodes.node_id(level + 1, uniq[g]), level, mean[g], m[first_k[g]], cnt[g].astype(np.int64), out))
    # max_lod cannot collapse: logged as illegal so the user sees the request.
    pos = np.flatnonzero((lod == wc.max_lod) & (s < -tau))
    parts.append((wc.node_id[pos], wc.max_lod, s[pos], pos, np.ones(pos.shape[0], np.int64),
                  np.full(pos.shape[0], ILLEGAL, np.int8)))  # fmt: skip
    node = np.concatenate([p[0] for p in parts])
    lod_from = np.concatenate([np.full(p[2].shape[0], p[1], np.int8) for p in parts])
    return _Cands(
        node, lod_from, (lod_from + 1).astype(np.int8), np.concatenate([p[2] for p in parts]).astype(np.float32),
        np.concatenate([p[3] for p in parts]), np.concatenate([p[4] for p in parts]),
        np.concatenate([p[5] for p in parts]),
    )  # fmt: skip


def _hysteresis(c: _Cands, direction: int, state: AllocatorState, a: AllocatorConfig, tau: float, step: int) -> None:
    """Stage 5, in place: reversals of recent edits get `cooldown` or `hysteresis`."""
    pend = c.outcome == PENDING
    if not pend.any():
        return
    last_dir, last_step = state.last_edit(c.node)
    age = step - last_step
    reversal = pend & (last_dir == -direction)
    cool = reversal & (age < a.cooldown_steps)
    hyst = reversal & ~cool & (age < a.hysteresis_steps) & (np.abs(c.score) <= tau + a.hysteresis_margin)
    c.outcome[cool] = COOLDOWN
    c.outcome[hyst] = HYSTERESIS


# ---------------------------------------------------------------------------------------------
# The plan.


def plan(wc: WorkingContext, raw_scores: np.ndarray, state: AllocatorState, knobs: PlanKnobs, step: int) -> Plan:
    """One allocator round over `wc` at refocus step `step`. Pure: inputs are never mutated."""
    a, bs, n = knobs.allocator, wc.block_size, wc.n
    raw = np.asarray(raw_scores, dtype=np.float32)
    if raw.shape != (n,):
        raise ValueError(f"raw_scores has shape {raw.shape}, expected ({n},) for this working context")
    if n and (not np.isfinite(raw).all() or np.abs(raw).max() > 1.0 + 1e-5):
        raise ValueError("raw_scores must be finite and within [-1, 1]")
    stages = score_pipeline(raw, _lookup(state.node, state.s_prev, wc.node_id, np.nan).astype(np.float32), a)
    s = stages["final"]
    p0 = protected_from(wc, knobs.protect_blocks)

    ex = _expand_candidates(wc, s, a.tau_expand)
    co = _collapse_candidates(wc, s, a.tau_collapse, p0)
    _hysteresis(ex, EXPAND_DIR, state, a, a.tau_expand, step)
    _hysteresis(co, COLLAPSE_DIR, state, a, a.tau_collapse, step)

    seq_ex = np.full(ex.node.shape[0], -1, np.int32)
    seq_co = np.full(co.node.shape[0], -1, np.int32)
    cost = wc.total_cost
    cap = a.max_edits - (state.edits_used if state.step == step else 0)
    used = _budget_round(wc, ex, co, seq_ex, seq_co, cost, knobs.w_max, cap, bs)
    cost += (bs - 1) * (int((ex.outcome == APPLIED).sum()) - int((co.outcome == APPLIED).sum()))

    voluntary = make_decisions({
        "node_id": np.concatenate([co.node, ex.node]),
        "lod_from": np.concatenate([co.lod_from, ex.lod_from]),
        "lod_to": np.concatenate([co.lod_to, ex.lod_to]),
        "action": np.concatenate([np.full(co.node.shape[0], COLLAPSE), np.full(ex.node.shape[0], EXPAND)]),
        "score": np.concatenate([co.score, ex.score]),
        "outcome": np.concatenate([co.outcome, ex.outcome]),
        "forced": np.zeros(co.node.shape[0] + ex.node.shape[0], bool),
        "seq": np.concatenate([seq_co, seq_ex]),
    })  # fmt: skip
    cur = apply(wc, voluntary)
    decisions = voluntary
    if cost > knobs.w_max:
        decisions, cur = _restore_budget(wc, cur, s, voluntary, co, state, knobs, step, cost, used)

    new_state = _update_state(state, wc, cur, stages["interp"], decisions, step, used, a)
    return Plan(decisions, new_state, stages, cur)


EXPAND_DIR, COLLAPSE_DIR = +1, -1


def _budget_round(wc, ex: _Cands, co: _Cands, seq_ex, seq_co, cost: int, w_max: int, cap: int, bs: int) -> int:
    """Stage 7-8 in place: alternate worst collapse / best expansion. Returns edits applied.

    Only up to `cap` edits are tried one by one (re-checking that their entries are still there);
    every candidate left over is labelled in one vectorised stroke.
    """
    start = wc.start
    e_idx = np.flatnonzero(ex.outcome == PENDING)
    e_idx = e_idx[np.lexsort((start[ex.first[e_idx]], -ex.score[e_idx]))]  # best first, then oldest
    c_idx = np.flatnonzero(co.outcome == PENDING)
    c_idx = c_idx[np.lexsort((start[co.first[c_idx]], co.score[c_idx]))]  # worst first, then oldest
    gone = np.zeros(wc.n, bool)
    ei = ci = applied = 0
    while applied < cap and (ci < c_idx.size or ei < e_idx.size):
        if ci < c_idx.size:
            k = c_idx[ci]
            ci += 1
            f, cnt = co.first[k], co.count[k]
            if gone[f : f + cnt].any():
                co.outcome[k] = ILLEGAL  # an earlier edit this round already took a member
                continue
            gone[f : f + cnt] = True
            co.outcome[k], seq_co[k] = APPLIED, applied
            applied += 1
            cost -= bs - 1
            if applied >= cap:
                break
        if ei < e_idx.size:
            k = e_idx[ei]
            if gone[ex.first[k]]:
                ex.outcome[k] = ILLEGAL
                ei += 1
            elif cost + (bs - 1) <= w_max:
                gone[ex.first[k]] = True
                ex.outcome[k], seq_ex[k] = APPLIED, applied
                applied += 1
                cost += bs - 1
                ei += 1
            elif ci >= c_idx.size:
                # Every expansion costs the same, so if the best does not fit, none does.
                rest = e_idx[ei:]
                ex.outcome[rest] = np.where(gone[ex.first[rest]], ILLEGAL, BUDGET)
                ei = e_idx.size
    ex.outcome[e_idx[ei:]] = EDIT_CAP
    co.outcome[c_idx[ci:]] = EDIT_CAP
    return applied


def _collapsible(cur: WorkingContext, scores: np.ndarray, p0: int):
    """Every legal, unprotected collapse on `cur`: (coarse ids, group scores, lod_from)."""
    bs, lod, index = cur.block_size, cur.lod, cur.index
    m0 = np.flatnonzero((lod == 0) & (cur.start < p0))
    ids, sc, lf = [nodes.node_id(1, index[m0])], [scores[m0]], [np.zeros(m0.size, np.int8)]
    for level in range(1, cur.max_lod):
        m = np.flatnonzero(lod == level)
        if m.size == 0:
            continue
        uniq, _, inv, cnt = _runs(index[m] // bs)
        whole = cnt == bs
        ids.append(nodes.node_id(level + 1, uniq[whole]))
        sc.append((np.bincount(inv, weights=scores[m]) / cnt)[whole])
        lf.append(np.full(int(whole.sum()), level, np.int8))
    return np.concatenate(ids), np.concatenate(sc).astype(np.float32), np.concatenate(lf)


def _scores_on(cur: WorkingContext, wc: WorkingContext, s: np.ndarray, extra: dict[int, float]) -> np.ndarray:
    """Scores for the entries of `cur`: the input WC's final score, else `extra` (new nodes), else 0."""
    ids = wc.node_id
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], cur.node_id)
    pos = np.minimum(pos, max(ids.size - 1, 0))
    hit = ids.size > 0
    found = (ids[order][pos] == cur.node_id) if hit else np.zeros(cur.n, bool)
    out = np.where(found, s[order][pos] if hit else 0.0, 0.0).astype(np.float32)
    for k in np.flatnonzero(~found):
        out[k] = extra.get(int(cur.node_id[k]), 0.0)
    return out


def _restore_budget(wc, cur, s, voluntary: Decisions, co: _Cands, state, knobs: PlanKnobs, step, cost, used):
    """Forced collapses (lowest score first, recent expansions last), then eviction of the oldest.

    A forced collapse that a voluntary candidate row already names (refused for cooldown,
    hysteresis or the edit cap) turns that row into `applied, forced`; others get a new row.
    """
    bs, a = wc.block_size, knobs.allocator
    p0 = protected_from(wc, knobs.protect_blocks)
    outcome, forced, seq_col = voluntary.outcome.copy(), voluntary.forced.copy(), voluntary.seq.copy()
    pending = np.flatnonzero(co.outcome != APPLIED)  # collapse rows come first in `voluntary`
    row_of = dict(zip(co.node[pending].tolist(), pending.tolist(), strict=True))
    new_rows: list[tuple] = []  # (node_id, lod_from, lod_to, action, score, seq)
    extra: dict[int, float] = {}
    seq = used
    while cost > knobs.w_max:
        ids, sc, lf = _collapsible(cur, _scores_on(cur, wc, s, extra), p0)
        if ids.size == 0:
            break
        lod, idx = nodes.node_lod(ids), nodes.node_index(ids)
        last_dir, last_step = state.last_edit(ids)
        recent = (last_dir == EXPAND_DIR) & (step - last_step < a.cooldown_steps)
        starts = nodes.node_start(lod, idx, bs)
        order = np.lexsort((starts, sc, recent))[: math.ceil((cost - knobs.w_max) / (bs - 1))]
        batch = []
        for k in order.tolist():
            nid = int(ids[k])
            extra[nid] = float(sc[k])
            r = row_of.pop(nid, None)
            if r is None:
                new_rows.append((nid, int(lf[k]), int(lf[k]) + 1, COLLAPSE, float(sc[k]), seq))
            else:
                outcome[r], forced[r], seq_col[r] = APPLIED, True, seq
            batch.append((nid, COLLAPSE))
            seq += 1
            cost -= bs - 1
        cur = apply(cur, _applied_rows(batch))
    while cost > knobs.w_max:
        if cur.n == 0 or cur.lod[0] != cur.max_lod:
            raise AllocatorError(
                f"cannot meet w_max={knobs.w_max}: cost {cost} after every collapse, and the oldest entry is not a "
                f"top-level gist"
            )
        nid = int(cur.node_id[0])
        new_rows.append((nid, cur.max_lod, EVICTED_LOD, EVICT, float(_scores_on(cur, wc, s, extra)[0]), seq))
        cur = apply(cur, _applied_rows([(nid, EVICT)]))
        seq += 1
        cost -= 1
    head = Decisions(voluntary.node_id, voluntary.lod_from, voluntary.lod_to, voluntary.action, voluntary.score,
                     outcome, forced, seq_col)  # fmt: skip
    if not new_rows:
        return head, cur
    cols = list(zip(*new_rows, strict=True))
    k = len(new_rows)
    tail = make_decisions({
        "node_id": cols[0], "lod_from": cols[1], "lod_to": cols[2], "action": cols[3], "score": cols[4],
        "outcome": [APPLIED] * k, "forced": [True] * k, "seq": cols[5],
    })  # fmt: skip
    return Decisions.concat([head, tail]), cur


def _applied_rows(edits: list[tuple[int, int]]) -> Decisions:
    """A minimal decision table of applied edits (node, action) in order, for `apply`."""
    k = len(edits)
    return make_decisions({
        "node_id": [e[0] for e in edits], "lod_from": [0] * k, "lod_to": [0] * k, "action": [e[1] for e in edits],
        "score": [0.0] * k, "outcome": [APPLIED] * k, "forced": [True] * k, "seq": list(range(k)),
    })  # fmt: skip


def _update_state(state: AllocatorState, wc, cur, interp, d: Decisions, step: int, used: int, a) -> AllocatorState:
    # Entries of the new WC: keep the score and entry step of those that were scored this round.
    order = np.argsort(wc.node_id, kind="stable")
    scored_ids, scored_s = wc.node_id[order], interp[order]
    node = np.sort(cur.node_id)
    s_prev = _lookup(scored_ids, scored_s, node, np.nan).astype(np.float32)
    was_entry = ~np.isnan(s_prev)
    prev_entered = _lookup(state.node, state.entered, node, -1)
    entered = np.where(was_entry & (prev_entered >= 0), prev_entered, step).astype(np.int32)
    # Edits: this round's applied edits overwrite older ones of the same node; forget what is too
    # old to matter to cooldown or hysteresis any more.
    edited = d.applied & (d.action != EVICT)
    new_node = d.node_id[edited]
    new_dir = np.where(d.action[edited] == EXPAND, EXPAND_DIR, COLLAPSE_DIR).astype(np.int8)
    horizon = max(a.cooldown_steps, a.hysteresis_steps)
    keep = (step - state.edit_step < horizon) & ~np.isin(state.edit_node, new_node)
    e_node = np.concatenate([state.edit_node[keep], new_node])
    e_step = np.concatenate([state.edit_step[keep], np.full(new_node.shape[0], step, np.int32)])
    e_dir = np.concatenate([state.edit_dir[keep], new_dir])
    o = np.argsort(e_node, kind="stable")
    used_before = state.edits_used if state.step == step else 0
    return AllocatorState(node, s_prev, entered, e_node[o], e_step[o], e_dir[o], step, used_before + used)
