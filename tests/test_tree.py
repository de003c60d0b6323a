"""GistTree: chunking-invariance (bit for bit), append's return value, spill-to-disk storage, memory.

The headline property: a tree built from a token stream is bit-for-bit the same whatever chunk sizes
the stream arrived in, with a real (tiny, seeded) GistNet doing the gisting. The other tests pin the
append contract (which nodes complete, their spans, parents only after all children), the
memory-mapped storage (same bytes as RAM, old generation files deleted), structure-only trees, input
validation and the memory footprint of a 1M-token stream.

These tests do not exercise the working context or the allocator; those have their own files.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import GistNetConfig, TreeConfig, nodes
from engine import GistNet, GistTree
from engine.tree import _Growable

D = 16  # tiny embedding width: the properties do not depend on it, the runtime does
VOCAB = 256


def _torch_fns(block_size: int, max_lod: int, d: int = D, as_numpy: bool = True):
    """(gist_fn, embed_fn) backed by a small real GistNet and a seeded embedding table.

    The GistNet's zero-initialised output projection is filled with seeded noise so that gists are
    more than a mean-pool: the attention and MLP paths, where reduction order could leak in, count.
    """
    net = GistNet(d, GistNetConfig(hidden=16, layers=1, heads=2), max_lod, block_size, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.Embedding(VOCAB, d)
    with torch.no_grad():
        net.out_proj.weight.copy_(0.5 * torch.randn(net.out_proj.weight.shape, generator=g))
        emb.weight.copy_(torch.randn(VOCAB, d, generator=g))

    def gist_fn(children: np.ndarray, level: int):
        with torch.no_grad():
            out = net(torch.from_numpy(children)[None], level)[0]  # [1, bs, d] -> [d]
        return out.numpy() if as_numpy else out

    def embed_fn(ids: np.ndarray):
        with torch.no_grad():
            out = emb(torch.from_numpy(ids))  # [k, d]
        return out.numpy() if as_numpy else out

    return gist_fn, embed_fn


def _numpy_fns(d: int, seed: int = 0):
    """Cheap deterministic (gist_fn, embed_fn) for the storage tests, where GistNet would only add time.

    The gist depends on child order and level, so a misplaced child or level shows up as a different gist.
    """
    table = np.random.default_rng(seed).standard_normal((VOCAB, d)).astype(np.float32)

    def gist_fn(children: np.ndarray, level: int) -> np.ndarray:
        w = np.arange(1, children.shape[0] + 1, dtype=np.float32)[:, None]
        return (children * w).mean(axis=0) + np.float32(level)

    return gist_fn, lambda ids: table[ids]


@contextlib.contextmanager
def _one_thread():
    """Run torch single-threaded: a [1, bs, 16] forward is all overhead, and on a busy 2-core box
    intra-op threads only add contention (about 2x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stores(tree: GistTree) -> dict[str, _Growable]:
    """Every storage array of the tree, by attribute name (found generically, whatever it keeps)."""
    out = {}
    for name, v in vars(tree).items():
        if isinstance(v, _Growable):
            out[name] = v
        elif isinstance(v, list | tuple):
            out.update({f"{name}[{i}]": x for i, x in enumerate(v) if isinstance(x, _Growable)})
    return out


def _stream(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n)


def _chunks(n: int, sizes: list[int], max_chunks: int = 300):
    """Cut [0, n) into consecutive chunks cycling through `sizes`, then one remainder chunk.

    Empty chunks are yielded on the first pass only, and at most `max_chunks` chunks in all, so a
    list of zeros and ones cannot turn into thousands of appends (the test would only get slower).
    """
    pos = 0
    for i in range(max_chunks):
        k = sizes[i % len(sizes)]
        if pos >= n or (k == 0 and i >= len(sizes)):
            continue
        yield pos, min(pos + k, n)
        pos = min(pos + k, n)
    if pos < n:
        yield pos, n


def _assert_same_tree(a: GistTree, b: GistTree) -> None:
    assert a.tokens_seen == b.tokens_seen
    assert np.array_equal(a.tokens(), b.tokens())
    assert a.tokens().dtype == np.int32
    for lod in range(1, a.cfg.max_lod + 1):
        assert a.n_complete(lod) == b.n_complete(lod)
        idx = np.arange(a.n_complete(lod))
        ga, gb = a.gists(lod, idx), b.gists(lod, idx)
        assert ga.dtype == gb.dtype == np.float32
        assert np.array_equal(ga, gb), f"LOD{lod} gists differ"  # bit for bit, not allclose
    # And every stored array, whatever else the tree keeps (e.g. per-block mean embeddings).
    sa, sb = _stores(a), _stores(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert np.array_equal(sa[name].data, sb[name].data), name


# ---------------------------------------------------------------------------------------------
# Chunking invariance.


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block_size=st.sampled_from([4, 8, 32]),
    max_lod=st.integers(1, 3),
    n=st.integers(1000, 3000),
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.one_of(st.just(0), st.integers(1, 8), st.integers(9, 300)), min_size=1, max_size=30),
)
def test_chunking_is_bit_for_bit_invariant(block_size, max_lod, n, seed, sizes):
    cfg = TreeConfig(block_size=block_size, max_lod=max_lod)
    ids = _stream(seed, n)
    gist_fn, embed_fn = _torch_fns(block_size, max_lod)
    whole = GistTree(cfg, D, gist_fn, embed_fn)
    chunked = GistTree(cfg, D, gist_fn, embed_fn)
    got = [[] for _ in range(max_lod + 1)]
    with _one_thread():
        whole.append(ids)
        for a, b in _chunks(n, sizes):
            for lod, new in enumerate(chunked.append(ids[a:b])):
                got[lod].append(new)
    _assert_same_tree(whole, chunked)
    # The returned ids, concatenated over all appends, are every complete node once, in order.
    for lod in range(max_lod + 1):
        want = nodes.node_id(lod, np.arange(nodes.complete_nodes(n, lod, block_size)))
        assert np.array_equal(np.concatenate(got[lod]), want)


def test_chunking_invariance_covers_a_full_top_level_node():
    # The property's streams are short; make sure at least one LOD3 gist (bs**3 tokens) is compared.
    cfg = TreeConfig(block_size=4, max_lod=3)
    gist_fn, embed_fn = _torch_fns(4, 3)
    ids = _stream(5, 4 * 64 + 3)
    whole, chunked = GistTree(cfg, D, gist_fn, embed_fn), GistTree(cfg, D, gist_fn, embed_fn)
    with _one_thread():
        whole.append(ids)
        for a, b in _chunks(ids.size, [3, 0, 17, 1, 64]):
            chunked.append(ids[a:b])
    assert whole.n_complete(3) == 4
    _assert_same_tree(whole, chunked)


# ---------------------------------------------------------------------------------------------
# append's contract.


def test_append_returns_completed_nodes_with_their_spans():
    bs, max_lod = 4, 2
    cfg = TreeConfig(block_size=bs, max_lod=max_lod)
    tree = GistTree(cfg, 8, *_numpy_fns(8))
    seen = 0
    for k in [0, 3, 1, 4, 9, 0, 15, 2, 40, 7, 1]:
        before = [tree.n_complete(lod) for lod in range(max_lod + 1)]
        new = tree.append(_stream(k, k))
        seen += k
        assert tree.tokens_seen == seen
        assert len(new) == max_lod + 1
        for lod, ids in enumerate(new):
            assert ids.dtype == np.int64
            assert ids.size == nodes.complete_nodes(seen, lod, bs) - before[lod]
            assert np.all(nodes.node_lod(ids) == lod)
            # The new nodes tile the span between the old and the new complete frontier.
            span = int(nodes.span_tokens(lod, bs))
            starts = nodes.node_start(lod, nodes.node_index(ids), bs)
            assert np.array_equal(starts, np.arange(before[lod], before[lod] + ids.size) * span)
            assert np.all(starts + span <= seen)
        # LOD0 and LOD1 of a block complete together.
        assert np.array_equal(nodes.node_index(new[0]), nodes.node_index(new[1]))
    assert tree.n_complete(2) == seen // bs**2 > 0


def test_structure_only_append_returns_the_same_ids():
    cfg = TreeConfig(block_size=8, max_lod=3)
    with_vecs, bare = GistTree(cfg, 4, *_numpy_fns(4)), GistTree(cfg)
    for k in [5, 600, 0, 11, 64]:
        ids = _stream(k, k)
        for a, b in zip(with_vecs.append(ids), bare.append(ids), strict=True):
            assert np.array_equal(a, b)


def test_parent_gist_only_after_all_children():
    bs, max_lod, d = 4, 3, 8
    cfg = TreeConfig(block_size=bs, max_lod=max_lod)
    base_gist, embed_fn = _numpy_fns(d)
    made = [0] * (max_lod + 1)  # gists made so far per level, counted inside gist_fn
    tree: GistTree | None = None

    def gist_fn(children: np.ndarray, level: int) -> np.ndarray:
        i = made[level]
        if level == 1:
            # The block's tokens are all there, and the children are exactly their embeddings.
            assert tree.tokens_seen >= (i + 1) * bs
            assert np.array_equal(children, embed_fn(tree.tokens(i * bs, (i + 1) * bs).astype(np.int64)))
        else:
            # All bs children are stored already (gists() raises IndexError otherwise) and are what we got.
            assert np.array_equal(children, tree.gists(level - 1, np.arange(i * bs, (i + 1) * bs)))
        made[level] += 1
        return base_gist(children, level)

    tree = GistTree(cfg, d, gist_fn, embed_fn)
    for k in [1, 2, 3, 4, 5, 13, 31, 64, 3, 100, 1]:
        tree.append(_stream(k, k))
        for lod in range(1, max_lod + 1):
            n = tree.n_complete(lod)
            assert made[lod] == n  # every complete node has its gist, and no incomplete one does
            with pytest.raises(IndexError):
                tree.gists(lod, [n])
    assert made[3] >= 1


# ---------------------------------------------------------------------------------------------
# Storage: memory-mapped spill files, structure-only trees, bad input.


def test_spill_dir_matches_ram_and_drops_old_generations(tmp_path):
    bs, max_lod, d = 2, 2, 8  # bs=2 so LOD1 passes 2048 rows (two buffer growths) in a few thousand tokens
    gist_fn, embed_fn = _numpy_fns(d)
    spill = tmp_path / "spill"
    ram = GistTree(TreeConfig(block_size=bs, max_lod=max_lod), d, gist_fn, embed_fn)
    disk = GistTree(TreeConfig(block_size=bs, max_lod=max_lod, spill_dir=str(spill)), d, gist_fn, embed_fn)
    ids = _stream(7, 4600)
    for a, b in _chunks(ids.size, [900, 1, 700, 0, 333]):
        ram.append(ids[a:b])
        disk.append(ids[a:b])
        _assert_same_tree(ram, disk)
        # One file per array, its current generation: the previous one is deleted once its rows are copied.
        stores = _stores(disk)
        current = sorted(os.path.basename(s._file(s.gen)) for s in stores.values())
        (tree_dir,) = os.listdir(spill)  # each tree keeps its files in its own subfolder
        assert sorted(os.listdir(spill / tree_dir)) == current
    assert len(stores) >= 1 + max_lod  # tokens plus one array per gist level at least
    for name, store in stores.items():
        assert isinstance(store.buf, np.memmap), name
        # What is on disk is what the tree serves (a reader could open the .npy file directly).
        on_disk = np.load(store._file(store.gen), mmap_mode="r")
        assert np.array_equal(on_disk[: store.n], _stores(ram)[name].data), name
    big = [s for s in stores.values() if s.n > 2048]
    assert len(big) >= 2 and all(s.gen >= 3 for s in big)  # tokens and LOD1 grew at least twice (1024->2048->4096)


def test_growable_keeps_rows_across_growth(tmp_path):
    for path in (None, str(tmp_path / "g")):
        g = _Growable(np.float32, 3, path)
        rows = np.arange(3 * 5000, dtype=np.float32).reshape(5000, 3)
        for a, b in _chunks(5000, [1, 1023, 1, 2000, 0, 5000]):
            g.append(rows[a:b])
            assert np.array_equal(g.data, rows[:b])
        assert g.buf.shape[0] < 2 * 5000 + 1024  # amortised doubling, not unbounded over-allocation


def test_structure_only_tree():
    tree = GistTree(TreeConfig(block_size=8, max_lod=2))
    new = tree.append(_stream(0, 200))
    assert tree.tokens_seen == 200 and new[1].size == 25 and new[2].size == 3
    assert np.array_equal(tree.tokens(8, 16), _stream(0, 200)[8:16])
    with pytest.raises(ValueError, match="structure only"):
        tree.gists(1, [0])
    with pytest.raises(ValueError, match="together"):
        GistTree(TreeConfig(), 8, gist_fn=_numpy_fns(8)[0])  # gist_fn without embed_fn
    with pytest.raises(ValueError, match="together"):
        GistTree(TreeConfig(), 0, *_numpy_fns(8))  # vectors need d > 0


def test_bad_token_ids_raise_and_leave_the_tree_alone():
    tree = GistTree(TreeConfig(block_size=4, max_lod=1), 8, *_numpy_fns(8))
    tree.append([1, 2, 3])
    with pytest.raises(ValueError, match="one-dimensional"):
        tree.append(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        tree.append([5, -1, 7])
    with pytest.raises(ValueError, match="int32"):
        tree.append([2**31])
    assert tree.tokens_seen == 3 and tree.n_complete(1) == 0
    tree.append(np.zeros(0, np.int64))  # an empty chunk is fine
    assert tree.tokens_seen == 3


def test_gist_fn_with_wrong_shape_is_caught():
    tree = GistTree(TreeConfig(block_size=4, max_lod=1), 8, lambda c, lvl: c.mean(0)[:4], _numpy_fns(8)[1])
    with pytest.raises(ValueError, match="shape"):
        tree.append(_stream(0, 4))


# ---------------------------------------------------------------------------------------------
# Memory: 1M tokens, storage within 2x of the raw bytes, numpy only.


def _raw_bytes(tree: GistTree) -> int:
    """4 bytes per token plus 4*d per stored vector (every gist, and any per-block vector the tree keeps)."""
    stores = list(_stores(tree).values())
    vectors = sum(s.n for s in stores if s.width) if tree.d else 0
    # The vector rows are what the tree's levels imply: one per complete node of each kept level.
    gists = sum(tree.n_complete(lod) for lod in range(1, tree.cfg.max_lod + 1)) if tree.d else 0
    assert gists <= vectors <= gists + (tree.n_complete(0) if tree.d else 0)
    return 4 * tree.tokens_seen + 4 * tree.d * vectors


@pytest.mark.parametrize("d", [0, 8])
def test_million_tokens_memory(d):
    cfg = TreeConfig()  # default geometry: bs 32, max_lod 2 -> 31,250 LOD1 and 976 LOD2 gists
    tree = GistTree(cfg, d, *_numpy_fns(d)) if d else GistTree(cfg)
    ids = _stream(0, 1_000_000)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for a in range(0, ids.size, 65_536):
            tree.append(ids[a : a + 65_536])  # returned ids dropped: the tree must not keep them either
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    raw = _raw_bytes(tree)
    assert tree.tokens_seen == 1_000_000
    assert raw <= tree.nbytes() <= 2 * raw, (tree.nbytes(), raw)
    # Everything the appends left allocated is the tree's own storage (plus small change).
    assert held <= tree.nbytes() + (1 << 20), (held, tree.nbytes())


def test_storage_is_numpy_even_when_fns_return_torch():
    bs, max_lod = 8, 2
    gist_fn, embed_fn = _torch_fns(bs, max_lod, as_numpy=False)  # both return torch tensors
    tree = GistTree(TreeConfig(block_size=bs, max_lod=max_lod), D, gist_fn, embed_fn)
    with _one_thread():
        for a, b in _chunks(700, [100, 37]):
            tree.append(_stream(3, 700)[a:b])
    stores = list(_stores(tree).values())
    assert len(stores) >= 1 + max_lod
    assert all(type(s.buf) is np.ndarray for s in stores)
    assert {s.buf.dtype for s in stores} == {np.dtype(np.int32), np.dtype(np.float32)}
    # No tensor anywhere in the tree's own state (the callables belong to the caller).
    state = {k: v for k, v in vars(tree).items() if k not in ("gist_fn", "embed_fn")}
    values = list(state.values()) + [v for s in stores for v in vars(s).values()]
    values += [x for v in values if isinstance(v, list | tuple) for x in v]
    assert not any(isinstance(v, torch.Tensor) for v in values)
    assert isinstance(tree.gists(2, [0]), np.ndarray)


# ---------------------------------------------------------------------------------------------
# Bugs found in engine/tree.py, now fixed: kept as regression tests.


def test_two_trees_in_one_spill_dir_do_not_clobber_each_other(tmp_path):
    cfg = TreeConfig(block_size=4, max_lod=1, spill_dir=str(tmp_path))
    a = GistTree(cfg)
    a.append(np.arange(10))
    try:
        b = GistTree(cfg)  # refusing the shared folder would be fine too
    except (ValueError, FileExistsError):
        return
    b.append(np.arange(100, 110))
    assert np.array_equal(a.tokens(), np.arange(10))  # today: a now reads b's tokens


def test_gists_rejects_a_negative_level():
    tree = GistTree(TreeConfig(block_size=4, max_lod=2), 8, *_numpy_fns(8))
    tree.append(_stream(0, 64))
    with pytest.raises((ValueError, IndexError)):
        tree.gists(-1, [0])  # today: silently returns the LOD2 gist


def test_float_token_ids_are_rejected():
    tree = GistTree(TreeConfig(block_size=4, max_lod=1))
    with pytest.raises(ValueError):
        tree.append([1.7, 2.9])  # today: stored as [1, 2]
