"""engine.textio's input errors: byte offsets of invalid UTF-8 at chunk edges, and a closed stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import InputError, read_text

REPO = Path(__file__).resolve().parents[1]
CHUNK = 8  # a small chunk, so that every case below meets a chunk edge
BAD = {
    "lone continuation byte": b"\x80",
    "invalid lead byte": b"\xff",
    "2-byte start, ASCII after": b"\xc3A",
    "3-byte start, 1 continuation, ASCII after": b"\xe2\x82A",
    "4-byte start, 2 continuations, ASCII after": b"\xf0\x9f\x98A",
    "3-byte start cut at the end": b"\xe2\x82",
    "4-byte start cut at the end": b"\xf0\x9f\x98",
}


def _true_offset(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    raise AssertionError("the case is valid UTF-8")


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("valid", ["", "é", "€"])  # a multi-byte character in front shifts the edges too
def test_invalid_byte_offset_is_exact_at_every_position_around_chunk_edges(tmp_path, name, valid):
    path = tmp_path / "in.txt"
    for at in range(3 * CHUNK + 1):
        head = valid.encode() + b"a" * at
        data = head + BAD[name] + (b"" if name.endswith("at the end") else b"tail text")
        path.write_bytes(data)
        with pytest.raises(InputError, match="not UTF-8") as err:
            list(read_text(str(path), chunk_bytes=CHUNK))
        assert f"at offset {_true_offset(data)})" in str(err.value), (at, data)


def test_nul_byte_offset_is_exact_at_chunk_edges(tmp_path):
    path = tmp_path / "in.txt"
    for at in range(2 * CHUNK + 1):
        path.write_bytes("€".encode() + b"a" * at + b"\x00rest")
        with pytest.raises(InputError, match=f"NUL byte at offset {3 + at}\\)"):
            list(read_text(str(path), chunk_bytes=CHUNK))


def _engine_without_stdin(*args: str) -> subprocess.CompletedProcess:
    """`python -m engine ARGS <&-`: the child starts with file descriptor 0 closed."""
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: os.close(0))  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--quiet", "--model", "tiny", "--input", "-"],
        ["record", "--quiet", "--model", "tiny", "--input", "-", "--out", "{out}"],
        ["eval", "--quiet", "--model", "tiny", "--input", "-"],
    ],
    ids=["run", "record", "eval"],
)
def test_a_closed_stdin_is_one_line(tmp_path, args):
    r = _engine_without_stdin(*(a.format(out=tmp_path / "rec") for a in args))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stdin is closed"), r.stderr
    assert not (tmp_path / "rec").exists()  # refused before a run folder was made


def test_an_empty_stdin_still_says_empty():
    r = subprocess.run([sys.executable, "-m", "engine", "run", "--quiet", "--model", "tiny", "--input", "-"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip() == "error: input stdin is empty (no text to read)", r.stderr
