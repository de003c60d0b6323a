"""Byte-level BPE tokenizer of the default model, trained here with Hugging Face `tokenizers`.

Byte-level (GPT-2 style) so that any text, in any encoding of Unicode, round-trips exactly and no
byte is ever unknown. One special token, `<|endoftext|>`, separates documents in training and is
the model's BOS/EOS/PAD; `encode(text, add_special_tokens=False)` (what the engine calls) never
adds it. Trained on the train split only, so that validation/test text is unseen by every part of
the model.

`save_tokenizer` writes a standard `PreTrainedTokenizerFast` folder (`tokenizer.json`,
`tokenizer_config.json`, ...) that `AutoTokenizer.from_pretrained(path)` loads offline. This module
does not read the corpus from disk (the caller passes texts) and does not touch the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 8192  # total vocabulary: 256 bytes + merges + the special token
    min_frequency: int = 2  # a pair must occur this often to be merged

    def __post_init__(self) -> None:
        if not 258 <= self.vocab_size <= 65_535:  # token ids are stored as uint16
            raise ValueError(f"tokenizer.vocab_size must be in [258, 65535], got {self.vocab_size}")
        if self.min_frequency < 1:
            raise ValueError(f"tokenizer.min_frequency must be >= 1, got {self.min_frequency}")


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train a byte-level BPE on `texts`. Deterministic for the same texts in the same order."""
    tok = Tokenizer(models.BPE())
    # use_regex=True: GPT-2's pre-split (words, numbers, punctuation, whitespace runs) keeps merges
    # from crossing those boundaries; add_prefix_space=False so that "x" and " x" stay distinct.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def to_transformers(tok: Tokenizer) -> PreTrainedTokenizerFast:
    # No model_max_length: the engine tokenizes whole documents (far beyond the trained context) and
    # feeds the model windows itself, so a length warning would only be noise.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=None,  # byte-level: nothing is ever unknown
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
    )


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> PreTrainedTokenizerFast:
    """Write `tok` as a Hugging Face tokenizer folder; returns the transformers wrapper."""
    fast = to_transformers(tok)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast
