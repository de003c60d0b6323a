"""Where runs may be listed, opened and recorded: the configured run folders, nothing else.

The app only reads run folders under its roots (`sample_runs/` shipped with the repo, and the
user's runs folder) and only records into the user's runs folder. Any other path is refused with a
one-line `PathRefused`, so that a shared link cannot make the server read arbitrary files.
The roots are the shipped samples (`sample_runs/` in the repository, or `MCS_SAMPLE_RUNS`), the folders
`MCS_RUN_ROOTS` adds (os.pathsep-separated) and the writable runs folder (`MCS_RUNS_DIR`, default `runs/`
in the repository), where recordings started from the app and saved replays go. Recording inputs
given as a file path must lie under `MCS_INPUT_ROOTS` (default: the repository and the Python
standard library).

This module does not read runs (that is `telemetry.reader`) and imports no streamlit.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class PathRefused(ValueError):
    """A path outside the configured folders, or a name that is not a plain folder name."""


def _env_paths(name: str, default: list[Path]) -> list[Path]:
    raw = os.environ.get(name, "")
    paths = [Path(p) for p in raw.split(os.pathsep) if p.strip()] or default
    return [(p if p.is_absolute() else REPO / p).resolve() for p in paths]


def runs_dir() -> Path:
    """The writable runs folder (recordings started from the app and replays land here)."""
    return _env_paths("MCS_RUNS_DIR", [REPO / "runs"])[0]


def sample_runs_dir() -> Path:
    """The shipped sample runs (`MCS_SAMPLE_RUNS` names another folder in their place)."""
    return _env_paths("MCS_SAMPLE_RUNS", [REPO / "sample_runs"])[0]


def run_roots() -> list[Path]:
    """Every folder whose sub-folders are listed as runs: the samples, the folders `MCS_RUN_ROOTS`
    adds, and the writable one last (each once)."""
    w, roots = runs_dir(), []
    for r in [sample_runs_dir(), *_env_paths("MCS_RUN_ROOTS", [])]:
        if r != w and r not in roots:
            roots.append(r)
    return [*roots, w]


def input_roots() -> list[Path]:
    """Folders a recording's input file may be read from."""
    return _env_paths("MCS_INPUT_ROOTS", [REPO, Path(sysconfig.get_paths()["stdlib"])])


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def resolve_run(ref: str | os.PathLike) -> Path:
    """A run reference (as kept in the URL: `<root name>/<run name>`, a bare run name, or a path) -> its folder.

    Raises PathRefused when it resolves outside every run root (symlinks and `..` included) or
    names no folder there.
    """
    s = str(ref).strip()
    if not s:
        raise PathRefused("no run given")
    p = Path(s)
    roots = run_roots()
    if p.is_absolute():
        candidates = [p.resolve()]
    else:
        candidates = [(r.parent / p).resolve() for r in roots] + [(r / p).resolve() for r in roots]
    inside = [c for c in candidates if _inside(c, roots) and c not in roots]
    for c in inside:
        if c.is_dir():
            return c
    if inside:
        raise PathRefused(f"no run folder {s!r} under the configured run folders")
    raise PathRefused(f"run {s!r} is outside the configured run folders ({', '.join(map(str, roots))})")


def run_ref(path: Path) -> str:
    """The short, shareable reference of a run folder: `<root folder name>/<run name>`."""
    path = Path(path)
    path = path.absolute() if path.is_symlink() else path.resolve()  # a link is named as listed, not as its target
    return f"{path.parent.name}/{path.name}"


def check_input_file(path: str | os.PathLike) -> Path:
    """A recording input path -> resolved Path, or PathRefused if outside the input roots."""
    p = Path(path).expanduser().resolve()
    if not _inside(p, input_roots()):
        raise PathRefused(f"input {str(path)!r} is outside the allowed folders ({', '.join(map(str, input_roots()))})")
    return p


def new_run_dir(name: str) -> Path:
    """A fresh folder name under runs_dir() for a recording started from the app (not created)."""
    if not name or name.startswith((".", "_")) or Path(name).name != name or name in ("..", "."):
        raise PathRefused(f"bad run name {name!r}: use a plain folder name")
    return runs_dir() / name
