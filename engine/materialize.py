"""Turn a working context into what the base model and the scorers consume.

- `materialize`: `inputs_embeds` [1, T, d] + `position_ids` [1, T], LOD0 entries as their token
  embeddings, gists as single vectors, then the raw tail; T = the WC's cost. Positions: `global`
  puts tokens at their true positions and a gist at the centre of its span; `compact` numbers the
  WC 0..T-1 (for models whose trained context is shorter than the stream).
- `entry_vectors` / `query_vectors` / `recent_gists`: one vector per entry (the gist, or the
  mean token embedding of a raw block) and the tail query, for similarity scorers and LensNet.

Nothing here decides focus or runs the model; vectors come from the tree and the embedding table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.tree import GistTree
from engine.working_context import WorkingContext


@dataclass(frozen=True, eq=False)
class Materialized:
    inputs_embeds: torch.Tensor  # [1, T, d] model dtype, model device
    position_ids: torch.Tensor  # [1, T] long
    entry_of_pos: np.ndarray  # int64[T]: entry index of each position; n (= wc.n) marks the tail
    next_position: int  # position id of the first token after the WC
    n_entries: int  # wc.n: entry_of_pos takes values in [0, n_entries], n_entries being the raw tail


def _token_rows(wc: WorkingContext) -> tuple[np.ndarray, np.ndarray]:
    """(token ids' stream positions, their row in the materialised sequence) for LOD0 entries + tail."""
    bs = wc.block_size
    offsets = np.concatenate([[0], np.cumsum(wc.cost, dtype=np.int64)])  # [n+1] row where each entry starts
    raw = np.flatnonzero(wc.lod == 0)
    j = np.arange(bs, dtype=np.int64)
    stream_pos = (wc.start[raw][:, None] + j).reshape(-1)  # [n_raw*bs]
    rows = (offsets[raw][:, None] + j).reshape(-1)
    tail = np.arange(wc.tail_start, wc.tokens_seen, dtype=np.int64)
    stream_pos = np.concatenate([stream_pos, tail])
    rows = np.concatenate([rows, offsets[-1] + np.arange(tail.shape[0], dtype=np.int64)])
    return stream_pos, rows


def materialize(wc: WorkingContext, tree: GistTree, model, position_mode: str = "global") -> Materialized:
    """The WC as model input. `model` needs `embed(ids) -> [k, d]`, `.device`, `.dtype`, `.hidden_size`."""
    n, cost = wc.n, wc.cost
    total = int(cost.sum()) + wc.tail_len
    d = model.hidden_size
    out = torch.empty(total, d, dtype=model.dtype, device=model.device)  # [T, d]
    offsets = np.concatenate([[0], np.cumsum(cost, dtype=np.int64)])
    stream_pos, rows = _token_rows(wc)
    if stream_pos.size:
        ids = torch.from_numpy(tree.tokens()[stream_pos].astype(np.int64))
        out[torch.from_numpy(rows).to(model.device)] = model.embed(ids)  # [k, d]
    pos = np.empty(total, np.int64)
    pos[rows] = stream_pos
    for lod in range(1, wc.max_lod + 1):
        m = np.flatnonzero(wc.lod == lod)
        if m.size:
            g = torch.from_numpy(tree.gists(lod, wc.index[m]))  # [k, d] float32 host
            out[torch.from_numpy(offsets[m]).to(model.device)] = g.to(model.device, model.dtype)
            pos[offsets[m]] = (wc.start[m] + wc.end[m] - 1) // 2  # centre of the span
    entry_of_pos = np.repeat(np.arange(n + 1, dtype=np.int64), np.append(cost, wc.tail_len))
    if position_mode == "compact":
        pos = np.arange(total, dtype=np.int64)
        next_position = total
    elif position_mode == "global":
        next_position = wc.tokens_seen
    else:  # "auto" must be resolved against the model first (engine.runtime.resolve_positions)
        raise ValueError(f"materialize needs position_mode 'global' or 'compact', got {position_mode!r}")
    return Materialized(out[None], torch.from_numpy(pos)[None].to(model.device), entry_of_pos, next_position, n)


def entry_vectors(wc: WorkingContext, tree: GistTree, model) -> torch.Tensor:
    """[n, d] float32: each gist entry's gist, each raw block's mean token embedding."""
    out = torch.zeros(wc.n, model.hidden_size, dtype=torch.float32)
    for lod in range(0, wc.max_lod + 1):  # the tree keeps raw blocks' mean embeddings as "LOD0 vectors"
        m = np.flatnonzero(wc.lod == lod)
        if m.size:
            out[torch.from_numpy(m)] = torch.from_numpy(tree.gists(lod, wc.index[m]))
    return out


def query_vectors(wc: WorkingContext, tree: GistTree, model, blocks: int) -> torch.Tensor:
    """[m, d] float32 token embeddings of the newest `blocks` complete blocks plus the tail."""
    lo = max(wc.evicted_upto, wc.tail_start - blocks * wc.block_size)
    ids = tree.tokens(lo, wc.tokens_seen).astype(np.int64)
    return model.embed(torch.from_numpy(ids)).float().cpu()


def recent_gists(tree: GistTree, wc: WorkingContext, k: int) -> torch.Tensor | None:
    """[g, d] float32 newest LOD1 gists (at most k), or None if there are none."""
    have = wc.complete_blocks()
    lo = max(wc.evicted_upto // wc.block_size, have - k)
    if k <= 0 or have - lo <= 0:
        return None
    return torch.from_numpy(tree.gists(1, np.arange(lo, have)).copy())
