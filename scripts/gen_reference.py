"""Regenerate the two reference tables in README.md from the code: the knobs and the telemetry schema.

    .venv/bin/python scripts/gen_reference.py           # rewrite the generated regions of README.md
    .venv/bin/python scripts/gen_reference.py --check   # exit 1 (one line naming what is stale), write nothing

Only the text between `<!-- knobs:begin -->` / `<!-- knobs:end -->` and `<!-- schema:begin -->` /
`<!-- schema:end -->` is rewritten; the rest of README.md is left byte for byte as it is.

Knobs (`contract/config.py`): one row per field of each section of `RunConfig`, in declaration order,
with its one name `section.field`, its default (read from the dataclass, written as `--set` takes
it), what it allows and its meaning, both from the `Knob` the field is declared with
(`knob(default, help, lo=..., hi=..., choices=..., rule=...)`): the same data validation and the
app's widgets read, so nothing is parsed out of the source. A field declared without a `Knob`
stops the generator with an error naming it: the table is the knobs' documentation, so a hole in it
is a bug.

Schema (`telemetry/schema.py`): `SCHEMA_VERSION`, then per table of `SCHEMAS` every column with
its Arrow type, nullability, whether `CONTRACT` makes it public, and its trailing `# comment`
where it has one (a standalone comment just above a table's key becomes that table's note).
Types and nullability come from the live schemas; the source is read only for comments.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import re
import sys
import tokenize
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from contract import config as config_mod  # noqa: E402  (needs the repo on sys.path first)
from telemetry import schema as schema_mod  # noqa: E402

README = REPO / "README.md"
CONFIG_SRC = Path(config_mod.__file__)
SCHEMA_SRC = Path(schema_mod.__file__)
REGIONS = ("knobs", "schema")
# Comments that are tool pragmas, not prose: never taken for a meaning.
_PRAGMA = re.compile(r"^(noqa|type:|fmt:|pragma|pyright:|mypy:)")


class DocError(Exception):
    """The code cannot be documented as it stands (a field without a comment, a `_check` naming no knob...)."""


@dataclasses.dataclass(frozen=True)
class KnobRow:
    name: str  # `section.field`
    default: str  # as `--set` takes it
    allowed: str  # what its `Knob` allows, or what the type allows when it states nothing
    meaning: str  # the `Knob`'s help
    checked: bool  # its `Knob` states a range, choices or a rule (so `allowed` comes from the code, not the type)


@dataclasses.dataclass(frozen=True)
class SchemaRow:
    table: str
    column: str
    type: str
    nullable: bool
    contract: bool
    comment: str  # "" where the source has none


# ---------------------------------------------------------------- source reading


def _comments(src: str) -> tuple[dict[int, str], dict[int, str]]:
    """(trailing, standalone): comment text by line number, split by whether code precedes it on its line."""
    trailing: dict[int, str] = {}
    standalone: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if _PRAGMA.match(text):
                continue
            (trailing if tok.start[0] in code_lines else standalone)[tok.start[0]] = text
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return trailing, standalone


def _sections() -> list[tuple[str, type]]:
    """(section name, dataclass) in `RunConfig` declaration order."""
    hints = typing.get_type_hints(config_mod.RunConfig)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(config_mod.RunConfig)]


def _format_default(value: object) -> str:
    """A default as `--set` and the manifest spell it: true/false, 0,0 for tuples, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _unchecked_range(typ: object) -> str:
    # No `_check`: say what the type admits, so the column has no holes.
    if typ is bool:
        return "true, false"
    if typ is str:
        return "any string"
    return f"any {getattr(typ, '__name__', str(typ))}"


# ---------------------------------------------------------------- rows


def knob_rows() -> list[KnobRow]:
    """One row per knob, sections in `RunConfig` order and fields as declared, from each field's `Knob`."""
    rows: list[KnobRow] = []
    for section, cls in _sections():
        defaults = cls()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f"{section}.{f.name}"
            spec = f.metadata.get("knob")
            if spec is None or not spec.help.strip():
                raise DocError(f"{CONFIG_SRC.name}: knob {name} is not declared with knob(default, help, ...)")
            allowed = spec.allowed()
            text = "; ".join(allowed) if allowed else _unchecked_range(hints[f.name])
            rows.append(KnobRow(name, _format_default(getattr(defaults, f.name)), text, spec.help, bool(allowed)))
    return rows


def _schema_source_comments() -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """((table, column) -> trailing comment, table -> note from the standalone comments above its key)."""
    src = SCHEMA_SRC.read_text(encoding="utf-8")
    trailing, standalone = _comments(src)
    columns: dict[tuple[str, str], str] = {}
    notes: dict[str, str] = {}
    for node in ast.parse(src).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if not (isinstance(target, ast.Name) and target.id == "SCHEMAS" and isinstance(node.value, ast.Dict)):
            continue
        for key, value in zip(node.value.keys, node.value.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                continue
            table = key.value
            line, above = key.lineno - 1, []
            while line in standalone:
                above.insert(0, standalone[line])
                line -= 1
            if above:
                notes[table] = " ".join(above)
            calls = [
                c
                for c in ast.walk(value)
                if isinstance(c, ast.Call)
                and isinstance(c.func, ast.Name)
                and c.func.id == "_f"
                and c.args
                and isinstance(c.args[0], ast.Constant)
            ]
            ends = [c.end_lineno for c in calls]
            for c in calls:
                # A comment is a column's only if no other column ends on its line.
                if ends.count(c.end_lineno) == 1 and c.end_lineno in trailing:
                    columns[(table, c.args[0].value)] = trailing[c.end_lineno]
    return columns, notes


def schema_rows() -> list[SchemaRow]:
    """One row per column of every table, tables and columns in `SCHEMAS` order."""
    comments, _ = _schema_source_comments()
    rows: list[SchemaRow] = []
    for table, schema in schema_mod.SCHEMAS.items():
        contract = schema_mod.CONTRACT.get(table, ())
        missing = [c for c in contract if c not in schema.names]
        if missing:
            raise DocError(f"{SCHEMA_SRC.name}: CONTRACT names {table}.{missing[0]}, which is no column")
        for fld in schema:
            rows.append(
                SchemaRow(
                    table,
                    fld.name,
                    str(fld.type),
                    fld.nullable,
                    fld.name in contract,
                    comments.get((table, fld.name), ""),
                )
            )
    return rows


# ---------------------------------------------------------------- rendering


def _md(text: str) -> str:
    """Escape prose for a markdown table cell: `|` always (it ends the cell, even in code), `*`, `\\` and `<`
    outside code spans (emphasis, HTML); code spans are otherwise left as written."""
    parts = text.split("`")
    for i, part in enumerate(parts):
        if i % 2 == 0:
            part = part.replace("\\", "\\\\").replace("*", "\\*").replace("<", "\\<")
        parts[i] = part.replace("|", "\\|")
    return "`".join(parts)


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def render_knobs(rows: list[KnobRow] | None = None) -> str:
    rows = knob_rows() if rows is None else rows
    lines = ["| knob | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| {_code(r.name)} | {_code(r.default)} | {_md(r.allowed)} | {_md(r.meaning)} |" for r in rows]
    return "\n".join(lines)


def render_schema(rows: list[SchemaRow] | None = None) -> str:
    rows = schema_rows() if rows is None else rows
    _, notes = _schema_source_comments()
    out = [f"Schema version **{schema_mod.SCHEMA_VERSION}** (`SCHEMA_VERSION` in `telemetry/schema.py`)."]
    for table in dict.fromkeys(r.table for r in rows):
        out += ["", f"**`{table}`**" + (f": {_md(notes[table])}" if table in notes else ""), ""]
        out += ["| column | type | nullable | contract | meaning |", "| --- | --- | --- | --- | --- |"]
        for r in rows:
            if r.table == table:
                nullable, contract = "yes" if r.nullable else "no", "yes" if r.contract else "no"
                out.append(f"| {_code(r.column)} | {_code(r.type)} | {nullable} | {contract} | {_md(r.comment)} |")
    return "\n".join(out)


# ---------------------------------------------------------------- README regions


def _region_span(text: str, region: str) -> tuple[int, int]:
    """Start and end offsets of the text between a region's begin and end markers."""
    begin, end = f"<!-- {region}:begin -->", f"<!-- {region}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1:
        raise DocError(f"README.md must contain {begin} and {end} exactly once each")
    start, stop = text.index(begin) + len(begin), text.index(end)
    if stop < start:
        raise DocError(f"README.md: {end} comes before {begin}")
    return start, stop


def rendered() -> dict[str, str]:
    return {"knobs": render_knobs(), "schema": render_schema()}


def updated_readme(text: str, regions: dict[str, str] | None = None) -> str:
    """`text` with each generated region replaced by its current rendering (blank line around it)."""
    regions = rendered() if regions is None else regions
    for region in REGIONS:
        start, stop = _region_span(text, region)
        text = text[:start] + "\n\n" + regions[region] + "\n\n" + text[stop:]
    return text


def stale_regions(path: Path = README) -> list[str]:
    """Names of the generated regions of `path` that differ from what the code says now."""
    text = path.read_text(encoding="utf-8")
    regions = rendered()
    new = updated_readme(text, regions)
    return [r for r in REGIONS if text[slice(*_region_span(text, r))] != new[slice(*_region_span(new, r))]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is stale; write nothing")
    ap.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args.check:
            stale = stale_regions(args.readme)
            if stale:
                print(
                    f"{args.readme.name}: stale generated region(s): {', '.join(stale)}; "
                    "run: .venv/bin/python scripts/gen_reference.py"
                )
                return 1
            print(f"{args.readme.name}: knobs and schema references are current")
            return 0
        text = args.readme.read_text(encoding="utf-8")
        new = updated_readme(text)
        if new != text:
            args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme.name}: {'rewrote' if new != text else 'already current:'} knobs and schema references")
        return 0
    except DocError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
