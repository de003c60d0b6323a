"""What a knob sweep will run, checked before any cell runs: the grid, the runs, the cells.

`parse_grid` reads `--grid section.knob=v1,v2,...` into a `Grid` (every value parsed by the knob's
own declaration); `find_runs` resolves `--runs` globs to run folders (a URI of any filesystem pyarrow
has is kept as given, and `local_copy` fetches it once for a worker); `plan` makes every (run,
setting) `Cell` after checking each setting on each run's own config. Every problem is a
`SweepError`, one line. The Sweep page plans with these before it starts a sweep; running the cells
and storing their rows is `studio/sweep.py`.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from contract.config import RunConfig, apply_overrides, knob_spec
from studio.fast_replay import FAST_KNOB_SECTIONS


class SweepError(ValueError):
    """A sweep that cannot start or go on; one line."""


# ----------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Grid:
    knobs: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]  # per knob, as written

    def settings(self) -> list[tuple[str, ...]]:
        """Every setting: one `section.field=value` per knob, the cartesian product in grid order."""
        return [tuple(f"{k}={v}" for k, v in zip(self.knobs, combo, strict=True))
                for combo in itertools.product(*self.values)]  # fmt: skip

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in zip(self.knobs, self.values, strict=True)}


def parse_grid(items: list[str], exact: bool) -> Grid:
    """`--grid section.knob=v1,v2,...` (values of a pair knob such as `allocator.shift_kernel` are
    separated by `;`). SweepError naming the item for an unknown knob, a knob given twice, a value that
    does not parse, or (fast) a knob the recorded scores cannot re-plan."""
    knobs, values = [], []
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not text.strip():
            raise SweepError(f"--grid expects section.knob=v1,v2,..., got {item!r}")
        try:
            typ, _ = knob_spec(key)
        except (KeyError, ValueError):
            raise SweepError(f"--grid {item!r}: unknown knob {key!r} (python -m engine knobs lists them)") from None
        if key in knobs:
            raise SweepError(f"--grid {key} is given twice")
        if not exact and key.split(".")[0] not in FAST_KNOB_SECTIONS:
            raise SweepError(f"--grid {key}: a fast sweep re-plans with the recorded scores and can change "
                             f"{' and '.join(s + '.*' for s in FAST_KNOB_SECTIONS)} only; use --exact")  # fmt: skip
        sep_v = ";" if ";" in text or str(typ).startswith("tuple") else ","
        vals = tuple(v.strip() for v in text.split(sep_v) if v.strip())
        if len(set(vals)) != len(vals):
            raise SweepError(f"--grid {key}: a value is given twice")
        for v in vals:
            try:
                apply_overrides(RunConfig(), [f"{key}={v}"])
            except ValueError as e:
                if "cannot parse" in str(e):
                    raise SweepError(f"--grid {str(e).splitlines()[0]}") from None
        knobs.append(key)
        values.append(vals)
    if not knobs:
        raise SweepError("give at least one --grid section.knob=v1,v2,...")
    return Grid(tuple(knobs), tuple(values))


# ----------------------------------------------------------------------------------------- runs


def is_uri(ref: str) -> bool:
    return "://" in ref


def find_runs(patterns: list[str]) -> list[str]:
    """Run folders matching the local globs (a folder with a manifest.json), resolved, in order, each
    once; URIs are kept as given. SweepError if a pattern matches no run."""
    out: list[str] = []
    for pat in patterns:
        if is_uri(pat):
            found = [pat]
        else:
            hits = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
            found = [str(Path(h).resolve()) for h in hits if (Path(h) / "manifest.json").is_file()]
        if not found:
            raise SweepError(f"--runs {pat!r} matches no run folder (a folder with a manifest.json)")
        out += [f for f in found if f not in out]
    return out


def read_manifest(ref: str) -> dict:
    """A run's manifest, from a local folder or through pyarrow's filesystems."""
    try:
        if is_uri(ref):
            from pyarrow import fs

            filesystem, path = fs.FileSystem.from_uri(ref)
            with filesystem.open_input_stream(f"{path.rstrip('/')}/manifest.json") as f:
                return json.loads(f.read())
        return json.loads((Path(ref) / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SweepError(f"{ref}: cannot read its manifest.json ({str(e).splitlines()[0]})") from None


def local_copy(ref: str, into: Path) -> Path:
    """A run given by URI, copied once into the folder `into` (a worker's cache); a local path as is."""
    if not is_uri(ref):
        return Path(ref)
    from pyarrow import fs

    dst = into / hashlib.sha1(ref.encode()).hexdigest()[:12] / ref.rstrip("/").rsplit("/", 1)[-1]
    if not (dst / "manifest.json").is_file():
        filesystem, path = fs.FileSystem.from_uri(ref)
        fs.copy_files(path, str(dst), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return dst


# ---------------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    run: str  # local folder or URI
    sets: tuple[str, ...]  # `section.field=value`, one per grid knob

    @property
    def id(self) -> str:
        return hashlib.sha1(f"{self.run}|{';'.join(sorted(self.sets))}".encode()).hexdigest()[:16]


def plan(runs: list[str], grid: Grid, exact: bool) -> list[Cell]:
    """Every (run, setting), after checking that each setting is valid on each run's own config
    (ranges and cross-knob rules) and that fast runs are recordings with a config. SweepError: one line."""
    cells = []
    for ref in runs:
        m = read_manifest(ref)
        try:
            base = RunConfig.from_dict(m["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise SweepError(f"{ref}: no usable config in its manifest ({str(e).splitlines()[0]})") from None
        if exact and m.get("input") in (None, "", "-"):
            raise SweepError(f"{ref}: its text was read from stdin, so an exact sweep cannot re-read it")
        for sets in grid.settings():
            try:
                apply_overrides(base, list(sets))
            except ValueError as e:
                raise SweepError(f"{ref}: {', '.join(sets)}: {str(e).splitlines()[0]}") from None
            cells.append(Cell(ref, sets))
    return cells
