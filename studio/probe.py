"""The probe: does the scorer's ranking match the truth at one recorded step?

`probe_step` rebuilds the run's state at step t exactly (`studio.rebuild.rebuild_step`: its document
re-tokenised and proved against the recording; the gist tree over the tokens read by then, with the
run's own model and GistNet; the WC the step's first scorer round saw, from the entries table), then
measures, for the top-k candidate entries, the counterfactual LensNet is trained on
(`studio.train.lens_labels`): the base model's NLL of the next `horizon` tokens after the WC with that
one entry moved one level (a LOD0 block collapsed to its gist, a gist expanded), against the NLL after
the unedited WC. `utility` is LensNet's label, the value of the finer level per position it costs,
`(NLL(coarser) - NLL(finer)) / (block_size - 1)`; positive = detail helps. Candidates are the
unprotected entries the allocator may edit: half with the highest recorded score, half with the
lowest (the expand end and the collapse end of the ranking).

Results: one Parquet file per step (`write_probe`), with the settings, the rank correlation and the
seconds in its metadata. `python -m engine probe RUN --step T --out FILE` runs it (the app starts that
in the background); `progress` is called after each stage so that a caller can report it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract.config import protected_blocks
from studio.rebuild import StepError, rebuild_step, run_config
from studio.run_text import TextError
from telemetry.reader import Run

META = b"mcs.probe"
EDITS = ("collapse", "expand")  # one_level_edit: LOD0 collapses, a gist expands


class ProbeError(StepError):
    """The step cannot be probed; one line naming the run and the reason."""


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Rank correlation of two float arrays (average ranks for ties); None under 3 finite pairs or
    when either side is constant."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    rx, ry = _ranks(x[ok]), _ranks(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """0-based ranks of `v`, ties sharing their mean rank."""
    order = np.argsort(v, kind="stable")
    sv, r = v[order], np.empty(v.size, np.float64)
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] == sv[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return r


def _pick(score: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """Up to k entries of `pool`: the ceil(k/2) highest-scored and the rest lowest-scored, by position."""
    order = pool[np.argsort(-score[pool], kind="stable")]
    top = order[: (k + 1) // 2]
    bottom = order[top.size :][::-1][: k - top.size]  # the lowest of the rest
    return np.sort(np.concatenate([top, bottom])).astype(np.int64)


def probe_step(run_dir: str | Path, step: int, *, top_k: int = 16, horizon: int = 32, device: str = "auto",
               progress: Callable[[str], None] = lambda s: None) -> pa.Table:  # fmt: skip
    """One row per probed entry (see the module doc). Raises ProbeError (a StepError), TextError (the
    document cannot be rebuilt) or `engine.model_loader.ModelLoadError` (the run's model is missing)."""
    from engine.working_context import protected_from
    from studio.train.lens_labels import one_level_edit
    from studio.train.wc_nll import wc_scores

    if top_k < 1 or horizon < 1:
        raise ProbeError(f"top_k and horizon must be >= 1, got {top_k} and {horizon}")
    run = Run(run_dir)
    cfg = run_config(run)
    last = run.table("steps", columns=["tokens_seen"], where=f"step = {int(step)}")
    if last.num_rows and int(last["tokens_seen"][0].as_py()) >= int(run.manifest.get("tokens") or 0):
        raise ProbeError(f"{run.path}: step {step} is the last one: there are no next tokens to predict")
    t0 = time.perf_counter()
    r = rebuild_step(run_dir, step, device=device, progress=progress)
    model, tree, wc, seen = r.model, r.session.tree, r.wc, r.seen
    targets = r.tokens[seen : seen + horizon]
    ids, raw, score = wc.node_id, r.raw, r.score
    bs = cfg.tree.block_size
    pool = np.flatnonzero(wc.end <= protected_from(wc, protected_blocks(cfg.tree, cfg.wc)))
    if pool.size == 0:
        raise ProbeError(f"{run.path}: at step {step} every entry is protected: nothing the allocator could edit")
    chosen = _pick(score, pool, top_k)
    edits = [one_level_edit(wc, int(i)) for i in chosen]
    progress(f"measuring {len(edits)} edits")
    res = wc_scores(model, tree, [wc] + [w for w, _ in edits], targets, cfg.wc.position_mode)
    nll = res.nll.mean(axis=1, dtype=np.float64)  # [1 + k]
    finer = np.array([f for _, f in edits])
    coarse = np.where(finer, nll[0], nll[1:])
    fine = np.where(finer, nll[1:], nll[0])
    utility = (coarse - fine) / float(bs - 1)
    lod = wc.lod[chosen].astype(np.int8)
    table = pa.table({
        "step": pa.array(np.full(chosen.size, step, np.int32)),
        "node_id": pa.array(ids[chosen]),
        "lod": pa.array(lod),
        "start": pa.array(wc.start[chosen]),
        "end": pa.array(wc.end[chosen]),
        "edit": pa.array([EDITS[int(f)] for f in finer], pa.string()),
        "raw_score": pa.array(raw[chosen].astype(np.float32)),
        "score": pa.array(score[chosen].astype(np.float32)),
        "nll_base": pa.array(np.full(chosen.size, nll[0], np.float32)),
        "nll_edited": pa.array(nll[1:].astype(np.float32)),
        "delta_nll": pa.array((nll[1:] - nll[0]).astype(np.float32)),
        "utility": pa.array(utility.astype(np.float32)),
    })  # fmt: skip
    meta = {"run": str(run.path), "step": int(step), "top_k": top_k, "horizon": int(targets.shape[0]),
            "candidates": int(pool.size), "scorer": run.manifest.get("scorer"),
            "model": (run.manifest.get("model") or {}).get("id"), "device": str(model.device),
            "spearman_raw": spearman(raw[chosen].astype(np.float64), utility),
            "spearman_score": spearman(score[chosen].astype(np.float64), utility),
            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    return table.replace_schema_metadata({META: json.dumps(meta).encode()})


def probe_meta(table: pa.Table) -> dict:
    return json.loads((table.schema.metadata or {}).get(META, b"{}"))


def write_probe(table: pa.Table, out: str | Path) -> Path:
    """Write atomically: a reader sees no file or the whole one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return out


__all__ = ["ProbeError", "TextError", "probe_meta", "probe_step", "spearman", "write_probe"]
