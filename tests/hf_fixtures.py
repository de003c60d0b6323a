"""Tiny Hugging Face model folders for tests: a byte-level BPE trained in memory and a small Llama.

Nothing is downloaded; a folder is written with `save_pretrained`, exactly what a user would point
`--model` at.
"""

from __future__ import annotations

from pathlib import Path

import torch


def bpe_tokenizer(texts: list[str], vocab_size: int = 200, bos: bool = True):
    """A byte-level BPE (`<s>` as its one special token, prepended by default when `bos`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    if bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


def llama_folder(root: Path, texts: list[str], vocab_size: int = 300, max_positions: int = 4096, seed: int = 0) -> Path:
    """A tiny Llama (hidden 32, 2 layers) with a BPE of at most `vocab_size` tokens, saved to `root`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bpe_tokenizer(texts, vocab_size, bos=False)
    tok.save_pretrained(root)
    vocab = max(vocab_size, len(tok))
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=vocab, max_position_embeddings=max_positions)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(root)
    return root
