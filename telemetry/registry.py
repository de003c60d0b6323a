"""The metric registry: every number of a run's summary (`METRICS`) and every per-step line
(`LINES`) as the tables, pages and charts name and read them: key, label, unit, which direction is
better, whether it needs the base model's NLL, and which columns a chart plots.

One registry, so that the CLI, the pages and the Knobs lab cannot disagree on a name or a direction.
This module computes nothing (the numbers are `telemetry.metrics` and `telemetry.run_metrics`) and
imports neither numpy nor pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One number of `summary`, as every table and page names and reads it (DESIGN section 4)."""

    key: str  # the `summary` key
    label: str  # its name on every page
    unit: str = ""  # what it counts, shown beside the label
    better: str = ""  # "lower", "higher", or "" when neither is better (a count)
    nll: bool = False  # needs the base model's NLL: absent from a fast re-plan (the Knobs lab)
    headline: bool = False  # one of the few columns of the Runs table

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


METRICS: tuple[Metric, ...] = (
    Metric("swap_rate", "swap rate", "applied edits / entries", "lower", headline=True),
    Metric("ping_pongs_per_edit", "ping-pongs per edit", better="lower", headline=True),
    Metric("ping_pongs", "ping-pongs", better="lower"),
    Metric("applied_edits", "applied edits"),
    Metric("locality", "locality", better="higher", headline=True),
    Metric("adjacent_share", "expansions adjacent to detail", better="higher"),
    Metric("sequential_score", "sequential score", better="higher", headline=True),
    Metric("residency_mean", "residency mean", "steps", "higher", headline=True),
    Metric("residency_p95", "residency p95", "steps", "higher"),
    Metric("utilization", "utilization", "cost / w_max", "higher", headline=True),
    Metric("coherence", "coherence", better="higher", headline=True),
    Metric("nll", "NLL", "nats", "lower", nll=True),
    Metric("delta_nll_full", "ΔNLL vs full context", "nats", "lower", nll=True, headline=True),
    Metric("delta_nll_recency", "ΔNLL vs recency window", "nats", "lower", nll=True, headline=True),
)
HEADLINE = tuple(m.key for m in METRICS if m.headline)
METRIC = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Line:
    """One per-step series as a chart draws it: the columns to plot, a title and the y axis."""

    series: str  # a name of `telemetry.run_metrics.SERIES`
    columns: tuple[str, ...]
    title: str
    y_title: str
    connect: bool = False  # measured at some steps only (NLL every `session.nll_every`): join the points


LINES: tuple[Line, ...] = (  # NLL first: whether focus helps the model is the first question
    Line("delta_nll", ("nll", "nll_full", "nll_recency"), "NLL", "nats per token, next block", connect=True),
    Line("delta_nll", ("d_full", "d_recency"), "ΔNLL", "nats (policy minus baseline)", connect=True),
    Line("swap_rate", ("swap_rate",), "Swap rate", "applied edits / entries"),
    Line("oscillation", ("ping_pongs",), "Oscillation", "ping-pongs"),
    Line("locality", ("locality",), "Locality", "1 = one region of detail"),
    Line("sequential", ("sequential",), "Sequential score", "share within one block"),
    Line("utilization", ("utilization",), "Utilization", "cost / w_max"),
    Line("coherence", ("coherence",), "Coherence", "share of high scores made finer"),
)
LINE_NAMES = {  # legend names of columns
    "d_full": "vs full context",
    "d_recency": "vs recency window",
    "nll": "this policy",
    "nll_full": "full context",
    "nll_recency": "recency window",
}
