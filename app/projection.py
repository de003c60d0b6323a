"""2-D projections of a run's gists (the `gists` table) for the Gist map: PCA now, UMAP in the background.

- `load_gists(run)` reads at most `MAX_POINTS` gists (a seeded, sorted sample of node ids, so PCA
  and UMAP show the same points), `None` when the run recorded none;
- `pca_2d` is immediate (scikit-learn PCA, seeded);
- `start_umap(run_dir)` runs `python -m app.projection RUN_DIR CACHE` as a background process that
  writes `CACHE` (node_id, x, y) atomically (`os.replace`); `read_umap` returns it once it is there.
  The cache lives in `RUN/gist_map/umap.parquet` for the user's own runs, or under
  `runs_dir()/_cache/<root>/<run>/gist_map/` for shipped sample runs and read-only folders
  (`app.jobs`). Its metadata says how many gists it was made from: fewer than the run has now (a
  run still recording) makes it stale, which the page says, and recomputes only when asked.
- `gist_colours(run, node_ids)` gives what the points can be coloured by: level, token position,
  latest recorded score, step of the last applied expansion.

Does not draw (see `app.charts_gist.gist_scatter`) and imports no streamlit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app import jobs
from contract import nodes

MAX_POINTS = 50_000  # points sent to the browser (and fed to UMAP)
UMAP_FILE = "umap.parquet"
_META = b"mcs_gist_map"


@dataclass(frozen=True, eq=False)
class Gists:
    node_id: np.ndarray  # int64[n], sorted
    lod: np.ndarray  # int8[n]
    step: np.ndarray  # int32[n]: first step at which the gist exists
    vectors: np.ndarray  # float32[n, d]
    total: int  # gists in the run (n is at most MAX_POINTS of them)


def _source(run) -> tuple[str, dict] | None:
    try:
        return run.source("gists")
    except ValueError:  # a telemetry without the gists table: nothing to show
        return None


def n_gists(run) -> int:
    return run.n_rows("gists") if _source(run) else 0


def sample_ids(node_id: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """A sorted, seeded sample of at most `max_points` of the (unique) node ids."""
    ids = np.unique(node_id)
    if ids.size <= max_points:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, max_points, replace=False))


def load_gists(run, max_points: int = MAX_POINTS, seed: int = 0) -> Gists | None:
    """The run's gists (a sample of `max_points` at most), or None if it recorded none."""
    src = _source(run)
    if not src:
        return None
    gists, params = src
    ids = run.sql(f"SELECT node_id FROM {gists}", params).column("node_id").to_numpy()
    if ids.size == 0:
        return None
    keep = sample_ids(ids, max_points, seed)
    q = f"SELECT node_id, lod, step, vector FROM {gists}"
    if keep.size < ids.size:  # read only the sampled vectors
        q += " WHERE node_id IN (SELECT unnest($ids::BIGINT[]))"
        t = run.sql(q, {**params, "ids": keep.tolist()})
    else:
        t = run.sql(q, params)
    t = t.sort_by("node_id")
    node_id = t.column("node_id").to_numpy()
    first = np.ones(node_id.size, bool)  # a gist written twice (never, by the engine) counts once
    first[1:] = node_id[1:] != node_id[:-1]
    vec = t.column("vector").combine_chunks()
    lengths = pc.list_value_length(vec).to_numpy()
    if lengths.size and (lengths.min() != lengths.max() or lengths.min() == 0):
        raise ValueError("gists: vectors of different lengths in one run")
    d = int(lengths[0]) if lengths.size else 0
    vectors = vec.flatten().to_numpy().astype(np.float32, copy=False).reshape(-1, d)[first]
    return Gists(node_id[first], t.column("lod").to_numpy().astype(np.int8)[first],
                 t.column("step").to_numpy().astype(np.int32)[first], vectors, int(np.unique(ids).size))  # fmt: skip


def pca_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32[n, 2]: the first two principal components (zeros where there are fewer than 2 points)."""
    n, d = vectors.shape
    out = np.zeros((n, 2), np.float32)
    if n < 2 or d == 0:
        return out
    from sklearn.decomposition import PCA

    k = min(2, n, d)
    out[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(vectors.astype(np.float64))
    return out


def umap_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32[n, 2] UMAP embedding (PCA below 5 points, where UMAP's neighbour graph is undefined)."""
    n = vectors.shape[0]
    if n < 5:
        return pca_2d(vectors, seed)
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed, init="random" if n < 50
                        else "spectral")  # fmt: skip
    return reducer.fit_transform(vectors).astype(np.float32)


def gist_colours(run, node_id: np.ndarray) -> pd.DataFrame:
    """Per gist: lod, start and end (token span), score (latest recorded), last_expand (step; NaN if
    never), created (the step it was made at) and preview (its text's beginning)."""
    bs = int(run.knob("tree.block_size", 32))
    start, end = nodes.node_span(node_id, bs)
    df = pd.DataFrame({"node_id": node_id, "lod": nodes.node_lod(node_id), "start": start, "end": end})
    made = run.source("nodes")
    if made:
        q = f"SELECT node_id, min(step) AS created, any_value(preview) AS preview FROM {made[0]} GROUP BY node_id"
        df = df.merge(run.sql(q, made[1]).to_pandas(), on="node_id", how="left")
    else:
        df["created"], df["preview"] = np.nan, ""
    df["preview"] = df["preview"].fillna("")
    ent, dec = run.source("entries"), run.source("decisions")
    if ent:
        q = (f"SELECT node_id, arg_max(score, step * 100 + iteration) AS score FROM {ent[0]}"
             " WHERE lod >= 1 GROUP BY node_id")  # fmt: skip
        df = df.merge(run.sql(q, ent[1]).to_pandas(), on="node_id", how="left")
    else:
        df["score"] = np.nan
    if dec:
        q = (f"SELECT node_id, max(step) AS last_expand FROM {dec[0]}"
             " WHERE action = 'expand' AND outcome = 'applied' GROUP BY node_id")  # fmt: skip
        df = df.merge(run.sql(q, dec[1]).to_pandas(), on="node_id", how="left")
    else:
        df["last_expand"] = np.nan
    return df


def jump_step(gist: pd.Series) -> int:
    """The Timeline step a click on a gist opens: the last step it was expanded at, else the step it
    was made at (0 when neither is known)."""
    for col in ("last_expand", "created"):
        v = gist.get(col)
        if v is not None and not pd.isna(v):
            return int(v)
    return 0


# ------------------------------------------------------------------------------ UMAP, in the background


def cache_path(run_dir: str | os.PathLike) -> Path:
    """Where the run's UMAP cache lives (`app.jobs.cache_dir`: the run folder for the user's own runs;
    shipped sample runs stay as shipped, read-only folders work)."""
    return jobs.cache_dir(run_dir, "gist_map") / UMAP_FILE


def read_umap(run_dir: str | os.PathLike, total: int | None = None) -> pd.DataFrame | None:
    """The cached UMAP (node_id, x, y), or None if there is none (or, given `total`, if it was made
    from another number of gists). `attrs["meta"]` holds total, points and seconds."""
    path = cache_path(run_dir)
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return None
    meta = json.loads((t.schema.metadata or {}).get(_META, b"{}"))
    if total is not None and meta.get("total") != total:
        return None  # made while the run had fewer gists
    df = t.to_pandas()
    df.attrs["meta"] = meta
    return df


def umap_error(run_dir: str | os.PathLike) -> str | None:
    """The last background UMAP's one-line error, if it failed."""
    return jobs.error(cache_path(run_dir))


def umap_running(run_dir: str | os.PathLike) -> bool:
    return jobs.running(cache_path(run_dir))


def start_umap(run_dir: str | os.PathLike) -> subprocess.Popen | None:
    """Start the background UMAP of `run_dir` unless one is already running; returns the process."""
    cache = cache_path(run_dir)
    return jobs.start(cache, [sys.executable, "-m", "app.projection", str(Path(run_dir).resolve()), str(cache)])


def write_umap(run_dir: str | os.PathLike, cache: Path) -> Path:
    """Compute the UMAP of the run's gists and write it to `cache` atomically (the worker's job)."""
    from telemetry.reader import Run

    g = load_gists(Run(run_dir))
    if g is None:
        raise ValueError(f"{run_dir}: no gists recorded")
    t0 = time.perf_counter()
    xy = umap_2d(g.vectors)
    meta = {"total": g.total, "points": int(g.node_id.size), "seconds": round(time.perf_counter() - t0, 2)}
    table = pa.table({"node_id": g.node_id, "x": xy[:, 0], "y": xy[:, 1]})
    table = table.replace_schema_metadata({_META: json.dumps(meta).encode()})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, cache)  # a reader sees the old cache or the new one, never half of one
    return cache


def main(argv: list[str]) -> int:
    run_dir, cache = argv[0], Path(argv[1])
    try:
        write_umap(run_dir, cache)
        return 0
    except Exception as e:  # the page shows this one line; the traceback stays in the log
        line = str(e).splitlines()[0] if str(e) else ""
        jobs.error_path(cache).write_text(f"{type(e).__name__}: {line}")
        raise
    finally:
        jobs.lock_path(cache).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
