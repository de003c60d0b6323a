"""The generated references in README.md (knobs, telemetry schema) are current and complete.

The generator (`scripts/gen_reference.py`) is imported and run in-process. Expected values are taken
from the live dataclasses and schemas, not written down here, so these tests only fail when the
README or the generator is wrong, not when a default changes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import sys
import typing
from pathlib import Path

import pytest

from contract import AllocatorConfig, RunConfig, apply_overrides, knob_spec
from telemetry import CONTRACT, SCHEMA_VERSION, SCHEMAS

REPO = Path(__file__).resolve().parents[1]


def _load_generator():
    # scripts/ is not a package; register the module before running it so its dataclasses resolve.
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "scripts" / "gen_reference.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()


@pytest.fixture(scope="module")
def knobs():
    return {r.name: r for r in gen.knob_rows()}


def test_readme_is_current():
    stale = gen.stale_regions(gen.README)
    assert not stale, f"README.md regions {stale} are stale; run: .venv/bin/python scripts/gen_reference.py"


def test_check_reports_stale_and_rewrite_touches_only_the_regions(tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = gen.README.read_text(encoding="utf-8")
    start, stop = gen._region_span(text, "schema")
    readme.write_text(text[:start] + "\nold table\n" + text[stop:], encoding="utf-8")
    before = readme.read_text(encoding="utf-8")

    assert gen.main(["--check", "--readme", str(readme)]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "schema" in out and "knobs" not in out.split(":", 1)[1]
    assert readme.read_text(encoding="utf-8") == before  # --check never writes

    assert gen.main(["--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == text
    assert gen.main(["--check", "--readme", str(readme)]) == 0


def test_one_row_per_knob_in_declaration_order_each_with_a_meaning(knobs):
    assert list(knobs) == list(RunConfig().flat())
    assert all(r.meaning.strip() for r in knobs.values())


def _bad_values(typ: object) -> list[object]:
    if typ is bool:
        return []
    if typ is int:
        return [-(10**9), -1, 0, 10**9]
    if typ is float:
        return [-1e9, -1.0, 0.0, 1e9, math.nan]
    if typ is str:
        return ["no-such-value", ""]
    return [(9.0, 9.0), (-1.0, 0.0), (0.0,)]


def _refusals() -> dict[str, list[str]]:
    """Knob -> the range texts its section's `__post_init__` states when given values that are out of range.

    Found by constructing each section with bad values, not by reading the source, so a check the
    generator's AST walk misses still shows up here.
    """
    out: dict[str, list[str]] = {}
    for sec in dataclasses.fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[sec.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f"{sec.name}.{f.name}"
            for bad in _bad_values(hints[f.name]):
                try:
                    cls(**{f.name: bad})
                except ValueError as e:
                    m = re.match(rf"{re.escape(name)} must be (.*), got ", str(e))
                    if m:
                        out.setdefault(name, []).append(m.group(1))
    return out


def test_every_checked_knob_has_its_range_from_the_code(knobs):
    refused = _refusals()
    assert len(refused) >= len(knobs) // 2  # the probe itself works
    for name, texts in refused.items():
        row = knobs[name]
        assert row.checked, f"{name} is range-checked but the table shows no range for it"
        for text in texts:
            assert text in row.allowed.split("; "), f"{name}: table says {row.allowed!r}, the code says {text!r}"


def test_every_default_in_the_table_round_trips_through_set(knobs):
    # What the table shows is what a user would type: `--set knob=<default>` must give the default config.
    sets = []
    for r in knobs.values():
        value = json.loads(r.default) if r.default.startswith('"') else r.default
        sets.append(f"{r.name}={value}")
    assert apply_overrides(RunConfig(), sets) == RunConfig()


def test_knob_table_spot_checks():
    table = gen.render_knobs()
    line = next(x for x in table.splitlines() if x.startswith("| `allocator.cooldown_steps` |"))
    cells = [c.strip() for c in line.strip("|").split(" | ")]
    assert cells[1] == f"`{AllocatorConfig().cooldown_steps}`"
    assert cells[2] == "in [0, 10000]"
    kernel = next(x for x in table.splitlines() if x.startswith("| `allocator.shift_kernel` |"))
    assert "`" + ",".join(f"{w:g}" for w in AllocatorConfig().shift_kernel) + "`" in kernel
    assert gen.render_knobs() == table  # deterministic


def test_a_knob_declared_without_its_knob_stops_the_generator(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Section:
        plain: int = 3  # a comment is not enough: the meaning and range must be data on the field

    monkeypatch.setattr(gen, "_sections", lambda: [("extra", Section)])
    with pytest.raises(gen.DocError, match=r"extra\.plain is not declared with knob"):
        gen.knob_rows()


def test_every_knob_states_its_meaning_and_the_range_the_code_enforces():
    """The `Knob` on each field is what validation enforces: a value just outside a closed bound is
    refused, the bound itself is accepted (numbers only; rules on other knobs are checked above)."""
    for name in RunConfig().flat():
        typ, spec = knob_spec(name)
        assert spec.help.strip(), name
        if typ not in (int, float):
            continue
        for bound, is_open, step in ((spec.lo, spec.lo_open, -1), (spec.hi, spec.hi_open, +1)):
            if bound is None:
                continue
            outside = bound + step * (1 if typ is int else 1e-6)
            with pytest.raises(ValueError, match=re.escape(name)):
                apply_overrides(RunConfig(), [f"{name}={outside}"])
            if not is_open:  # the bound itself passes its section (whole-config rules, like w_max's, aside)
                section, field_name = name.split(".")
                typing.get_type_hints(RunConfig)[section](**{field_name: typ(bound)})


def test_schema_rows_follow_the_live_schemas():
    rows = gen.schema_rows()
    assert [(r.table, r.column) for r in rows] == [(t, c) for t, s in SCHEMAS.items() for c in s.names]
    src = gen.SCHEMA_SRC.read_text(encoding="utf-8")
    for r in rows:
        fld = SCHEMAS[r.table].field(r.column)
        assert (r.type, r.nullable, r.contract) == (str(fld.type), fld.nullable, r.column in CONTRACT[r.table])
        if r.comment:  # the comment sits on the column's own line in the source
            assert re.search(rf'_f\("{r.column}",[^\n]*#\s*{re.escape(r.comment)}', src), (r.table, r.column)
    assert sum(bool(r.comment) for r in rows) >= 5  # comments are picked up at all
    text = gen.render_schema()
    assert f"**{SCHEMA_VERSION}**" in text
    assert all(f"**`{t}`**" in text for t in SCHEMAS)
