"""Fast replay: the optimised loop, column-subset ArrowSink, metrics shortcuts and loading give exactly
the results of the implementations they replaced (kept here verbatim as references)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from engine import nodes
from engine.allocator import AllocatorState, PlanKnobs
from engine.config import RunConfig, apply_overrides
from engine.decisions import ACTIONS, EXPAND, OUTCOMES
from engine.events import (
    DecisionsRecorded,
    EntriesRecorded,
    Event,
    NodesAdded,
    RunFinished,
    RunStarted,
    Sink,
    StepRecorded,
)
from engine.planner import plan
from engine.replay import Recording, ReplayStats, replay_fast
from engine.working_context import WorkingContext, check_invariants
from studio.replay import _sorted_by_step_iteration, load_recording
from telemetry import metrics
from telemetry.memory import LAB_ENTRIES, ArrowSink
from telemetry.metrics import _RUNS, _applied, _col, _first_iteration, _rows_in
from telemetry.reader import Run
from telemetry.schema import SCHEMAS, columns_to_arrays
from telemetry.writer import _columns

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample.txt"
TABLES = ("steps", "decisions", "entries")
_CODES = {"action": pa.array(ACTIONS, pa.string()), "outcome": pa.array(OUTCOMES, pa.string())}
KNOB_SETS = [
    [],
    ["allocator.cooldown_steps=4", "allocator.hysteresis_margin=0.2", "allocator.sharpen_gamma=2.0",
     "allocator.tau_expand=0.3"],
    ["wc.w_max=300", "allocator.iterations=1"],
    ["allocator.iterations=3", "allocator.interp_gate=0.5", "allocator.max_edits=8"],
    ["allocator.shift_kernel=(0.25,0.25)", "allocator.tau_collapse=0.1", "wc.w_max=520"],
]  # fmt: skip


# ----------------------------------------------------------------------------- references (verbatim)


class _RefLatest:
    """Latest recorded raw score per node and the step it was recorded at, dense per level.

    Replay only (it grows with the history, which the engine's own state never does). Updating it
    with a step's rows before looking up makes "recorded at this step" and "latest earlier score"
    one gather: the stamp says which it was.
    """

    def __init__(self, max_lod: int):
        self.v = [np.full(1024, np.nan, np.float32) for _ in range(max_lod + 1)]
        self.at = [np.full(1024, -1, np.int32) for _ in range(max_lod + 1)]

    def update(self, lod: np.ndarray, idx: np.ndarray, raw: np.ndarray, stamp: int) -> None:
        for level in range(len(self.v)):
            m = lod == level
            if not m.any():
                continue
            i = idx[m]
            need = int(i.max()) + 1
            if need > self.v[level].size:
                size = max(need, 2 * self.v[level].size)
                self.v[level] = np.concatenate([self.v[level], np.full(size - self.v[level].size, np.nan, np.float32)])
                self.at[level] = np.concatenate([self.at[level], np.full(size - self.at[level].size, -1, np.int32)])
            self.v[level][i] = raw[m]
            self.at[level][i] = stamp

    def get(self, lod: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score float32, stamp int32 of its recording) per node; (NaN, -1) if never recorded."""
        out, at = np.full(lod.shape[0], np.nan, np.float32), np.full(lod.shape[0], -1, np.int32)
        for level in range(len(self.v)):
            m = (lod == level) & (idx < self.v[level].size)
            out[m], at[m] = self.v[level][idx[m]], self.at[level][idx[m]]
        return out, at


def _ref_fallback(lod: np.ndarray, idx: np.ndarray, bs: int, max_lod: int, latest: _RefLatest) -> np.ndarray:
    """Scores for nodes never recorded: their parent's latest score, else their children's mean, else 0."""
    s = np.full(lod.shape[0], np.nan, np.float32)
    up = lod < max_lod
    if up.any():
        s[up] = latest.get(lod[up] + 1, nodes.parent_index(lod[up], idx[up], bs))[0]
    down = np.flatnonzero(np.isnan(s) & (lod > 0))
    if down.size:  # children as one [k, bs] gather; a LOD1 node's only child is its own block at LOD0
        lv, ix = lod[down], idx[down]
        kids = np.where(lv[:, None] == 1, ix[:, None], ix[:, None] * bs + np.arange(bs))  # [k, bs]
        vals = latest.get(np.repeat(lv - 1, bs), kids.reshape(-1))[0].reshape(-1, bs)  # [k, bs]
        seen = ~np.isnan(vals)
        total = np.where(seen, vals, 0.0).sum(axis=1)
        count = seen.sum(axis=1)
        s[down] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return np.nan_to_num(s, nan=0.0)


def ref_replay_fast(rec: Recording, cfg: RunConfig, sink: Sink, *, record_entries: bool = True) -> ReplayStats:
    """The loop as it was before the fast-replay work (verbatim): the reference for bit-identical output."""
    knobs, stats = PlanKnobs.from_config(cfg), ReplayStats()
    wc = WorkingContext.empty(cfg.tree.block_size, cfg.tree.max_lod)
    state, latest = AllocatorState.initial(cfg.tree.max_lod), _RefLatest(cfg.tree.max_lod)
    bounds = np.searchsorted(rec.step, np.arange(rec.tokens_seen.shape[0] + 1))
    for t, tokens in enumerate(rec.tokens_seen.tolist()):
        wc = wc.advance(tokens)
        lo, hi = int(bounds[t]), int(bounds[t + 1])
        its = rec.iteration[lo:hi]
        n_start, applied, forced, t_al = wc.n, 0, 0, 0.0
        for it in range(cfg.allocator.iterations):
            # The recorded round with the same number (or the last recorded one) is this round's score source.
            have = its[its <= it]
            sel = np.flatnonzero(its == (have.max() if have.size else -1)) + lo
            rec_ids = rec.node_id[sel]
            stamp = t * 16 + it  # iterations <= 16: a score from an earlier round is not exact either
            latest.update(nodes.node_lod(rec_ids), nodes.node_index(rec_ids), rec.raw_score[sel], stamp)
            cur = wc.node_id
            raw, at = latest.get(wc.lod, wc.index)
            miss = at != stamp
            if miss.any():  # not scored at this step: latest earlier score, else parent/children, else 0
                stats.approximate_lookups += int(miss.sum())
                never = miss & np.isnan(raw)
                if never.any():
                    raw[never] = _ref_fallback(wc.lod[never], wc.index[never], wc.block_size, wc.max_lod, latest)
            t0 = time.perf_counter()
            p = plan(wc, raw, state, knobs, t)
            t_al += (time.perf_counter() - t0) * 1000.0
            if record_entries:
                st = p.stages
                sink.emit(EntriesRecorded(t, it, cur, wc.lod, wc.start, wc.end, wc.cost,
                                          st["raw"], st["interp"], st["shift"], st["final"]))  # fmt: skip
            sink.emit(DecisionsRecorded(t, it, p.decisions))
            applied += int(p.decisions.applied.sum())
            forced += int((p.decisions.applied & p.decisions.forced).sum())
            wc, state = p.wc, p.state
        if cfg.session.check_invariants:
            check_invariants(wc, knobs.w_max, knobs.protect_blocks)
        sink.emit(StepRecorded(t, tokens, n_start, wc.n, wc.total_cost, knobs.w_max, wc.evicted_upto, applied,
                               forced, None, None, None, 0.0, 0.0, t_al, 0.0))  # fmt: skip
        stats.steps += 1
        stats.allocator_ms += t_al
    return stats


def _ref_positions(steps: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Index of each `step` in the sorted array `steps`, clipped to its bounds (check with `steps[idx] == step`).

    Steps are usually a contiguous range (an entries cadence of 1): then the index is a subtraction,
    not a binary search per row (the difference is a quarter of a second on 2M entry rows)."""
    if steps.size > 1 and int(steps[-1]) - int(steps[0]) + 1 == steps.size and np.all(np.diff(steps) == 1):
        idx = step - steps[0]
        if step.size and steps[0] <= step.min() and step.max() <= steps[-1]:
            return idx  # all in range (the usual case): two reductions are cheaper than a clip's copy
    else:
        idx = np.searchsorted(steps, step)
    return np.clip(idx, 0, steps.size - 1)


def _ref_per_step(step: np.ndarray, values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Sum `values` by `step` onto the sorted array `steps` (0 where a step has none)."""
    if step.size == 0 or steps.size == 0:
        return np.zeros(steps.shape[0], np.float64)
    idx = _ref_positions(steps, step)
    ok = steps[idx] == step
    if not ok.all():
        idx, values = idx[ok], values[ok]
    return np.bincount(idx, weights=values, minlength=steps.size).astype(np.float64)


def _ref_locality(entries: pa.Table, iteration: int = 0) -> pa.Table:
    """Per step: `1 - (runs - 1) / max(1, detail_blocks - 1)`; runs = maximal position-contiguous runs
    of LOD0 entries. Null at steps with no LOD0 entry. 1 = all detail in one contiguous region."""
    e = _first_iteration(entries, iteration)
    step, start, end, lod = (_col(e, c).astype(np.int64, copy=False) for c in ("step", "start", "end", "lod"))
    if np.any(np.diff(step) < 0) or np.any((np.diff(start) <= 0) & (np.diff(step) == 0)):
        order = np.lexsort((start, step))  # recorded order is already (step, start): sort only if not
        step, start, end, lod = step[order], start[order], end[order], lod[order]
    is0 = lod == 0
    cont = np.zeros(step.size, bool)
    cont[1:] = is0[1:] & is0[:-1] & (step[1:] == step[:-1]) & (start[1:] == end[:-1])
    steps = np.unique(step)
    detail = _ref_per_step(step, is0.astype(np.float64), steps)
    runs = _ref_per_step(step, (is0 & ~cont).astype(np.float64), steps)
    loc = 1.0 - (runs - 1.0) / np.maximum(1.0, detail - 1.0)
    mask = detail == 0
    return pa.table(
        {
            "step": steps.astype(np.int32),
            "detail_blocks": detail.astype(np.int32),
            "runs": runs.astype(np.int32),
            "locality": pa.array(loc, mask=mask),
        }
    )


def _ref_residency_runs(entries: pa.Table, iteration: int = 0) -> pa.Table:
    """Each stretch of recorded steps during which a node stays an entry (so keeps its LOD).

    `length` = first step it is seen missing - first step (so with a cadence of 1, the number of
    steps); a run still present at the last recorded step is `open`, its length counted to there.
    """
    e = _first_iteration(entries, iteration)
    step, node = _col(e, "step").astype(np.int64, copy=False), _col(e, "node_id").astype(np.int64, copy=False)
    lod = _col(e, "lod").astype(np.int8)
    if step.size == 0:
        return _RUNS.empty_table()
    recorded = np.unique(step)
    rank = _ref_positions(recorded, step)
    lo, span = int(node.min()), int(node.max()) - int(node.min()) + 1
    if span * recorded.size < 2**62:  # one packed int64 key sorts several times faster than a two-key lexsort
        order = np.argsort((node - lo) * recorded.size + rank)  # keys are unique: stability is moot
    else:
        order = np.lexsort((rank, node))
    node, rank, lod = node[order], rank[order], lod[order]
    new = np.ones(node.size, bool)
    new[1:] = (node[1:] != node[:-1]) | (rank[1:] != rank[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], node.size) - 1
    is_open = rank[last] == recorded.size - 1
    after = np.where(is_open, recorded[rank[last]] + 1, recorded[np.minimum(rank[last] + 1, recorded.size - 1)])
    length = after - recorded[rank[first]]
    return pa.Table.from_arrays([node[first], lod[first], recorded[rank[first]], length, is_open], schema=_RUNS)


def _ref_coherence(entries: pa.Table, decisions: pa.Table, tau_expand: float) -> pa.Table:
    """Per step: of the entries scored above `tau_expand` at the step's start (gists only: LOD0 has no
    finer detail), the share that end the step finer (their node's last applied edit that step was an
    expand, not undone by a later collapse)."""
    e = _first_iteration(entries)
    e = e.filter(pc.and_(pc.greater(e.column("score"), tau_expand), pc.greater(e.column("lod"), 0)))
    e_step, e_node = _col(e, "step").astype(np.int64, copy=False), _col(e, "node_id").astype(np.int64, copy=False)
    a = _applied(decisions, drop_evict=True)
    step, node, action = a["step"].astype(np.int64, copy=False), a["node_id"], a["action"]
    order = np.lexsort((np.arange(step.size), node, step))  # stable: application order within a node
    step, node, action = step[order], node[order], action[order]
    last = np.ones(step.size, bool)
    last[:-1] = (step[1:] != step[:-1]) | (node[1:] != node[:-1])
    fin = last & (action == EXPAND)
    finer = _rows_in([e_step, e_node], [step[fin], node[fin]])
    steps = np.unique(e_step)
    cand = _ref_per_step(e_step, np.ones(e_step.size), steps)
    hit = _ref_per_step(e_step, finer.astype(np.float64), steps)
    return pa.table(
        {
            "step": steps.astype(np.int32),
            "candidates": cand.astype(np.int32),
            "finer": hit.astype(np.int32),
            "coherence": hit / np.maximum(cand, 1.0),
        }
    )


class _RefArrowSink:
    """ArrowSink as it was before the column subset and typed scalars (verbatim)."""

    def __init__(self, tables: tuple[str, ...] = TABLES):
        self._cols: dict[str, dict[str, list]] = {t: {c: [] for c in SCHEMAS[t].names} for t in tables}

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted | RunFinished | NodesAdded):
            return
        if isinstance(event, DecisionsRecorded):  # keep the codes; names are looked up once, at the end
            if "decisions" not in self._cols:
                return
            d, cols, n = event.decisions, self._cols["decisions"], len(event.decisions)
            for name in ("node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq"):
                cols[name].append(getattr(d, name))
            cols["step"].append(np.full(n, event.step, np.int32))
            cols["iteration"].append(np.full(n, event.iteration, np.int16))
            return
        table, cols = _columns(event)
        if table not in self._cols:
            return
        n = max((len(v) for v in cols.values() if isinstance(v, np.ndarray | list)), default=1)
        for name in SCHEMAS[table].names:
            v = cols.get(name)
            self._cols[table][name].append(v if isinstance(v, np.ndarray | list) else np.full(n, v, dtype=object))

    def table(self, name: str) -> pa.Table:
        """Everything collected for `name` as one table, in emission (step) order."""
        cols = {}
        for field in SCHEMAS[name]:
            parts = self._cols[name][field.name]
            v = np.concatenate(parts) if parts else np.zeros(0)
            if field.name in _CODES and name == "decisions":
                cols[field.name] = _CODES[field.name].take(pa.array(v.astype(np.int8), pa.int8()))
            else:
                cols[field.name] = v
        arrays, _ = columns_to_arrays(name, cols)
        return pa.Table.from_arrays(arrays, schema=SCHEMAS[name])


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A real recording with the random scorer (it thrashes), two scorer rounds per step."""
    out = tmp_path_factory.mktemp("runs") / "rec"
    cmd = [sys.executable, "-m", "engine", "record", "--quiet",
           "--model", "tiny", "--input", str(SAMPLE), "--out", str(out),
           "--scorer", "random", "--set", "wc.w_max=400", "--set", "allocator.iterations=2",
           "--set", "session.compute_nll=false"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def rec(recorded) -> Recording:
    return load_recording(recorded)


def _round0(rec: Recording) -> Recording:
    """The same recording with only its first scorer round (the usual one-round case)."""
    m = rec.iteration == 0
    return replace(rec, step=rec.step[m], iteration=rec.iteration[m], node_id=rec.node_id[m],
                   raw_score=rec.raw_score[m])  # fmt: skip


def _tables(fn, rec: Recording, cfg: RunConfig, **kw) -> tuple[dict[str, pa.Table], ReplayStats]:
    sink = ArrowSink(TABLES, **kw)
    stats = fn(rec, cfg, sink)
    out = {t: sink.table(t) for t in TABLES}
    out["steps"] = out["steps"].drop(["t_allocator_ms"])  # a timing
    return out, stats


# --------------------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("knobs", KNOB_SETS, ids=range(len(KNOB_SETS)))
@pytest.mark.parametrize("rounds", ["recorded", "round0"])
def test_optimised_loop_is_bit_identical_to_the_reference(rec, knobs, rounds):
    r = rec if rounds == "recorded" else _round0(rec)
    cfg = apply_overrides(r.config, knobs)
    new, s_new = _tables(replay_fast, r, cfg)
    ref, s_ref = _tables(ref_replay_fast, r, cfg)
    assert s_new.steps == s_ref.steps == r.tokens_seen.size
    assert s_new.approximate_lookups == s_ref.approximate_lookups
    for t in TABLES:
        assert new[t].num_rows == ref[t].num_rows > 0, t
        assert new[t].equals(ref[t]), t
    if knobs and rounds == "recorded":
        assert s_new.approximate  # changed knobs lead to entries the recording never scored


def test_recorded_knobs_reproduce_the_recorded_decisions(recorded, rec):
    new, stats = _tables(replay_fast, rec, rec.config)
    assert not stats.approximate
    got = new["decisions"]
    want = Run(recorded).table("decisions", got.column_names)
    assert got.num_rows == want.num_rows > 0
    for c in got.column_names:
        assert got[c].to_pylist() == want[c].to_pylist(), c


def test_fallback_when_scores_are_missing(rec):
    """Drop half the recorded rows: many lookups fall back to earlier, parent or children scores."""
    keep = np.random.default_rng(0).random(rec.step.size) < 0.5
    r = replace(rec, step=rec.step[keep], iteration=rec.iteration[keep], node_id=rec.node_id[keep],
                raw_score=rec.raw_score[keep])  # fmt: skip
    cfg = apply_overrides(r.config, KNOB_SETS[1])
    new, s_new = _tables(replay_fast, r, cfg)
    ref, s_ref = _tables(ref_replay_fast, r, cfg)
    assert s_new.approximate_lookups == s_ref.approximate_lookups > 0
    for t in TABLES:
        assert new[t].equals(ref[t]), t


# ---------------------------------------------------------------------------------- ArrowSink subset


def test_column_subset_sink_keeps_the_same_values(rec):
    cfg = apply_overrides(rec.config, KNOB_SETS[1])
    full, _ = _tables(replay_fast, rec, cfg)
    lab, _ = _tables(replay_fast, rec, cfg, columns={"entries": LAB_ENTRIES, "decisions": ("step", "node_id")})
    assert lab["entries"].column_names == list(LAB_ENTRIES)
    assert lab["entries"].equals(full["entries"].select(list(LAB_ENTRIES)))
    assert lab["decisions"].equals(full["decisions"].select(["step", "node_id"]))
    assert lab["steps"].equals(full["steps"])  # tables not named keep every column
    assert full["entries"].num_columns == 11  # the default: all columns


class _Tee:
    def __init__(self, *sinks):
        self.sinks = sinks

    def emit(self, event) -> None:
        for s in self.sinks:
            s.emit(event)


def test_sink_tables_match_the_reference_sink(rec):
    ref, new = _RefArrowSink(), ArrowSink(TABLES)
    replay_fast(rec, apply_overrides(rec.config, KNOB_SETS[1]), _Tee(ref, new))
    for t in TABLES:
        assert new.table(t).equals(ref.table(t)), t


def test_column_subset_sink_checks_names_and_values():
    with pytest.raises(ValueError, match="no column 'nope'"):
        ArrowSink(("entries",), columns={"entries": ("step", "nope")})
    sink = ArrowSink(("entries",), columns={"entries": ("step", "lod")})
    z = np.zeros(2)
    sink.emit(EntriesRecorded(2**40, 0, z.astype(np.int64), np.zeros(2, np.int8), z, z, z, z, z, z, z))
    with pytest.raises(Exception, match="step"):  # does not fit int32: still refused
        sink.table("entries")


def test_scalar_columns_convert_as_before():
    sink = ArrowSink(("steps",))
    for t in range(3):
        sink.emit(StepRecorded(t, 32 * t, 1, 2, 3, 4, 0, 1, 0, None if t else 1.5, None, None, 0.0, 0.1, 0.2, 0.3))
    s = sink.table("steps")
    assert s["step"].to_pylist() == [0, 1, 2] and s["nll"].to_pylist() == [1.5, None, None]
    assert s["tokens_seen"].type == pa.int64() and s["t_allocator_ms"].to_pylist()[0] == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------ metrics


@pytest.fixture(scope="module")
def lab_tables(rec):
    cfg = apply_overrides(rec.config, KNOB_SETS[1])
    tables, _ = _tables(replay_fast, rec, cfg, columns={"entries": LAB_ENTRIES})
    return tables, cfg


def _shuffled(t: pa.Table, seed: int = 0) -> pa.Table:
    return t.take(np.random.default_rng(seed).permutation(t.num_rows))


def test_metrics_match_the_reference_implementations(lab_tables):
    t, cfg = lab_tables
    ent, dec, tau = t["entries"], t["decisions"], cfg.allocator.tau_expand
    for e in (ent, _shuffled(ent), ent.slice(0, ent.num_rows // 3)):
        assert metrics.locality(e).equals(_ref_locality(e))
        assert metrics.residency_runs(e).equals(_ref_residency_runs(e))
        assert metrics.coherence(e, dec, tau).equals(_ref_coherence(e, dec, tau))
    assert metrics.residency(ent)["runs"] > 0


def test_residency_runs_shortcut_falls_back_exactly():
    """Large node ids (no 16-bit key) and repeated (node, step) rows take the general sort."""
    step = np.repeat(np.arange(6, dtype=np.int32), 3)
    big = np.array([5, 1 << 41, (1 << 40) | 70000], np.int64)
    for node in (np.tile(big, 6), np.tile(np.array([3, 3, 4], np.int64), 6)):
        e = pa.table({"step": step, "iteration": np.zeros(step.size, np.int16), "node_id": node,
                      "lod": nodes.node_lod(node)})  # fmt: skip
        got, want = metrics.residency_runs(e), _ref_residency_runs(e)
        assert got.num_rows == want.num_rows
        assert got.select(["node_id", "first_step", "length", "open"]).equals(
            want.select(["node_id", "first_step", "length", "open"])
        )


def test_per_step_sums_match(lab_tables):
    ent = lab_tables[0]["entries"]
    step = _col(ent, "step").astype(np.int64)
    vals = (_col(ent, "lod") == 0).astype(np.float64)
    for steps in (np.unique(step), np.unique(step)[::2], np.unique(step)[5:-5], np.arange(0, 10_000)):
        assert np.array_equal(metrics._per_step(step, vals, steps), _ref_per_step(step, vals, steps))
    assert np.array_equal(metrics._unique(step[::-1].copy()), np.unique(step))


# ------------------------------------------------------------------------------------------ loading


def test_load_recording_is_in_step_iteration_order(recorded, rec):
    e = Run(recorded).table("entries", ["step", "iteration", "node_id", "raw_score"])
    step, it = e["step"].to_numpy().astype(np.int32), e["iteration"].to_numpy().astype(np.int16)
    o = np.lexsort((it, step))
    assert np.array_equal(rec.step, step[o]) and np.array_equal(rec.iteration, it[o])
    assert np.array_equal(rec.node_id, e["node_id"].to_numpy()[o])
    assert np.array_equal(rec.raw_score, e["raw_score"].to_numpy()[o])
    assert _sorted_by_step_iteration(rec.step, rec.iteration)
    assert not _sorted_by_step_iteration(np.array([0, 1, 1]), np.array([0, 1, 0]))
    assert not _sorted_by_step_iteration(np.array([1, 0]), np.array([0, 0]))
