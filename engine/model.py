"""Base model adapter: a frozen Hugging Face causal LM driven by `inputs_embeds` + `position_ids`.

`BaseModel` wraps any `AutoModelForCausalLM` and its tokenizer behind the few calls the engine
needs: tokenize, embed tokens, run a forward on an interleaved sequence of token embeddings and
gists (optionally with attention maps), and score a continuation's NLL. `lm_forward` is the one way
the engine calls a Hugging Face causal LM, and the tail-attention kernel (`TAIL_ATTN`) captures where
the newest queries look.

This module does not load anything: `engine/model_loader.py` turns a user-facing spec ("tiny",
"default" or a local folder) into a `BaseModel` (and raises `ModelLoadError`). It does not build
working contexts, gists or positions either (see `engine/materialize.py`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

# ---------------------------------------------------------------------------------------------
# tail attention: where the newest queries look, without materialising any attention map

TAIL_ATTN = "mcs_tail_sdpa"  # SDPA for the output, plus the attention rows of the last few queries


def _tail_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA attention that also records, per layer, the attention mass of the last `q` queries.

    The caller passes `mcs_tail=(q, out_list, heads)` through the model's forward kwargs; this appends
    a float32 [B, T] tensor per layer: the softmax rows of the last q query positions, averaged over
    heads and queries (each row sums to 1), or with `heads` one row per head, [B, H, T]. Costs q x T
    scores per head instead of T x T. Without `mcs_tail` it is plain SDPA. Assumes unpadded causal
    inputs (the engine never pads).
    """
    tail = kwargs.pop("mcs_tail", None)
    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if tail is not None:
        q, sink, heads = tail
        T = key.shape[2]
        q = min(q, query.shape[2])
        groups = getattr(module, "num_key_value_groups", 1)
        k = repeat_kv(key, groups) if groups > 1 else key  # [B, H, T, hd]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = (query[:, :, -q:, :].float() @ k.float().transpose(-1, -2)) * scale  # [B, H, q, T]
        rows = torch.arange(T - q, T, device=scores.device)[:, None]  # [q, 1] absolute query positions
        scores = scores.masked_fill(torch.arange(T, device=scores.device)[None, :] > rows, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # [B, H, q, T]
        sink.append(probs.mean(dim=2) if heads else probs.mean(dim=(1, 2)))  # [B, H, T] or [B, T]
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
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, tail: int, logits_to_keep: int = 0,
        heads: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """`forward`, plus where the last `tail` queries look: (logits float32, mass float32 [L, B, T]).

        mass[l, b] is layer l's attention of the last `tail` positions of row b, averaged over heads
        and those queries (sums to 1 over the causal prefix); with `heads`, one row per head,
        mass [L, B, H, T]. SDPA stays the kernel (no T x T map); on an eager-only architecture the
        eager maps are reduced the same way.
        """
        keep = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        x = inputs_embeds.to(self._device, self._dtype)  # [B, T, d]
        pos = position_ids.to(self._device, torch.long)  # [B, T]
        if self._attn_impl == "eager":
            logits, attns = self.forward(x, pos, output_attentions=True, logits_to_keep=logits_to_keep)
            dims = 2 if heads else (1, 2)
            return logits, torch.stack([a[:, :, -tail:, :].mean(dim=dims) for a in attns])
        sink: list[torch.Tensor] = []
        self._model.set_attn_implementation(TAIL_ATTN)
        try:
            out = lm_forward(self._model, x, pos, mcs_tail=(tail, sink, heads), **keep)
        finally:
            self._model.set_attn_implementation(self._attn_impl)
        if len(sink) != self._model.config.num_hidden_layers:
            raise RuntimeError(f"model {self._model_id} did not route attention through the tail capture")
        return out.logits.float(), torch.stack(sink)  # [1, k, V], [L, B, T] (or [L, B, H, T] with heads)

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
