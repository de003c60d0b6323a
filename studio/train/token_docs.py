"""Training documents as token arrays: read a corpus split, pick documents with a seeded draw, tokenise.

Tokenisation goes through `engine.textio.token_chunks`, the very procedure a session uses on its
input, so a document's tokens here are the tokens a session would read from the same text (LensNet's
labels depend on that). This module does not sample windows or touch models beyond `tokenize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.textio import token_chunks
from studio.train.corpus import read_split


@dataclass(frozen=True, eq=False)
class TokenDoc:
    name: str
    text: str
    tokens: np.ndarray  # int32[n]: the session's tokenisation of `text`


def tokenize_text(text: str, tokenize: Callable[[str], list[int]]) -> np.ndarray:
    """int32[n]: the tokens a session reading `text` in one piece would see."""
    parts = list(token_chunks(iter([text]), tokenize))
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


def load_token_docs(
    corpus_dir: str | Path,
    split: str,
    tokenize: Callable[[str], list[int]],
    *,
    max_chars: int,
    min_chars: int,
    gen: torch.Generator,
) -> list[TokenDoc]:
    """Documents of `split` with at least `min_chars` characters, in a seeded random order, until
    `max_chars` characters are taken (0 = all). Each document is tokenised whole."""
    docs = [(n, t) for n, t in read_split(Path(corpus_dir), split) if len(t) >= min_chars]
    order = torch.randperm(len(docs), generator=gen).tolist()
    out, total = [], 0
    for i in order:
        if max_chars and total >= max_chars:
            break
        name, text = docs[i]
        out.append(TokenDoc(name, text, tokenize_text(text, tokenize)))
        total += len(text)
    return out
