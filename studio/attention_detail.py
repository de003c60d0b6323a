"""Attention at one recorded step in detail: the base model's by layer and head, LensNet's by query.

The recording keeps the base model's attention averaged over heads, on every `session.attention_every`
steps only, and LensNet's summed over its queries. `attention_detail(run, t)` recomputes both at any
step, with the run's own model and nets, on the step rebuilt exactly (`studio.rebuild`):

- kind `heads`: the WC after the step's edits, materialised as the recorder does, read by the base
  model; for each layer and head, the attention of the newest block's queries (averaged over those
  queries) summed over each entry's positions, the tail as node -1 (`BaseModel.forward_tail(heads=True)`,
  the recorder's `_record_attention` without the head average: the mean over heads is the recorded
  mass);
- kind `lens` (a LensNet run only): the view the step's first scorer round saw (the allocator state
  from a fast replay) through LensNet; for each query (the newest gists, then the newest blocks' and
  the tail's tokens, each labelled) the last layer's attention onto each entry, heads averaged.
  LensNet's scores are checked against the recorded raw scores (`lens_max_abs_diff` in the metadata).

One long table (`kind`, `layer`, `head`, `query`, `query_label`, `node_id`, `mass`; the columns another
kind does not use are null), written atomically with its settings in the metadata (`write_detail`).
`python -m engine attention RUN --step T --out FILE` runs it (the app starts that in the background).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from studio.probe import write_probe
from studio.rebuild import StepError, allocator_state, edited_wc, rebuild_step

META = b"mcs.attention"
SCHEMA = pa.schema([
    ("kind", pa.string()),  # "heads" | "lens"
    ("layer", pa.int16()),
    ("head", pa.int16()),
    ("query", pa.int32()),
    ("query_label", pa.string()),
    ("node_id", pa.int64()),  # -1: the raw tail
    ("mass", pa.float32()),
])  # fmt: skip


def attention_detail(run_dir: str | Path, step: int, *, device: str = "auto",
                     progress: Callable[[str], None] = lambda s: None) -> pa.Table:  # fmt: skip
    """The step's attention by head and by LensNet query (see the module doc). Raises StepError,
    `studio.run_text.TextError` or `engine.model_loader.ModelLoadError`."""
    import torch

    from engine.materialize import materialize
    from engine.session import entry_mass

    t0 = time.perf_counter()
    r = rebuild_step(run_dir, step, device=device, progress=progress)
    cfg, model, tree = r.cfg, r.model, r.session.tree
    progress("replaying the allocator to the step")
    wc = edited_wc(r)
    progress("running the base model")
    m = materialize(wc, tree, model, cfg.wc.position_mode)
    q = min(cfg.tree.block_size, m.inputs_embeds.shape[1])
    with torch.no_grad():
        _, mass = model.forward_tail(m.inputs_embeds, m.position_ids, tail=q, heads=True)  # [L, 1, H, T]
    n_layers, n_heads = mass.shape[0], mass.shape[2]
    flat = mass[:, 0].reshape(n_layers * n_heads, -1).float().cpu().numpy()  # [L*H, T]
    per = entry_mass(flat, m.entry_of_pos, wc.n + 1)  # [L*H, n+1]
    ids = np.append(wc.node_id, -1)
    rows = {
        "kind": ["heads"] * per.size,
        "layer": np.repeat(np.arange(n_layers), n_heads * ids.size).astype(np.int16),
        "head": np.tile(np.repeat(np.arange(n_heads), ids.size), n_layers).astype(np.int16),
        "query": [None] * per.size,
        "query_label": [None] * per.size,
        "node_id": np.tile(ids, n_layers * n_heads),
        "mass": per.reshape(-1),
    }
    table = pa.table(rows, schema=SCHEMA)
    lens_diff = None
    lensnet = getattr(r.engine.scorer, "lensnet", None)
    if lensnet is not None and cfg.scorer.name == "lensnet":
        progress("running LensNet")
        lens, lens_diff = _lens_rows(r, lensnet)
        table = pa.concat_tables([table, lens])
    meta = {"run": str(r.run.path), "step": int(step), "model": (r.run.manifest.get("model") or {}).get("id"),
            "scorer": cfg.scorer.name, "device": str(model.device), "layers": int(n_layers), "heads": int(n_heads),
            "queries": int(q), "lens_max_abs_diff": lens_diff,
            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    return table.replace_schema_metadata({META: json.dumps(meta).encode()})


def _lens_rows(r, lensnet) -> tuple[pa.Table, float]:
    """LensNet's last-layer attention per (query, entry) on the step's first-round view, and the largest
    difference between its scores and the recorded raw scores."""
    from engine.lensnet import query_gists_used

    wc = r.wc
    view = r.session.view(wc, allocator_state(r))
    out = lensnet.explain(view)
    attn = out.attn_q2e.float().cpu().numpy()  # [m, n]
    diff = float(np.max(np.abs(out.scores.float().cpu().numpy() - r.raw))) if wc.n else 0.0
    labels = _query_labels(r, query_gists_used(view, lensnet.cfg.query_gists))
    if len(labels) != attn.shape[0]:
        raise StepError(f"{r.run.path}: LensNet had {attn.shape[0]} queries at step {r.step}, expected {len(labels)}")
    m, n = attn.shape
    rows = {
        "kind": ["lens"] * (m * n),
        "layer": [None] * (m * n),
        "head": [None] * (m * n),
        "query": np.repeat(np.arange(m), n).astype(np.int32),
        "query_label": np.repeat(np.array(labels, dtype=object), n).tolist(),
        "node_id": np.tile(wc.node_id, m),
        "mass": attn.reshape(-1),
    }
    return pa.table(rows, schema=SCHEMA), diff


def _query_labels(r, n_gists: int) -> list[str]:
    """A label per LensNet query, in order: the newest gists (`L1 #i, tokens a-b`), then each query token
    (`token p: 'text'`), as `engine.materialize.recent_gists` and `query_vectors` pick them."""
    wc, bs = r.wc, r.cfg.tree.block_size
    have = wc.complete_blocks()
    labels = [f"L1 #{i}, tokens {i * bs}-{(i + 1) * bs}" for i in range(have - n_gists, have)]
    lo = max(wc.evicted_upto, wc.tail_start - r.cfg.scorer.query_blocks * bs)
    for p in range(lo, wc.tokens_seen):
        labels.append(f"token {p}: {r.model.decode([int(r.tokens[p])])!r}")
    return labels


def detail_meta(table: pa.Table) -> dict:
    return json.loads((table.schema.metadata or {}).get(META, b"{}"))


write_detail = write_probe  # the same atomic write: a reader sees no file or the whole one

__all__ = ["StepError", "attention_detail", "detail_meta", "write_detail"]
