"""A recording's document, rebuilt from its input: `document_tokens` re-reads and re-tokenises the
input a manifest names exactly as the recorder did, and proves the result is the recorded stream
(every recorded node's preview must decode from it); `add_text` backfills the `text` table of a run
recorded before recorders wrote one (`python -m engine add-text RUN...`).

Nothing recorded changes: the table is added beside the others (`telemetry.amend.add_table`). A run
whose input is gone, was edited since, or was read from stdin gets one line saying which.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from contract import nodes
from engine.session import PREVIEW_TOKENS
from engine.textio import read_text, token_chunks
from studio.replay import model_spec_of
from telemetry.amend import add_table
from telemetry.reader import Run


class TextError(ValueError):
    """The run's document cannot be rebuilt; one line naming the run and the reason."""


def input_path(run: Run) -> Path:
    """The recording's input file, or TextError (stdin, pasted text since deleted, a moved file)."""
    src = run.manifest.get("input")
    if src in (None, "", "-"):
        raise TextError(f"{run.path}: its text was read from stdin, so there is no file to re-read")
    path = Path(src)
    if not path.is_file():
        raise TextError(f"{run.path}: its input {src} is not a readable file any more")
    return path


def document_tokens(run: Run, model) -> np.ndarray:
    """int64[tokens]: the token stream the run recorded, re-tokenised from its input by `model`'s
    tokenizer. Raises TextError unless every recorded node's preview decodes from it."""
    n = int(run.manifest.get("tokens") or 0)
    parts, have = [], 0
    for ids in token_chunks(read_text(str(input_path(run))), model.tokenize):
        parts.append(ids)
        have += ids.shape[0]
        if have >= n:
            break
    tokens = np.concatenate(parts)[:n] if parts else np.zeros(0, np.int64)
    if tokens.shape[0] < n:
        raise TextError(f"{run.path}: its input has {tokens.shape[0]} tokens now, the recording read {n}")
    t = run.table("nodes", columns=["node_id", "start", "end", "preview"])
    start, end = t["start"].to_numpy(), t["end"].to_numpy()
    for i, (s, e, want) in enumerate(zip(start.tolist(), end.tolist(), t["preview"].to_pylist(), strict=True)):
        if model.decode(tokens[s : min(e, s + PREVIEW_TOKENS)].tolist()) != want:
            nid = int(t["node_id"][i].as_py())
            label = f"L{int(nodes.node_lod(np.int64(nid)))} #{int(nodes.node_index(np.int64(nid)))}"
            raise TextError(f"{run.path}: its input changed since the recording (node {label} at token {s} differs)")
    return tokens


def text_table(run: Run, tokens: np.ndarray, model) -> pa.Table:
    """The `text` table a recorder would have written: every block (LOD0 node) decoded on its own."""
    t = run.table("nodes", columns=["node_id", "lod", "start", "end", "step"], where="lod = 0")
    start, end = t["start"].to_numpy(), t["end"].to_numpy()
    text = [model.decode(tokens[s:e].tolist()) for s, e in zip(start.tolist(), end.tolist(), strict=True)]
    return pa.table({"step": t["step"], "node_id": t["node_id"], "start": t["start"], "end": t["end"],
                     "text": pa.array(text, pa.string())})  # fmt: skip


def add_text(run_dir: str | Path, device: str = "cpu") -> dict:
    """Backfill the `text` table of `run_dir` from its input (see the module doc); returns a summary."""
    from engine.model_loader import load_model  # torch and the model: only this command needs them

    t0 = time.perf_counter()
    run = Run(run_dir)
    if "text" in run.tables():
        raise TextError(f"{run.path}: already has its text")
    path = input_path(run)
    model = load_model(model_spec_of(run.manifest.get("model", {})), device)
    table = text_table(run, document_tokens(run, model), model)
    rows = add_table(run.path, "text", table)
    return {"run": str(run.path), "input": str(path), "blocks": rows, "wall_s": round(time.perf_counter() - t0, 2)}
