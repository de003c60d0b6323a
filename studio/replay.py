"""Replay from and into run folders: read a recording (`load_recording`) and re-plan it with other
knobs into a new run folder (`replay_run`): fast (`studio.fast_replay.replay_fast`, the recorded
scores re-planned in memory) or exact (the whole session run again, scorer and base model included,
over the recording's input). Re-planning and measuring in memory, with no folder written, is
`studio.fast_replay.replan`.

The source must have ended: a run still recording (fresh heartbeat) is refused. An interrupted or
failed source is replayed as far as it goes, and the replay's manifest records `source_status`
(the parent's status when the replay ran) and, always, `source_problems`: the one-line reasons of
the part files the reader skipped (`telemetry.reader.Run.problems`; empty when none), also in the
returned summary, so that a replay of a damaged run says so. Fast mode replays the steps up to the
first gap in the recorded step numbers (a skipped `steps` part leaves one).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np

from contract.config import RunConfig, apply_overrides, changed_knobs
from contract.events import GistsRecorded, NodesAdded, RunFinished, RunStarted, TextRecorded
from studio.fast_replay import FAST_KNOB_SECTIONS, Recording, ReplayError, replay_fast
from telemetry.reader import Run
from telemetry.writer import MANIFEST, ParquetSink


def load_recording(run_dir: str | Path) -> Recording:
    return _recording_of(Run(run_dir))


def _config_of(run) -> RunConfig:
    """The config a run recorded, or ReplayError naming its manifest file and the bad knob."""

    try:
        return RunConfig.from_dict(run.manifest["config"])
    except KeyError:
        raise ReplayError(f"{run.path / MANIFEST}: no config recorded") from None
    except (TypeError, ValueError) as e:
        raise ReplayError(f"{run.path / MANIFEST}: config: {str(e).splitlines()[0]}") from None


def _recording_of(run) -> Recording:
    """What fast replay needs from an open `telemetry.reader.Run` (its skipped parts land in `run.problems`)."""
    cfg = _config_of(run)
    steps = run.table("steps", columns=["step", "tokens_seen"])
    order = np.argsort(steps["step"].to_numpy(), kind="stable")
    gap = np.flatnonzero(steps["step"].to_numpy()[order] != np.arange(order.size))
    if gap.size:  # a skipped or lost part: step t's tokens must meet step t's entries, so stop before the gap
        order = order[: gap[0]]
    tokens = steps["tokens_seen"].to_numpy().astype(np.int64)[order]
    if tokens.size == 0:
        raise ReplayError(f"{run.path}: the recording has no steps to replay")
    e = run.table("entries", columns=["step", "iteration", "node_id", "raw_score"])
    step, it = e["step"].to_numpy().astype(np.int32), e["iteration"].to_numpy().astype(np.int16)
    node_id, raw = e["node_id"].to_numpy(), e["raw_score"].to_numpy()
    if _sorted_by_step_iteration(step, it):  # the recorded order (always, from the engine): no sort needed
        return Recording(cfg, tokens, step, it, node_id, raw)
    o = np.lexsort((it, step))
    return Recording(cfg, tokens, step[o], it[o], node_id[o], raw[o])


def _sorted_by_step_iteration(step: np.ndarray, it: np.ndarray) -> bool:
    """True when rows are already in (step, iteration) order, so the stable sort would be the identity."""
    if step.size < 2:
        return True
    ds = np.diff(step)
    if np.any(ds < 0):
        return False
    return not np.any((ds == 0) & (it[1:] < it[:-1]))


def replay_run(parent: str | Path, out: str | Path, sets: list[str], *, exact: bool = False, device: str = "auto",
               overwrite: bool = False) -> dict:  # fmt: skip
    """Replay run `parent` into a new run folder `out` with `sets` applied. Returns a summary dict,
    with `source_status` and `source_problems` (the source's skipped part files; see the module doc)."""

    run = Run(parent)
    status = run.status
    if status == "recording":  # its last steps are not written yet: the replay would be marked complete
        raise ReplayError(f"{parent} is still recording; replay it after it ends")
    manifest = run.manifest
    base = _config_of(run)
    cfg = apply_overrides(base, sets)
    changed = changed_knobs(base, cfg)
    if Path(out).resolve() == Path(parent).resolve():
        raise ReplayError("replay --out must be a new folder, not the recording itself")
    run.tables()  # checks every part file of the source once: the ones it skips are listed in run.problems
    if exact:
        return _replay_exact(manifest, parent, out, cfg, changed, device, overwrite, status, list(run.problems))
    bad = [k for k in changed if k.split(".")[0] not in FAST_KNOB_SECTIONS]
    if bad:
        raise ReplayError(
            f"fast replay reuses the recorded scores, so it can change allocator.* and wc.* knobs only, "
            f"not {', '.join(bad)}; use --exact"
        )
    rec = _recording_of(run)
    t0 = time.perf_counter()
    with ParquetSink(out, parent=str(Path(parent).resolve()), changed_knobs=changed, overwrite=overwrite,
                     extra={"replay": "fast", "source_status": status}) as sink:  # fmt: skip
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        model, scorer = manifest.get("model", {}), manifest.get("scorer", cfg.scorer.name)
        sink.emit(RunStarted(cfg, model, scorer, manifest.get("input", "-"), now))
        nodes_t = run.table("nodes", columns=["step", "node_id", "lod", "start", "end", "preview"])
        if nodes_t.num_rows:
            # One event for the whole table: `step` as a per-row column keeps each node's first step.
            sink.emit(NodesAdded(nodes_t["step"].to_numpy(), nodes_t["node_id"].to_numpy(), nodes_t["lod"].to_numpy(),
                                 nodes_t["start"].to_numpy(), nodes_t["end"].to_numpy(),
                                 nodes_t["preview"].to_pylist()))  # fmt: skip
        text_t = run.table("text") if "text" in run.tables() else None
        if text_t is not None and text_t.num_rows:  # same document: the text view works on the replay too
            sink.emit(TextRecorded(*(text_t[c].to_numpy() for c in ("step", "node_id", "start", "end")),
                                   text_t["text"].to_pylist()))  # fmt: skip
        gists_t = run.table("gists") if "gists" in run.tables() else None
        if gists_t is not None and gists_t.num_rows:  # same tree, same gists: the map works on the replay too
            vec = gists_t["vector"].combine_chunks()
            d = len(vec[0]) if len(vec) else 0
            g_step, g_id, g_lod = (gists_t[c].to_numpy() for c in ("step", "node_id", "lod"))
            sink.emit(GistsRecorded(g_step, g_id, g_lod, vec.flatten().to_numpy().reshape(-1, d)))
        stats = replay_fast(rec, cfg, sink)
        sink.manifest["approximate"] = stats.approximate
        sink.manifest["approximate_lookups"] = stats.approximate_lookups
        problems = sink.manifest["source_problems"] = list(run.problems)  # all tables read by now
        sink.emit(RunFinished("complete", int(rec.tokens_seen[-1]), stats.steps))
    return {"out": str(out), "mode": "fast", "changed_knobs": changed, "steps": stats.steps,
            "approximate": stats.approximate, "approximate_lookups": stats.approximate_lookups,
            "source_status": status, "source_problems": problems,
            "wall_s": round(time.perf_counter() - t0, 3)}  # fmt: skip


def model_spec_of(model: dict) -> str:
    """The `--model` spec that loads the model a manifest names."""
    mid = str(model.get("id", ""))
    if mid.startswith("tiny-llama-seed"):
        return "tiny"
    return mid or "tiny"


def _replay_exact(manifest: dict, parent, out, cfg: RunConfig, changed: dict, device: str, overwrite: bool,
                  status: str, problems: list[str]) -> dict:  # fmt: skip
    from engine.runtime import build_engine  # torch: only an exact replay needs it, not the app's fast path
    from engine.textio import read_text

    src = manifest.get("input", "-")
    if src in ("-", "", None) or not Path(src).is_file():
        raise ReplayError(f"exact replay re-reads the recording's input, but {src!r} is not a readable file")
    t0 = time.perf_counter()
    engine = build_engine(cfg, model_spec_of(manifest.get("model", {})), device)
    with ParquetSink(out, parent=str(Path(parent).resolve()), changed_knobs=changed, overwrite=overwrite,
                     extra={"replay": "exact", "approximate": False, "source_status": status,
                            "source_problems": problems}) as sink:  # fmt: skip
        done = engine.session(sink, src).run(read_text(src))
    return {"out": str(out), "mode": "exact", "changed_knobs": changed, "steps": done.steps, "approximate": False,
            "source_status": status, "source_problems": problems,
            "wall_s": round(time.perf_counter() - t0, 3)}  # fmt: skip
