"""The append-only gist tree: every token read so far, and the gists above them.

Tokens arrive in any chunk sizes. Each time a block of `block_size` tokens completes, GistNet turns
its token embeddings into a LOD1 gist; each time `block_size` LOD1 gists complete, into a LOD2 gist,
and so on up to `max_lod`. Gists never change once made.

Storage lives in host memory (or memory-mapped files under `tree.spill_dir`), never on the
accelerator: a 1M-token stream keeps ~31k LOD1 gists, which would otherwise grow device memory
without bound. Only the working context's vectors travel to the device, at materialisation.

Reproducibility: blocks are gisted one at a time, in order, so the tree built from a stream is
bit-for-bit the same whatever chunk sizes it arrived in (batching would let kernels pick
different reduction orders). This module does not decide focus and does not run the base model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import numpy as np

from contract import nodes
from contract.config import TreeConfig

# gist_fn(children [bs, d] float32, level) -> [d] float32; embed_fn(token ids int64[k]) -> [k, d] float32
GistFn = Callable[[np.ndarray, int], np.ndarray]
EmbedFn = Callable[[np.ndarray], np.ndarray]


class _Growable:
    """An append-only array with amortised O(1) growth, in RAM or memory-mapped on disk."""

    def __init__(self, dtype, width: int, path: str | None = None):
        self.dtype, self.width, self.path, self.n, self.gen = np.dtype(dtype), width, path, 0, 0
        self.buf = self._alloc(1024)

    def _file(self, gen: int) -> str:
        return f"{self.path}.{gen}.npy"

    def _alloc(self, cap: int) -> np.ndarray:
        shape = (cap, self.width) if self.width else (cap,)
        if self.path is None:
            return np.zeros(shape, self.dtype)
        # A new generation file per growth: the old map stays valid until its rows are copied.
        self.gen += 1
        return np.lib.format.open_memmap(self._file(self.gen), mode="w+", dtype=self.dtype, shape=shape)

    def append(self, rows: np.ndarray) -> None:
        k = rows.shape[0]
        if self.n + k > self.buf.shape[0]:
            new = self._alloc(max(2 * self.buf.shape[0], self.n + k))
            new[: self.n] = self.buf[: self.n]
            old, self.buf = self.buf, new
            if self.path is not None:
                del old
                os.remove(self._file(self.gen - 1))
        self.buf[self.n : self.n + k] = rows
        self.n += k

    @property
    def data(self) -> np.ndarray:
        return self.buf[: self.n]

    @property
    def nbytes(self) -> int:
        return int(self.buf.nbytes)


class GistTree:
    """Tokens plus per-level gists. `d == 0` (no gist_fn) keeps structure only, no vectors."""

    def __init__(self, cfg: TreeConfig, d: int = 0, gist_fn: GistFn | None = None, embed_fn: EmbedFn | None = None):
        if (gist_fn is None) != (embed_fn is None) or (gist_fn is not None and d <= 0):
            raise ValueError("GistTree needs gist_fn, embed_fn and d > 0 together, or none of them")
        self.cfg, self.d = cfg, d
        self.gist_fn, self.embed_fn = gist_fn, embed_fn
        spill = cfg.spill_dir or None
        if spill:
            os.makedirs(spill, exist_ok=True)
            spill = tempfile.mkdtemp(prefix="tree-", dir=spill)  # one folder per tree: trees never share files
        self._tokens = _Growable(np.int32, 0, os.path.join(spill, "tokens") if spill else None)
        # _vecs[0]: each block's mean token embedding (what a raw entry "is" to a similarity
        # scorer, kept so scorers never re-embed the WC); _vecs[l]: the LOD-l gists.
        self._vecs = [
            _Growable(np.float32, d, os.path.join(spill, f"vecs_lod{lod}") if spill else None)
            for lod in range(0, cfg.max_lod + 1)
        ] if d else []  # fmt: skip

    # -- reading --
    @property
    def tokens_seen(self) -> int:
        return self._tokens.n

    def tokens(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """int32 token ids of `[start, end)` (a view; copy it if you keep it)."""
        return self._tokens.data[start:end]

    def n_complete(self, lod: int) -> int:
        return nodes.complete_nodes(self.tokens_seen, lod, self.cfg.block_size)

    def gists(self, lod: int, indices: np.ndarray) -> np.ndarray:
        """float32[k, d] vectors of complete nodes: LOD>=1 gists, or (lod 0) blocks' mean token embeddings."""
        if not self.d:
            raise ValueError("this tree keeps structure only (no gist_fn)")
        if not 0 <= lod <= self.cfg.max_lod:
            raise ValueError(f"lod must be in [0, {self.cfg.max_lod}], got {lod}")
        store = self._vecs[lod]
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= store.n):
            raise IndexError(f"LOD{lod} gist index out of range (have {store.n})")
        return store.data[indices]

    def nbytes(self) -> int:
        return self._tokens.nbytes + sum(v.nbytes for v in self._vecs)

    # -- growth --
    def append(self, token_ids) -> list[np.ndarray]:
        """Append tokens; gist every block and parent that completes. Returns new node ids per LOD.

        `result[lod]` is int64[k]: the nodes at `lod` completed by this append (LOD0 and LOD1 of a
        block complete together even when the tree keeps no vectors).
        """
        ids = np.asarray(token_ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if ids.ndim != 1:
            raise ValueError("token_ids must be one-dimensional")
        if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
            raise ValueError("token ids must be non-negative int32 values")
        before = [self.n_complete(lod) for lod in range(self.cfg.max_lod + 1)]
        self._tokens.append(ids.astype(np.int32))
        after = [self.n_complete(lod) for lod in range(self.cfg.max_lod + 1)]
        if self.d:
            self._gist_new(before, after)
        return [nodes.node_id(lod, np.arange(before[lod], after[lod])) for lod in range(self.cfg.max_lod + 1)]

    def _gist_new(self, before: list[int], after: list[int]) -> None:
        bs = self.cfg.block_size
        # Levels are built bottom-up, one node at a time and in order, so a parent always
        # finds its children already stored, whatever the chunking.
        for lod in range(1, self.cfg.max_lod + 1):
            for i in range(before[lod], after[lod]):
                if lod == 1:
                    children = np.asarray(self.embed_fn(self.tokens(i * bs, (i + 1) * bs).astype(np.int64)), np.float32)
                    self._vecs[0].append(children.mean(axis=0, keepdims=True))  # [1, d]
                else:
                    children = self._vecs[lod - 1].data[i * bs : (i + 1) * bs]  # [bs, d]
                gist = np.asarray(self.gist_fn(children, lod), np.float32)  # [d]
                if gist.shape != (self.d,):
                    raise ValueError(f"gist_fn returned shape {gist.shape}, expected ({self.d},)")
                self._vecs[lod].append(gist[None, :])
