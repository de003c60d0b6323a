"""Fixtures shared by the app tests of the Knobs lab, Record and Gist map pages.

- `record(out, *sets)`: a real, small recording (tiny model, tests/data/sample.txt, no NLL) made by
  the engine's command line, so that replaying it with its own knobs is exact;
- `synthetic_run(path, gists=...)`: a hand-made run folder (tests/telemetry_fixtures events) with,
  optionally, hand-made gists (two clusters, an LOD2 gist too) recorded by the sink like any other;
- `plotly_points(element)`: how many points a rendered plotly chart draws (typed arrays decoded);
- `stop(procs)`: end the background processes a test started, by their Popen handles; `stop_jobs()`
  those the app's background jobs started.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from contract import GistsRecorded, nodes
from tests import telemetry_fixtures as tf

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample.txt"
# The random scorer thrashes; no cooldown or margin: hysteresis knobs then change a lot.
THRASH = ("wc.w_max=400", "allocator.cooldown_steps=0", "allocator.hysteresis_margin=0",
          "session.compute_nll=false", "session.max_tokens=4000", "session.record_gists=false")  # fmt: skip


def record(out: Path, *sets: str, scorer: str = "random") -> Path:
    cmd = [sys.executable, "-m", "engine", "record", "--quiet",
           "--model", "tiny", "--input", str(SAMPLE), "--out", str(out),
           "--scorer", scorer]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def synthetic_run(path: Path, *, n_steps: int = 12, gists: bool = True, d: int = 16) -> int:
    """A run folder from hand-made events; returns the number of gists written (0 if none).

    The events' own gists are replaced by hand-made ones (two clusters, an LOD2 gist too), or
    removed (`gists=False`: a recording from before the table, or with `session.record_gists=false`).
    """
    evs = [e for e in tf.events(n_steps) if not isinstance(e, GistsRecorded)]
    if not gists:
        tf.record(path, evs)
        shutil.rmtree(path / "gists", ignore_errors=True)
        return 0
    n_blocks = n_steps + 3
    lod = np.array([1] * n_blocks + [2], np.int8)
    idx = np.array(list(range(n_blocks)) + [0], np.int64)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(lod.size, d)).astype(np.float32)
    vec[: n_blocks // 2] += 3.0  # two clusters, so a projection has something to show
    step = np.minimum(idx, n_steps - 1).astype(np.int32)
    tf.record(path, [*evs[:-1], GistsRecorded(step, nodes.node_id(lod, idx), lod, vec), evs[-1]])
    return lod.size


def _count(v) -> int:
    if isinstance(v, dict) and "bdata" in v:  # plotly's typed array encoding
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).size
    return len(v) if v is not None else 0


def plotly_points(element) -> int:
    spec = json.loads(element.proto.spec)
    return sum(_count(tr.get("x")) for tr in spec["data"])


def stop_jobs() -> None:
    """End the background jobs this process's app started (`app.jobs`) and forget them."""
    from app import jobs

    stop(jobs.processes())
    jobs.processes().clear()


def stop(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
        p.wait(timeout=30)
