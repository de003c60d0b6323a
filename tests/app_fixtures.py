"""Shared fixtures for the app's AppTest tests: small runs recorded into a temporary run root.

`run_roots(tmp)` records, through the real `ParquetSink`, the hand-made event streams of
`tests/telemetry_fixtures.py` (no model: milliseconds each) into `<tmp>/samples`:
- `small`: 8 complete steps (attention at even steps, mass `layer + position / 1000`; LensNet
  attention at every step);
- `replay`: the same stream with every decision score halved, its manifest naming `small` as parent;
- `live`: 3 steps and no RunFinished, its manifest marked `recording` with a fresh heartbeat;
- `stale`: the same, with a heartbeat an hour old (shows as `interrupted`);
- `broken`: a folder with no manifest (shows as `invalid`).
`<tmp>/mine` is the writable runs folder (empty). `point_app_at(monkeypatch, roots)` sets
`MCS_SAMPLE_RUNS` / `MCS_RUNS_DIR` so the app lists exactly these.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import numpy as np

from contract import AttentionRecorded, DecisionsRecorded
from tests.telemetry_fixtures import events, record

N_STEPS = 8


def _manifest(run_dir: Path, **changes) -> None:
    p = run_dir / "manifest.json"
    m = json.loads(p.read_text())
    m.update(changes)
    p.write_text(json.dumps(m))


def copy_with_model(src: Path, dst: Path, model_id: str) -> Path:
    """A copy of run `src` whose manifest names another model (a folder that is gone, or not a model)."""
    import shutil

    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    _manifest(dst, model={**m["model"], "id": model_id})
    return dst


def heartbeat(run_dir: Path, seconds_ago: float = 0.0) -> None:
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)).isoformat()
    _manifest(run_dir, status="recording", heartbeat_at=stamp)


def _halved(evs):
    out = []
    for e in evs:
        if isinstance(e, DecisionsRecorded):
            d = e.decisions
            d = type(d)(**{**{k: getattr(d, k) for k in d.__dataclass_fields__}, "score": d.score * 0.5})
            e = DecisionsRecorded(e.step, e.iteration, d)
        out.append(e)
    return out


def distinct_attention(evs):
    """Attention events whose mass tells layer and WC position apart: `layer + position / 1000`
    (the fixture's own masses are all equal, so a transposed or shuffled heatmap would still pass)."""
    out = []
    for e in evs:
        if isinstance(e, AttentionRecorded):
            k = e.node_id.size // 2
            mass = (e.layer.astype(np.float32) + np.tile(np.arange(k, dtype=np.float32), 2) / 1000).astype(np.float32)
            e = AttentionRecorded(e.step, e.layer, e.node_id, mass)
        out.append(e)
    return out


def run_roots(tmp: Path) -> dict:
    samples, mine = tmp / "samples", tmp / "mine"
    samples.mkdir(parents=True, exist_ok=True)
    mine.mkdir(exist_ok=True)
    evs = distinct_attention(events(N_STEPS))
    record(samples / "small", evs, flush_rows=25)
    record(samples / "replay", _halved(evs))
    record(samples / "scenario", evs)
    _manifest(
        samples / "scenario",
        scenario={
            "name": "passkey",
            "needle_span": [64, 80],
            "passkey": "48213",
            "result": {"needle_lod": 0, "recovered": True, "answer_nll": 0.25},
        },
    )
    _manifest(samples / "replay", parent=str(samples / "small"), changed_knobs={"allocator.cooldown_steps": 4})
    for name, age in (("live", 0.0), ("stale", 3600.0)):
        record(samples / name, events(3, finish=False))
        heartbeat(samples / name, age)
    (samples / "broken").mkdir()
    (samples / "broken" / "notes.txt").write_text("not a run")
    return {"samples": samples, "mine": mine, "events": evs}


def event_at(evs, kind, step: int):
    """The first event of type `kind` at `step` in an event stream."""
    return next(e for e in evs if isinstance(e, kind) and e.step == step)


def point_app_at(monkeypatch, roots: dict) -> None:
    monkeypatch.setenv("MCS_SAMPLE_RUNS", str(roots["samples"]))
    monkeypatch.setenv("MCS_RUNS_DIR", str(roots["mine"]))


def fig_json(element) -> dict:
    """The plotly figure JSON an AppTest `plotly_chart` element carries."""
    return json.loads(element.proto.spec)


def decode(v) -> np.ndarray:
    """A plotly JSON array (a list, or a typed-array dict `{dtype, bdata, shape}`) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape:
            a = a.reshape([int(s) for s in str(shape).split(",")])
        return a
    return np.asarray(v, dtype=float)


def charts(at) -> list[dict]:
    return [fig_json(e) for e in at.get("plotly_chart")]


PAGES = Path(__file__).resolve().parents[1] / "app" / "views"


def open_page(name: str, timeout: float = 60, **params):
    """Run one page file directly (no navigation) with `params` as its URL query; returns the AppTest."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=timeout)
    for k, v in params.items():
        at.query_params[k] = str(v)
    return at.run()


def clean(at) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def frame_with(at, *columns: str):
    """The first st.dataframe on the page holding all of `columns` (AppTest does not expose their keys)."""
    for df in at.dataframe:
        if all(c in df.value.columns for c in columns):
            return df.value
    raise AssertionError(f"no dataframe with columns {columns}: {[list(d.value.columns) for d in at.dataframe]}")


def shown_rows(d, max_lod: int = 2) -> list[int]:
    """Rows of a recorded decision table in the order the decisions tables show them: the applied edits
    by `seq`, then the other candidates as recorded, without the structurally impossible ones
    (expanding LOD0, collapsing above `max_lod`). Written from the events, not from the app's code."""
    from contract import APPLIED, COLLAPSE, EXPAND

    rows = range(len(d))
    impossible = {k for k in rows if (d.action[k] == EXPAND and d.lod_from[k] == 0)
                  or (d.action[k] == COLLAPSE and d.lod_to[k] > max_lod)}  # fmt: skip
    applied = sorted((k for k in rows if d.outcome[k] == APPLIED), key=lambda k: int(d.seq[k]))
    return [k for k in applied if k not in impossible] + [
        k for k in rows if d.outcome[k] != APPLIED and k not in impossible
    ]


def capture_downloads(monkeypatch) -> dict[str, bytes]:
    """Record every file the app hands to a download button, by its media id (AppTest keeps them in a
    storage it throws away after the run). Use `download(files, button)` to read one back."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = path_or_data if isinstance(path_or_data, bytes) else path_or_data.encode()
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return files


def downloads(at, files: dict[str, bytes]) -> list[tuple]:
    """Each (CSV, Parquet) button pair on the page, in order, decoded: [(csv frame, parquet frame, name)]."""
    import io
    import os

    import pandas as pd

    buttons = [b.proto for b in at.get("download_button")]
    csv = [b for b in buttons if b.label == "CSV"]
    parquet = [b for b in buttons if b.label == "Parquet"]
    assert len(csv) == len(parquet), [b.label for b in buttons]
    out = []
    for c, p in zip(csv, parquet, strict=True):
        get = lambda b: files[os.path.splitext(b.url.rsplit("/", 1)[-1])[0]]  # noqa: E731
        out.append((pd.read_csv(io.BytesIO(get(c))), pd.read_parquet(io.BytesIO(get(p))), p.url))
    return out
