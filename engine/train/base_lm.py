"""Train the default base LM: a small Llama (`transformers`) on the stdlib corpus, on CPU, resumably.

Data: every split of the corpus is tokenized once (documents joined by `<|endoftext|>`) into a
uint16 file under `<run_dir>/data/`, re-made only when the tokenizer or corpus changes. Training
draws `batch_size` random windows of `seq_len + 1` tokens per step from the train split (early on,
more windows of `short_seq_len` tokens, same tokens per step), with a seeded generator whose state
is part of the checkpoint, so a resumed run continues where an uninterrupted one would be (same
batches and optimizer state; the same learning rate too when the budget is in steps or tokens,
while a wall-clock budget makes the schedule depend on the machine's speed).

Stopping: whichever of `max_steps`, `max_tokens`, `max_seconds` (wall-clock, across resumes) comes
first; the learning rate follows a cosine over the same progress fraction. Every `save_every_s`
the run folder gets a checkpoint (see `engine/train/common.py`); re-running the same command
resumes from it. At the end the model is evaluated on the whole validation and test splits and
written as a Hugging Face folder (`config.json`, `model.safetensors`, tokenizer files,
`train_log.json`) that `AutoModelForCausalLM.from_pretrained` and `engine.model.load_model` load
offline.

This module does not build the corpus or train the tokenizer (see `corpus.py`, `tokenizer.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from engine.train.common import (
    Budget,
    Checkpointer,
    CheckpointError,
    ProgressLog,
    cosine_lr,
    restore_training,
    seeded_generator,
    training_tensors,
    write_json,
)
from engine.train.corpus import SPLITS, read_split

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Fields that decide the model's shape or data: a resumed run must agree on these.
SHAPE_FIELDS = ("hidden", "layers", "heads", "kv_heads", "intermediate", "seq_len", "seed")


@dataclass(frozen=True)
class BaseLMConfig:
    hidden: int = 256  # model width (hidden_size)
    layers: int = 6  # transformer blocks
    heads: int = 8  # attention heads
    kv_heads: int = 4  # key/value heads (grouped-query attention)
    intermediate: int = 704  # SwiGLU inner width
    seq_len: int = 1024  # training context; also the config's max_position_embeddings
    short_seq_len: int = 512  # shorter windows (as many tokens per step) early on, when attention is cheaper; 0 = off
    short_fraction: float = 0.5  # share of training (by progress) that uses short_seq_len
    bf16: bool = True  # autocast matmuls to bfloat16 in training (fast on CPUs with AVX512-BF16); eval is float32
    batch_size: int = 8  # sequences per optimizer step
    micro_batch: int = 4  # sequences per forward/backward (gradient accumulation bounds memory)
    lr: float = 2e-3  # peak learning rate (AdamW)
    warmup: float = 0.03  # fraction of training spent warming up
    weight_decay: float = 0.1  # AdamW decay on matrices (not norms)
    max_steps: int = 0  # stop after this many optimizer steps; 0 = no limit
    max_tokens: int = 0  # stop after this many training tokens; 0 = no limit
    max_seconds: float = 0.0  # stop after this much wall-clock training time; 0 = no limit
    eval_every: int = 100  # steps between quick validation losses
    eval_tokens: int = 32_768  # validation tokens in a quick evaluation
    final_eval_tokens: int = 0  # tokens of each split in the final evaluation; 0 = the whole split
    save_every_s: float = 180.0  # seconds between checkpoints
    log_every: int = 10  # steps between progress lines
    threads: int = 2  # torch CPU threads (the machine is shared)
    seed: int = 0  # seeds initialisation and batch sampling

    def __post_init__(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"base LM config: {msg}")

        check(self.hidden >= 8 and self.layers >= 1, "hidden must be >= 8 and layers >= 1")
        check(self.heads >= 1 and self.hidden % self.heads == 0, "heads must divide hidden")
        check(self.kv_heads >= 1 and self.heads % self.kv_heads == 0, "kv_heads must divide heads")
        check(self.intermediate >= 1 and self.seq_len >= 2, "intermediate >= 1 and seq_len >= 2")
        check(0 <= self.short_seq_len <= self.seq_len, "short_seq_len must be in [0, seq_len]")
        check(self.short_seq_len == 0 or self.seq_len % self.short_seq_len == 0, "short_seq_len must divide seq_len")
        check(0.0 <= self.short_fraction <= 1.0, "short_fraction must be in [0, 1]")
        check(1 <= self.micro_batch <= self.batch_size, "micro_batch must be in [1, batch_size]")
        check(self.batch_size % self.micro_batch == 0, "batch_size must be a multiple of micro_batch")
        check(self.lr > 0 and 0 <= self.warmup < 1 and self.weight_decay >= 0, "lr > 0, warmup in [0, 1)")
        check(self.max_steps or self.max_tokens or self.max_seconds, "set max_steps, max_tokens or max_seconds")
        check(min(self.max_steps, self.max_tokens, self.max_seconds) >= 0, "limits must be >= 0")
        check(self.final_eval_tokens >= 0, "final_eval_tokens must be >= 0")
        check(self.eval_every >= 1 and self.eval_tokens >= self.seq_len, "eval_every >= 1, eval_tokens >= seq_len")
        check(self.save_every_s > 0 and self.log_every >= 1 and self.threads >= 1, "save/log/threads must be > 0")


def model_config(cfg: BaseLMConfig, vocab_size: int, eos_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.seq_len,
        tie_word_embeddings=True,  # saves vocab*hidden parameters (MBs on disk) at no measurable cost here
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def build_model(cfg: BaseLMConfig, vocab_size: int, eos_id: int, gen: torch.Generator) -> LlamaForCausalLM:
    """A fresh float32 Llama initialised from `gen` alone (GPT-2 style: N(0, 0.02), residual outputs scaled)."""
    model = LlamaForCausalLM(model_config(cfg, vocab_size, eos_id))
    resid_std = 0.02 / math.sqrt(2 * cfg.layers)  # keeps the residual stream's variance flat in depth
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0)  # RMSNorm weights
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, resid_std, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model


# ---------------------------------------------------------------------------------------------
# data


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tokenize_splits(corpus_dir: Path, tokenizer_dir: Path, data_dir: Path) -> dict[str, np.ndarray]:
    """uint16 token streams of every split (documents joined by EOS), cached in `data_dir`."""
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    key = {"tokenizer": _sha256(Path(tokenizer_dir) / "tokenizer.json")}
    key["corpus"] = _sha256(Path(corpus_dir) / "manifest.json")
    meta_path = Path(data_dir) / "meta.json"
    fresh = meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key
    out, counts = {}, {}
    for split in SPLITS:
        path = Path(data_dir) / f"{split}.u16"
        if not (fresh and path.is_file()):
            names_texts = list(read_split(corpus_dir, split))
            ids: list[int] = []
            for _, text in names_texts:
                ids.append(tok.eos_token_id)  # every document starts after an EOS, as at inference
                ids.extend(tok.encode(text, add_special_tokens=False))
            path.parent.mkdir(parents=True, exist_ok=True)
            np.asarray(ids, dtype=np.uint16).tofile(path)
            counts[split] = {name: len(tok.encode(text, add_special_tokens=False)) for name, text in names_texts}
        out[split] = np.fromfile(path, dtype=np.uint16)
    if not fresh:
        write_json(meta_path, {"key": key, "tokens": {s: int(a.size) for s, a in out.items()}, "doc_tokens": counts})
    return out


def sample_batch(data: np.ndarray, n: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """n random windows of seq_len + 1 tokens -> LongTensor [n, seq_len + 1]."""
    starts = torch.randint(0, data.size - seq_len - 1, (n,), generator=gen)  # [n]
    rows = [torch.from_numpy(data[s : s + seq_len + 1].astype(np.int64)) for s in starts.tolist()]
    return torch.stack(rows)  # [n, seq_len + 1]


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, data: np.ndarray, seq_len: int, max_tokens: int = 0, batch: int = 4) -> dict:
    """Mean NLL (nats/token) over consecutive non-overlapping windows of `data` (all, or the first max_tokens).

    Every window starts fresh (no carried context), so tokens early in a window see little context:
    this is the standard "chunked" perplexity, the same for every model with this seq_len.
    """
    model.eval()
    n_win = (data.size - 1) // seq_len
    if max_tokens:
        n_win = min(n_win, max(1, max_tokens // seq_len))
    total, count = 0.0, 0
    for w0 in range(0, n_win, batch):
        ws = range(w0, min(n_win, w0 + batch))
        rows = [data[w * seq_len : (w + 1) * seq_len + 1].astype(np.int64) for w in ws]
        x = torch.from_numpy(np.stack(rows))  # [b, seq_len + 1]
        logits = model(input_ids=x[:, :-1], use_cache=False).logits  # [b, seq_len, V]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum")
        total, count = total + float(loss), count + x[:, 1:].numel()
    model.train()
    return {"loss": total / max(1, count), "tokens": count}


# ---------------------------------------------------------------------------------------------
# training


def _optimizer(model: torch.nn.Module, cfg: BaseLMConfig) -> torch.optim.AdamW:
    # Parameter order is the model's, so optimizer state indices in checkpoints stay stable.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def train_base_lm(
    cfg: BaseLMConfig,
    corpus_dir: Path,
    tokenizer_dir: Path,
    run_dir: Path,
    out_dir: Path | None,
    stop_after_step: int = 0,
) -> dict:
    """Train (or resume) in `run_dir`; when the budget is spent, evaluate and export to `out_dir`.

    Returns the training log (dict) that is also written as `out_dir/train_log.json`.
    `stop_after_step > 0` checkpoints and returns right after that step, as if the process had
    been killed there (tests use it to check that a resumed run equals an uninterrupted one).
    """
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    data = tokenize_splits(corpus_dir, tokenizer_dir, run_dir / "data")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    gen = seeded_generator(cfg.seed)
    model = build_model(cfg, len(tok), tok.eos_token_id, gen)
    model.train()
    opt = _optimizer(model, cfg)
    budget = Budget(max_steps=cfg.max_steps, max_tokens=cfg.max_tokens, max_seconds=cfg.max_seconds)
    ckpt = Checkpointer(run_dir, every_s=cfg.save_every_s)
    resumed = ckpt.load()
    state: dict | None = None
    if resumed is not None:
        tensors, state = resumed
        old = state.get("config", {})
        changed = [f for f in SHAPE_FIELDS if old.get(f) != getattr(cfg, f)]
        if changed:
            raise CheckpointError(f"run folder {run_dir} was trained with other {', '.join(changed)}; use a new folder")
        restore_training(model, opt, gen, tensors)
        budget.resume(state)
        print(f"resumed {run_dir} at step {budget.step} ({budget.tokens} tokens)", flush=True)
    log = ProgressLog(every=cfg.log_every, resume=state, tokens=budget.tokens)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; train tokens {data['train'].size}", flush=True)
    cfg_dict = dataclasses.asdict(cfg)
    accum = cfg.batch_size // cfg.micro_batch
    while not budget.done():
        lr = cosine_lr(budget.fraction(), cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        # Same tokens per step either way: short windows come r times as many.
        short = cfg.short_seq_len and budget.fraction() < cfg.short_fraction
        seq = cfg.short_seq_len if short else cfg.seq_len
        rows = cfg.micro_batch * (cfg.seq_len // seq)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(accum):
            x = sample_batch(data["train"], rows, seq, gen)  # [rows, seq + 1]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(input_ids=x[:, :-1], use_cache=False).logits  # [rows, seq, V]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            (loss / accum).backward()
            loss_sum += float(loss.detach()) / accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        budget.advance(tokens=cfg.batch_size * cfg.seq_len)
        extra = {"lr": lr, "seq": seq}
        if budget.step % cfg.eval_every == 0:
            extra["val_loss"] = evaluate(model, data["validation"], cfg.seq_len, cfg.eval_tokens)["loss"]
        log.step(budget, loss_sum, force="val_loss" in extra, **extra)
        if ckpt.due() or budget.step == stop_after_step:
            ckpt.save(training_tensors(model, opt, gen), log.state(budget, cfg_dict))
        if budget.step == stop_after_step:
            return log.state(budget, cfg_dict, interrupted=True)
    ckpt.save(training_tensors(model, opt, gen), log.state(budget, cfg_dict))
    if out_dir is None:
        return log.state(budget, cfg_dict)
    return finish(model, cfg, data, tokenizer_dir, out_dir, log.state(budget, cfg_dict, parameters=n_params))


def _carry_companions(old_dir: Path, stage: Path) -> None:
    """Keep files other trainers put beside the base model (GistNet, LensNet, their logs).

    Their weights were trained against the *previous* base model, so they are kept renamed to
    `<name>.stale`: the runtime then falls back to its untrained defaults and says so in the
    manifest, instead of silently feeding the new model gists from another embedding space.
    """
    for f in sorted(old_dir.iterdir()):
        if not f.is_file() or (stage / f.name).exists():
            continue
        dest = stage / (f.name + ".stale" if f.suffix == ".safetensors" else f.name)
        shutil.copy2(f, dest)
        if dest.name != f.name:
            print(f"kept {f.name} as {dest.name}: it was trained against the previous base model", flush=True)


def finish(model, cfg: BaseLMConfig, data: dict, tokenizer_dir: Path, out_dir: Path, state: dict) -> dict:
    """Final evaluation on the whole validation and test splits, then the Hugging Face export."""
    t0 = time.monotonic()
    final = {s: evaluate(model, data[s], cfg.seq_len, cfg.final_eval_tokens) for s in ("validation", "test")}
    print(f"final: {json.dumps(final)} ({time.monotonic() - t0:.0f}s)", flush=True)
    # Write a staging folder and swap it in whole: whoever loads `out_dir` meanwhile sees the old
    # model or the new one, never half of each.
    out_dir = Path(out_dir)
    stage = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    model.eval()
    model.save_pretrained(str(stage), safe_serialization=True)
    eos = model.config.eos_token_id
    GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos).save_pretrained(str(stage))
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy2(Path(tokenizer_dir) / name, stage / name)
    log = {
        "model": {"parameters": state.get("parameters"), "config": state["config"]},
        "training": {k: state[k] for k in ("step", "tokens", "elapsed_s")},
        "final_eval": final,
        "curve": state["curve"],
        "split_tokens": {s: int(a.size) for s, a in data.items()},
        "torch": torch.__version__,
        "threads": cfg.threads,
    }
    write_json(stage / "train_log.json", log)
    if out_dir.exists():
        _carry_companions(out_dir, stage)
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(stage, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(stage, out_dir)
    return log


def evaluate_folder(model_dir: Path, corpus_dir: Path, run_dir: Path, splits: list[str], max_tokens: int = 0) -> dict:
    """Load a HF folder the way the engine does (safetensors only) and measure NLL on corpus splits."""
    from engine.model import load_model

    torch.set_num_threads(2)
    base = load_model(str(model_dir), device="cpu")
    data = tokenize_splits(corpus_dir, model_dir, Path(run_dir) / "data")
    seq_len = base.max_positions or 1024
    return {s: evaluate(base.model, data[s], seq_len, max_tokens) for s in splits}
