"""Rebuild one recorded step exactly, for the tools that re-run the run's model on it (the probe, the
attention detail).

`rebuild_step(run, t)` loads the run's model and nets, re-reads its document (re-tokenised and proved
against the recording, `studio.run_text.document_tokens`), fills a session's gist tree with the tokens
read by step t (one refocus step's tokens at a time, as the recorder appended them) and rebuilds the
WC the step's first scorer round saw, from the entries table. `allocator_state` adds the allocator's
state there (what LensNet's features read) and `edited_wc` the WC after the step's edits, both from a
fast replay of the recording, which reproduces the recorded WCs exactly with the run's own knobs
(checked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import nodes
from contract.config import RunConfig
from contract.events import NullSink
from studio.replay import load_recording, model_spec_of
from studio.run_text import document_tokens
from telemetry.reader import Run


class StepError(ValueError):
    """The step cannot be rebuilt; one line naming the run and the reason."""


@dataclass
class Rebuilt:
    run: Run
    cfg: RunConfig
    step: int
    engine: object  # engine.runtime.Engine: the run's model, GistNet and scorer
    session: object  # engine.session.Session: its tree holds the tokens read by `step`, its `step` is `step`
    tokens: np.ndarray  # int [N]: the whole document
    seen: int  # tokens read when the step refocused
    wc: object  # engine.working_context.WorkingContext: what the step's first scorer round saw
    raw: np.ndarray  # float32 [n]: the recorded raw score of each WC entry (WC order)
    score: np.ndarray  # float32 [n]: the recorded final score

    @property
    def model(self):
        return self.engine.model


def run_config(run: Run) -> RunConfig:
    try:
        return RunConfig.from_dict(run.manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise StepError(f"{run.path}: no usable config in its manifest ({str(e).splitlines()[0]})") from None


def rebuild_step(run_dir: str | Path, step: int, *, device: str = "auto",
                 progress: Callable[[str], None] = lambda s: None) -> Rebuilt:  # fmt: skip
    """Step `step` of the run as its recorder had it (see the module doc). Raises StepError,
    `studio.run_text.TextError` (the document cannot be rebuilt) or
    `engine.model_loader.ModelLoadError` (the run's model is missing)."""
    from engine.runtime import build_engine  # torch and the model: only the tools that re-run it need them
    from engine.working_context import WorkingContext

    run = Run(run_dir)
    cfg = run_config(run)
    steps = run.table("steps", columns=["step", "tokens_seen"], where=f"step = {int(step)}")
    e = run.table("entries", columns=["node_id", "start", "raw_score", "score"],
                  where=f"step = {int(step)} AND iteration = 0")  # fmt: skip
    if steps.num_rows == 0 or e.num_rows == 0:
        raise StepError(f"{run.path}: step {step} has no recorded working context")
    seen = int(steps["tokens_seen"][0].as_py())
    progress("loading the run's model")
    engine = build_engine(cfg, model_spec_of(run.manifest.get("model", {})), device)
    progress("re-reading the document")
    tokens = document_tokens(run, engine.model)
    progress(f"building the gist tree over {seen:,} tokens")
    session = engine.session(NullSink())
    every = cfg.session.refocus_every
    for lo in range(0, seen, every):  # as the session appends: one refocus step's tokens at a time
        session.tree.append(tokens[lo : min(seen, lo + every)])
    session.step = int(step)
    order = np.argsort(e["start"].to_numpy(), kind="stable")
    ids = e["node_id"].to_numpy()[order]
    first = int(e["start"].to_numpy()[order][0])
    wc = WorkingContext(cfg.tree.block_size, cfg.tree.max_lod, seen, first, nodes.node_lod(ids), nodes.node_index(ids))
    raw, score = (e[c].to_numpy()[order].astype(np.float32) for c in ("raw_score", "score"))
    return Rebuilt(run, cfg, int(step), engine, session, tokens, seen, wc, raw, score)


def replayed(r: Rebuilt, step: int):
    """(WC, allocator state) as step `step - 1` left them (`engine.allocator_types.AllocatorState`), from
    a fast replay of the recording with its own knobs, which reproduces what the recorder had."""
    from studio.fast_replay import replay_fast

    stats = replay_fast(load_recording(r.run.path), r.cfg, NullSink(), record_entries=False, stop_before=step)
    if stats.stopped_at is None:
        raise StepError(f"{r.run.path}: the replay of its recording ended before step {step}")
    return stats.stopped_at


def allocator_state(r: Rebuilt):
    """The allocator's state as step `r.step` began (what LensNet's features read). StepError if the
    replay's WC there is not the recorded one (a recording from other code, or one whose scores were
    not all recorded)."""
    wc, state = replayed(r, r.step)
    if not np.array_equal(wc.advance(r.seen).node_id, r.wc.node_id):
        raise StepError(f"{r.run.path}: replaying the recording does not rebuild step {r.step}'s working context")
    return state


def edited_wc(r: Rebuilt):
    """The WC after step `r.step`'s edits: what the base model read for the next block."""
    return replayed(r, r.step + 1)[0]


__all__ = ["Rebuilt", "StepError", "allocator_state", "edited_wc", "rebuild_step", "replayed", "run_config"]
