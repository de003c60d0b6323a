"""Recall scenarios: a fact planted in real text, asked for at the end.

`passkey_cases` builds one case per (length, depth): filler text (the caller's real text, repeated
if it is too short) with a *fact* ("The passkey is 48213. ...") inserted at `depth` (0 = start, 1 =
end of the filler), followed by a *question* whose answer is the passkey. Lengths are in tokens of
the given tokenizer, and the fact's token span is computed in the tokenisation a session will see
(`engine.textio.token_chunks` over the whole case text), so an evaluator can ask whether the fact's
blocks were at LOD0 when the question came.

The question is deliberately about four blocks long (~120 BPE tokens) and names the passkey in every
line: a policy refocuses once per block, queries with the newest block, and bringing a LOD2 region
back to LOD0 takes two expansions (LOD2 -> LOD1 -> LOD0) on two different steps.
Passkeys are drawn from a seeded numpy generator. This module builds texts only: no model, no
scoring (see `studio/eval_scenario.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.textio import token_chunks

FACT = "\n# Important: the passkey is {key}. Remember it. {key} is the passkey.\n"
QUESTION = (
    "\n\n# Question: somewhere in the text above, a passkey was given. What is the passkey?\n"
    "# Look back at the passkey, the number to remember, and recall the passkey exactly.\n"
    "# The passkey is a number of a few digits; it was stated twice, next to the word passkey.\n"
    "# Repeat the passkey below, digits only, exactly as it was given: the passkey.\n"
    "# Answer: the passkey is"
)
ANSWER = " {key}"
SCENARIOS = ("passkey",)


@dataclass(frozen=True)
class PasskeyConfig:
    lengths: tuple[int, ...] = (8192, 16384)  # total tokens of each case (filler + fact + question), approximately
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)  # where the fact sits in the filler, 0 = start, 1 = end
    digits: int = 5  # passkey length in decimal digits
    seed: int = 0  # passkeys are drawn from this seed

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) < 64:
            raise ValueError(f"scenario lengths must be >= 64 tokens, got {list(self.lengths)}")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"scenario depths must be in [0, 1], got {list(self.depths)}")
        if not 1 <= self.digits <= 12:
            raise ValueError(f"scenario digits must be in [1, 12], got {self.digits}")
        if self.seed < 0:
            raise ValueError(f"scenario seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class PasskeyCase:
    text: str  # what the session reads: filler with the fact, then the question
    answer: str  # what should follow the text (" 48213")
    passkey: str
    length: int  # requested tokens
    depth: float  # requested depth
    n_tokens: int  # tokens of `text` as a session tokenises it
    fact_start: int  # token span [fact_start, fact_end) of the fact within `text`
    fact_end: int


def _tokens(text: str, tokenize: Callable[[str], list[int]]) -> np.ndarray:
    parts = list(token_chunks(iter([text]), tokenize))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _char_to_token(ids: np.ndarray, decode: Callable[[list[int]], str], char_pos: int) -> int:
    """Smallest t with len(decode(ids[:t])) >= char_pos (binary search; decoded prefixes grow with t)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(ids[:mid].tolist())) >= char_pos:
            hi = mid
        else:
            lo = mid + 1
    return lo


def make_passkey_case(filler_ids: np.ndarray, tokenize, decode, length: int, depth: float,
                      passkey: str) -> PasskeyCase:  # fmt: skip
    """One case from filler token ids (a long enough stretch of real text) and a passkey string."""
    fact, question = FACT.format(key=passkey), QUESTION
    n_filler = max(1, length - len(_tokens(fact, tokenize)) - len(_tokens(question, tokenize)))
    if len(filler_ids) < n_filler:
        reps = -(-n_filler // max(1, len(filler_ids)))
        filler_ids = np.tile(filler_ids, reps)
    filler_ids = filler_ids[:n_filler]
    cut = int(round(depth * n_filler))
    # Cut after a newline when one is near, so the fact starts a line and tokenises the same in place.
    for k in range(cut, max(0, cut - 64), -1):
        if k == 0 or decode([int(filler_ids[k - 1])]).endswith("\n"):
            cut = k
            break
    head, tail = decode(filler_ids[:cut].tolist()), decode(filler_ids[cut:].tolist())
    text = head + fact + tail + question
    ids = _tokens(text, tokenize)
    start = _char_to_token(ids, decode, len(head))
    end = _char_to_token(ids, decode, len(head) + len(fact))
    return PasskeyCase(text, ANSWER.format(key=passkey), passkey, length, depth, len(ids), start, end)


def passkey_cases(filler_text: str, tokenize, decode, cfg: PasskeyConfig) -> list[PasskeyCase]:
    """One case per (length, depth), in that order; each its own passkey drawn from `cfg.seed`."""
    if not filler_text.strip():
        raise ValueError("the passkey scenario needs some filler text")
    rng = np.random.default_rng(cfg.seed)
    ids = _tokens(filler_text, tokenize)
    out = []
    for length in cfg.lengths:
        for depth in cfg.depths:
            first = str(rng.integers(1, 10))  # no leading zero: the number reads as one number
            key = first + "".join(str(d) for d in rng.integers(0, 10, cfg.digits - 1))
            out.append(make_passkey_case(ids, tokenize, decode, length, depth, key))
    return out


# ---------------------------------------------------------------------------------------------
# Recall episodes for training LensNet: other phrasings than the evaluation's FACT/QUESTION, so the
# passkey scenario stays a held-out test of recall rather than of one memorised template.

RECALL_TEMPLATES = (  # (fact, question); the answer is " {key}" right after the question
    ("\n# Note: the secret code is {key}. Keep it in mind.\n", "\n# What was the secret code noted earlier? It was"),
    ("\nMAGIC_NUMBER = {key}  # remember this value\n", "\n# The magic number defined far above: MAGIC_NUMBER ="),
    ("\n# The access token for later is {key}.\n", "\n# Earlier an access token was given. The access token is"),
    ('\n"""Remember: the reference number is {key}."""\n', '\n"""What was the reference number? It was'),
    ("\n# config: retry_limit = {key}\n", "\n# Which retry_limit did the config set? retry_limit ="),
)


@dataclass(frozen=True)
class RecallText:
    text: str  # filler with one fact and several questions, each followed by its answer
    fact_start: int  # token span of the fact, in the session's tokenisation of `text`
    fact_end: int
    answer_starts: tuple[int, ...]  # token index where each answer begins


def recall_text(filler_ids: np.ndarray, tokenize, decode, rng: np.random.Generator, asks: int = 3) -> RecallText:
    """A training text: the filler with a fact planted in its first half and `asks` questions about it
    (each answered) spread over the second half. Template, key and positions come from `rng`."""
    fact_t, question_t = RECALL_TEMPLATES[int(rng.integers(len(RECALL_TEMPLATES)))]
    key = str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(3, 7))))
    n = len(filler_ids)
    cuts = [int(rng.uniform(0.05, 0.45) * n)] + sorted(int(x) for x in rng.uniform(0.55, 1.0, asks) * n)
    pieces, marks = [], []
    prev = 0
    for j, cut in enumerate(cuts):
        pieces.append(decode(filler_ids[prev:cut].tolist()))
        insert = fact_t.format(key=key) if j == 0 else question_t + f" {key}\n"
        marks.append((sum(len(p) for p in pieces), len(insert), j == 0, len(question_t)))
        pieces.append(insert)
        prev = cut
    pieces.append(decode(filler_ids[prev:].tolist()))
    text = "".join(pieces)
    ids = _tokens(text, tokenize)
    fact_start = fact_end = 0
    answers = []
    for at, length, is_fact, q_len in marks:
        if is_fact:
            fact_start = _char_to_token(ids, decode, at)
            fact_end = _char_to_token(ids, decode, at + length)
        else:
            answers.append(_char_to_token(ids, decode, at + q_len))
    return RecallText(text, fact_start, fact_end, tuple(answers))
