"""How a page draws a knob: its widget kind, bounds and help, read from the knob's declaration.

A knob's type, range and meaning are declared once, on its config field (`contract.config.knob`);
this module turns them into what a Streamlit input needs, so that no page restates a range. Pure:
no streamlit.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from contract.config import RunConfig, knob_spec


@dataclass(frozen=True)
class KnobWidget:
    """How the page draws one knob: kind ("int", "float" or "pair": left,right), the closed bounds a
    number input can enforce (None where the range is open or unbounded: validation still refuses
    the value, with its one line), and the help text (meaning and what it allows)."""

    name: str
    kind: str
    lo: float | None
    hi: float | None
    help: str


def choices(name: str) -> tuple[str, ...]:
    """The values a text knob allows (e.g. `scorer.name`), from its declaration."""
    return knob_spec(name)[1].choices


def defaults() -> dict[str, object]:
    """Every knob's default, by its one name."""
    return RunConfig().flat()


def knob_widget(name: str) -> KnobWidget:
    typ, spec = knob_spec(name)
    kind = "pair" if typing.get_origin(typ) is tuple else "int" if typ is int else "float"
    lo = None if spec.lo is None or spec.lo_open or kind == "pair" else typ(spec.lo)
    hi = None if spec.hi is None or spec.hi_open or kind == "pair" else typ(spec.hi)
    allowed = "; ".join(spec.allowed())
    return KnobWidget(name, kind, lo, hi, f"{spec.help} ({allowed})" if allowed else spec.help)
