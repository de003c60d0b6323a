"""`--set field=value` for the trainers' frozen configs: one name per knob, typed by the dataclass.

A trainer's config is a flat frozen dataclass; `apply_sets(cfg, ["steps=400", "lr=3e-4"])` returns a
new config (its `__post_init__` validates). Unknown fields and unparsable values raise one-line
ValueErrors. Nothing else lives here.
"""

from __future__ import annotations

import dataclasses
import typing


def _parse(text: str, typ: object, key: str) -> object:
    try:
        if typ is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
        if typing.get_origin(typ) is tuple:
            inner = typing.get_args(typ)[0]
            return tuple(_parse(p.strip(), inner, key) for p in text.split(",") if p.strip())
    except ValueError:
        pass
    raise ValueError(f"{key}: cannot parse {text!r} as {getattr(typ, '__name__', typ)}")


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
        changes[key] = _parse(text, hints[key], key)
    return dataclasses.replace(cfg, **changes)
