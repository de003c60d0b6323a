"""A folder of runs, and each run's manifest: `load_manifest` (checked; a bad folder, file or field is
a one-line `RunReadError` naming it), `derive_status` (a `recording` whose heartbeat is stale is
`interrupted`) and `list_runs` (every run of a folder, bad ones listed as `invalid` with the reason).

Only manifests are read here, never a part file: opening a run's tables, checking its parts and
querying them is `telemetry.reader.Run`. Symbolic links are never followed. Writing manifests is
`telemetry.writer`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from telemetry.schema import SCHEMA_VERSION
from telemetry.writer import MANIFEST

STALE_AFTER_S = 30.0  # a recording whose heartbeat is older than this is reported as interrupted


class RunReadError(Exception):
    """A run (or one of its files) cannot be read; the one-line message names the file and why."""


def load_manifest(run_dir: str | os.PathLike) -> dict:
    """The run's manifest, or RunReadError saying what is wrong with the folder (one line naming the
    file, and the field when one field is wrong)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunReadError(f"{path}: not a run folder (no such directory)")
    mpath = path / MANIFEST
    if not mpath.exists():
        if not any(path.iterdir()):
            raise RunReadError(f"{path}: empty folder, not a run (no {MANIFEST})")
        raise RunReadError(f"{path}: not a run (no {MANIFEST})")
    if mpath.is_symlink():
        raise RunReadError(f"{mpath}: a symbolic link, not followed")
    try:
        m = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RunReadError(f"{mpath}: unreadable ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise RunReadError(f"{mpath}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(m, dict) or type(m.get("schema_version")) is not int:
        raise RunReadError(f"{mpath}: no integer schema_version, not a MegaContext run manifest")
    if m["schema_version"] > SCHEMA_VERSION:
        raise RunReadError(
            f"{mpath}: schema_version {m['schema_version']} is newer than this reader's {SCHEMA_VERSION}; "
            "upgrade MegaContext Studio to read it"
        )
    if m["schema_version"] < 1:
        raise RunReadError(f"{mpath}: schema_version {m['schema_version']} is not a version (1 to {SCHEMA_VERSION})")
    for name, (types, what) in _FIELDS.items():
        v = m.get(name)
        if v is not None and (type(v) not in types or (int in types and v < 0)):
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
            raise RunReadError(f"{mpath}: field {name!r} is {shown}, expected {what}")
    if m.get("status") not in STATUSES:
        raise RunReadError(f"{mpath}: field 'status' is {m.get('status')!r}, expected one of {', '.join(STATUSES)}")
    return m


STATUSES = ("recording", "complete", "failed")  # as written; `interrupted` is derived by the reader
# Manifest fields a reader relies on: their JSON types (absent or null is allowed: older writers).
_TEXT = ((str,), "text")
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "tokens": ((int,), "a whole number >= 0"),
    "steps": ((int,), "a whole number >= 0"),
    "run_id": _TEXT,
    "scorer": _TEXT,
    "input": _TEXT,
    "created_at": _TEXT,
    "updated_at": _TEXT,
    "heartbeat_at": _TEXT,
    "error": _TEXT,
    "parent": _TEXT,
    "config": ((dict,), "an object"),
    "config_flat": ((dict,), "an object"),
    "model": ((dict,), "an object"),
    "tables": ((dict,), "an object"),
    "timings": ((dict,), "an object"),
}


def derive_status(manifest: dict, stale_after: float = STALE_AFTER_S, now: dt.datetime | None = None) -> str:
    """`recording` turns into `interrupted` when the heartbeat is older than `stale_after` seconds."""
    status = manifest.get("status", "invalid")
    if status != "recording":
        return status
    stamp = manifest.get("heartbeat_at") or manifest.get("updated_at") or manifest.get("created_at")
    try:
        beat = dt.datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return "interrupted"  # a recording with no readable heartbeat cannot be shown as live
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=dt.UTC)
    age = ((now or dt.datetime.now(dt.UTC)) - beat).total_seconds()
    return "interrupted" if age > stale_after else "recording"


def _folder_bytes(path: Path) -> int:
    """Bytes of the files under `path`; symbolic links are neither followed nor counted."""
    total = 0
    for root, _, files in os.walk(path):  # os.walk does not descend into linked folders
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:  # a staging file moved away while we walked
                continue
            if not stat.S_ISLNK(st.st_mode):
                total += st.st_size
    return total


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    status: str  # recording | complete | failed | interrupted | invalid
    problem: str | None = None  # one line, for invalid runs
    size_bytes: int = 0
    scorer: str | None = None
    tokens: int = 0
    steps: int = 0
    created_at: str | None = None
    heartbeat_at: str | None = None
    error: str | None = None
    parent: str | None = None
    config_flat: dict = field(default_factory=dict)


def list_runs(root: str | os.PathLike, *, stale_after: float = STALE_AFTER_S) -> list[RunInfo]:
    """Every sub-folder of `root` as a RunInfo, sorted by name; bad ones are `invalid` with a `problem`.

    Each run is read on its own: a bad manifest (or a bad field in one) marks that run invalid and
    names the file, the others are listed as usual. A symbolic link is listed as invalid and not
    followed (neither to list nor to size it), whatever it points to."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(p for p in root.iterdir() if not p.name.startswith((".", "_"))):
        if path.is_symlink():
            out.append(RunInfo(path.name, path, "invalid", problem=f"{path}: a symbolic link, not followed"))
            continue
        if not path.is_dir():
            continue
        size = _folder_bytes(path)
        try:
            m = load_manifest(path)
        except RunReadError as e:
            out.append(RunInfo(path.name, path, "invalid", problem=str(e), size_bytes=size))
            continue
        out.append(
            RunInfo(
                name=path.name,
                path=path,
                status=derive_status(m, stale_after),
                size_bytes=size,
                scorer=m.get("scorer"),
                tokens=m.get("tokens") or 0,
                steps=m.get("steps") or 0,
                created_at=m.get("created_at"),
                heartbeat_at=m.get("heartbeat_at"),
                error=m.get("error"),
                parent=m.get("parent"),
                config_flat=dict(m.get("config_flat") or {}),
            )
        )
    return out
