"""Typed events a session emits, and the sink interface that receives them.

A session never writes files itself: it emits these events in order to a `Sink`. The in-memory
sink here serves tests; the Parquet sink lives in `telemetry/writer.py`. Array fields are numpy,
one element per row, so a sink can write a whole event as a columnar batch.

Order per refocus step t: `NodesAdded` (nodes completed since t-1), `TextRecorded` (the text of its
blocks) and `GistsRecorded` (their vectors, when `session.record_gists`), then per iteration
`EntriesRecorded` and `DecisionsRecorded`, then optional `LensAttention` and `AttentionRecorded`;
`StepRecorded` for step t comes once its NLL is known (when the next block has been read, or at
the end of the stream). `RunStarted` comes first and `RunFinished` last, also after a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contract.config import RunConfig
from contract.decisions import Decisions


@dataclass(frozen=True)
class RunStarted:
    config: RunConfig
    model: dict  # {"id": str, "hidden_size": int, "vocab_size": int, "dtype": str, "device": str}
    scorer: str
    input_name: str  # file path, or "-" for stdin
    created_at: str  # ISO-8601 UTC


@dataclass(frozen=True, eq=False)
class NodesAdded:
    step: int | np.ndarray  # first step at which these nodes exist (int32[k] per node when a replay copies them)
    node_id: np.ndarray  # int64[k]
    lod: np.ndarray  # int8[k]
    start: np.ndarray  # int64[k]
    end: np.ndarray  # int64[k]
    preview: list[str]  # decoded text at the start of each node's span (at most ~80 chars)


@dataclass(frozen=True, eq=False)
class TextRecorded:
    """The whole decoded text of each block (LOD0 node) completed since the last step: the document
    itself, for the app's text view (previews hold only a node's first tokens)."""

    step: int | np.ndarray  # first step at which these blocks exist (or int32[k], as NodesAdded)
    node_id: np.ndarray  # int64[k], LOD0 nodes
    start: np.ndarray  # int64[k]
    end: np.ndarray  # int64[k]
    text: list[str]  # each block decoded on its own (a character split between blocks decodes as U+FFFD)


@dataclass(frozen=True, eq=False)
class GistsRecorded:
    """The vectors of LOD>=1 nodes completed since the last step (for the app's gist map)."""

    step: int | np.ndarray  # first step at which these gists exist (or int32[k], as NodesAdded)
    node_id: np.ndarray  # int64[k]
    lod: np.ndarray  # int8[k], >= 1
    vector: np.ndarray  # float32[k, d] as the tree holds them (the base model's embedding space)


@dataclass(frozen=True, eq=False)
class EntriesRecorded:
    step: int
    iteration: int
    node_id: np.ndarray  # int64[n] the WC the scorer saw this iteration, in order
    lod: np.ndarray  # int8[n]
    start: np.ndarray  # int64[n]
    end: np.ndarray  # int64[n]
    cost: np.ndarray  # int32[n]
    raw_score: np.ndarray  # float32[n] scorer output
    score_interp: np.ndarray  # float32[n] after the interpolation gate
    score_shift: np.ndarray  # float32[n] after the shift kernel
    score: np.ndarray  # float32[n] after sharpening (the allocator's input)


@dataclass(frozen=True, eq=False)
class DecisionsRecorded:
    step: int
    iteration: int
    decisions: Decisions


@dataclass(frozen=True, eq=False)
class AttentionRecorded:
    step: int
    layer: np.ndarray  # int16[k]
    node_id: np.ndarray  # int64[k]; -1 marks the raw tail
    mass: np.ndarray  # float32[k] mean attention mass from the newest block's queries, heads averaged


@dataclass(frozen=True, eq=False)
class LensAttention:
    step: int
    iteration: int
    node_id: np.ndarray  # int64[n]
    mass: np.ndarray  # float32[n] LensNet query->entry attention mass


@dataclass(frozen=True)
class StepRecorded:
    step: int
    tokens_seen: int  # tokens read when the step refocused
    n_entries_start: int  # entries when the step began (after the new blocks were appended)
    n_entries: int  # after the step's edits
    wc_cost: int  # after the step's edits (tail included)
    w_max: int
    evicted_upto: int
    n_applied: int  # applied edits over the step's iterations, forced ones included
    n_forced: int
    nll: float | None  # next block's NLL (nats/token) under this step's WC; None if not computed
    nll_full: float | None  # same tokens under the whole history (baseline), if computed
    nll_recency: float | None  # same tokens under a raw window of w_max tokens (baseline), if computed
    t_tree_ms: float  # reading, tokenising and gisting since the previous step
    t_scorer_ms: float
    t_allocator_ms: float
    t_model_ms: float  # NLL and attention forwards attributed to this step


@dataclass(frozen=True)
class RunFinished:
    status: str  # "complete" or "failed"
    tokens: int
    steps: int
    error: str | None = None


def interrupt_reason(e: KeyboardInterrupt) -> str:
    """`RunFinished.error` of a run a signal ended: studio.cli raises KeyboardInterrupt subclasses whose
    message names the signal (`stopped by SIGTERM`); a bare KeyboardInterrupt is SIGINT."""
    return str(e) or "stopped by SIGINT"


Event = RunStarted | NodesAdded | EntriesRecorded | DecisionsRecorded | AttentionRecorded | LensAttention
Event = Event | TextRecorded | GistsRecorded | StepRecorded | RunFinished


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...


@dataclass
class MemorySink:
    """Keeps every event in a list (tests, notebooks)."""

    events: list = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class NullSink:
    """Drops everything (benchmarks measure the engine alone against it)."""

    def emit(self, event: Event) -> None:
        pass
