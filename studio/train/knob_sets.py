"""`--set field=value` for the trainers' frozen configs: one name per knob, typed by the dataclass.

A trainer's config is a flat frozen dataclass; `apply_sets(cfg, ["steps=400", "lr=3e-4"])` returns a
new config (its `__post_init__` validates). Unknown fields and unparsable values raise one-line
ValueErrors; values parse as the engine's own `--set` does (`contract.config.parse_value`).
"""

from __future__ import annotations

import dataclasses
import typing

from contract.config import parse_value


def apply_sets(cfg, sets: list[str] | tuple[str, ...]):
    """A copy of the dataclass `cfg` with `field=value` overrides applied (validated by the class)."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for item in sets:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cfg))
            raise ValueError(f"--set expects field=value with a field of {type(cfg).__name__} ({known}); got {item!r}")
        changes[key] = parse_value(text, hints[key], key)
    return dataclasses.replace(cfg, **changes)
