"""Read text incrementally and turn it into token chunks, with clear errors for bad input.

The input (a file or stdin) is read in fixed-size byte chunks, decoded as strict UTF-8 and
tokenised piecewise, so a stream of any length is never held whole in memory. Text is cut for
the tokenizer only at whitespace, so a subword tokenizer sees the same words it would see in one
piece (only merges across whitespace, which byte-level BPEs do not make, could differ).

Errors a user can cause raise `InputError` with one line: a missing or unreadable file, a closed
stdin, empty input, or binary data (a NUL byte or invalid UTF-8, with its byte offset in the input).
"""

from __future__ import annotations

import codecs
import io
import sys
from collections.abc import Callable, Iterator

import numpy as np

CHUNK_BYTES = 1 << 16
MAX_CARRY = 1 << 20  # cut anyway if no whitespace shows up for this many characters


class InputError(Exception):
    """Bad input text; the message is one line that names the problem."""


def _open(path: str) -> io.BufferedReader:
    if path == "-":
        if sys.stdin is None:  # the process was started with file descriptor 0 closed (`<&-`)
            raise InputError("stdin is closed; give an input file, or pipe the text in")
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by read_text
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"input is a directory, not a file: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read input {path}: {e.strerror or e}") from None


def read_text(path: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """Yield decoded text chunks of `path` ("-" = stdin). Raises InputError on empty or binary input."""
    f = _open(path)
    own = path != "-"  # stdin is the process's: read it, never close it
    name = "stdin" if path == "-" else path
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, seen_text = 0, False  # offset: bytes read before `data`
    try:
        while True:
            try:
                data = f.read(chunk_bytes)
            except OSError as e:
                raise InputError(f"cannot read input {name}: {e.strerror or e}") from None
            final = not data
            nul = data.find(b"\x00")
            if nul >= 0:
                raise InputError(f"input {name} looks binary (NUL byte at offset {offset + nul}); expected UTF-8 text")
            # The decoder holds back the bytes of a character cut at the chunk's end and decodes them
            # in front of the next chunk, so an error's `start` counts from those held-back bytes.
            held = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                at = offset - held + e.start
                raise InputError(
                    f"input {name} is not UTF-8 text (invalid byte at offset {at}); is it binary?"
                ) from None
            offset += len(data)
            if text:
                seen_text = seen_text or bool(text.strip())
                yield text
            if final:
                break
    finally:
        if own:
            f.close()
    if not seen_text:
        raise InputError(f"input {name} is empty (no text to read)")


def token_chunks(texts: Iterator[str], tokenize: Callable[[str], list[int]]) -> Iterator[np.ndarray]:
    """Tokenise a text stream piecewise, cutting only at whitespace. Yields int64 id arrays."""
    carry = ""
    for text in texts:
        buf = carry + text
        cut = max(buf.rfind(" "), buf.rfind("\n"), buf.rfind("\t"))
        if cut <= 0 and len(buf) < MAX_CARRY:
            carry = buf
            continue
        if cut <= 0:
            cut = len(buf) - 1
        head, carry = buf[:cut], buf[cut:]
        ids = tokenize(head)
        if ids:
            yield np.asarray(ids, dtype=np.int64)
    if carry:
        ids = tokenize(carry)
        if ids:
            yield np.asarray(ids, dtype=np.int64)
