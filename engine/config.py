"""Run configuration: one frozen dataclass per component, composed into `RunConfig`.

Every knob has exactly one name, `section.field`, used unchanged by the CLI (`--set
allocator.cooldown_steps=3`), the run manifest, the app's sliders and Parquet columns.
`__post_init__` raises `ValueError` naming the field and its allowed range; nothing is clamped.

This module does not load models or touch torch: it is plain data plus parsing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from dataclasses import dataclass, field

INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # every integer knob fits int64 (manifests, Parquet, torch seeds)


def _check(ok: bool, name: str, allowed: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {_shown(value)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, object], ...]:
    return tuple(typing.get_type_hints(cls).items())


def _is_a(value: object, typ: object) -> bool:
    """Whether `value` is of a knob's declared type: bool, int (no bool), float (an int too), str, or a tuple."""
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if typ is str:
        return isinstance(value, str)
    if typing.get_origin(typ) is tuple:
        return isinstance(value, tuple) and all(_is_a(v, typing.get_args(typ)[0]) for v in value)
    return True


def _check_types(section: object, prefix: str) -> None:
    """Every field of a config section has its declared type, and every integer fits int64.

    Run first in each `__post_init__`, so that a manifest's `"block_size": "abc"` (or a seed with
    24 digits) is refused here, naming the knob, not later by a comparison or by torch.
    """
    for name, typ in _field_types(type(section)):
        value, knob = getattr(section, name), f"{prefix}.{name}"
        if not _is_a(value, typ):
            if typing.get_origin(typ) is tuple:
                what = f"a tuple of {typing.get_args(typ)[0].__name__}"
            else:
                what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[typ]
            raise ValueError(f"{knob} must be {what}, got {_shown(value)}")
        if typ is int and not INT_MIN <= value <= INT_MAX:
            bound = f"at most 2**63-1 = {INT_MAX}" if value > 0 else f"at least -2**63 = {INT_MIN}"
            raise ValueError(f"{knob} must be a 64-bit integer, {bound}, got {_shown(value)}")


@dataclass(frozen=True)
class TreeConfig:
    block_size: int = 32  # tokens per LOD0 block and children per gist
    max_lod: int = 2  # coarsest level of the gist tree (LOD2 gist = 32 LOD1 gists)
    spill_dir: str = ""  # folder for memory-mapped gist storage; "" keeps gists in host RAM

    def __post_init__(self) -> None:
        _check_types(self, "tree")
        _check(2 <= self.block_size <= 1024, "tree.block_size", "in [2, 1024]", self.block_size)
        _check(1 <= self.max_lod <= 4, "tree.max_lod", "in [1, 4]", self.max_lod)


POSITION_MODES = ("auto", "global", "compact")


@dataclass(frozen=True)
class WorkingContextConfig:
    w_max: int = 2048  # budget: maximum total cost of the working context, in token positions
    protect_recent: int = 128  # newest tokens kept at LOD0 (rounded up to whole blocks)
    # "auto" resolves to "compact" for a model with a finite trained context (the default model),
    # else to "global"; the manifest records the result
    position_mode: str = "auto"  # "global": true positions; "compact": renumber 0..cost-1; or "auto"

    def __post_init__(self) -> None:
        _check_types(self, "wc")
        _check(self.w_max >= 1, "wc.w_max", ">= 1", self.w_max)
        _check(self.protect_recent >= 0, "wc.protect_recent", ">= 0", self.protect_recent)
        _check(
            self.position_mode in POSITION_MODES,
            "wc.position_mode",
            "one of 'auto', 'global', 'compact'",
            self.position_mode,
        )


@dataclass(frozen=True)
class AllocatorConfig:
    interp_gate: float = 1.0  # NTM gate g: s = g*raw + (1-g)*s_prev; 1.0 = off
    shift_kernel: tuple[float, float] = (0.0, 0.0)  # (left, right) neighbour weights; (0, 0) = off
    sharpen_gamma: float = 1.0  # sharpening exponent: sign(s)*|s|**gamma; 1.0 = off
    tau_expand: float = 0.2  # expand an entry whose score is above this
    tau_collapse: float = 0.2  # collapse an entry whose score is below minus this
    cooldown_steps: int = 2  # an edit cannot be reversed for this many refocus steps
    hysteresis_margin: float = 0.1  # extra threshold needed to reverse a recent edit
    hysteresis_steps: int = 8  # an edit counts as recent for this many refocus steps
    max_edits: int = 4  # voluntary edits applied per refocus step (forced ones are extra)
    iterations: int = 1  # scorer/allocator rounds per refocus step

    def __post_init__(self) -> None:
        _check_types(self, "allocator")
        _check(0.0 <= self.interp_gate <= 1.0, "allocator.interp_gate", "in [0, 1]", self.interp_gate)
        _check(
            len(self.shift_kernel) == 2 and all(0.0 <= w <= 1.0 for w in self.shift_kernel),
            "allocator.shift_kernel",
            "two weights (left,right) each in [0, 1]",
            self.shift_kernel,
        )
        _check(0.1 <= self.sharpen_gamma <= 10.0, "allocator.sharpen_gamma", "in [0.1, 10]", self.sharpen_gamma)
        _check(0.0 <= self.tau_expand < 1.0, "allocator.tau_expand", "in [0, 1)", self.tau_expand)
        _check(0.0 <= self.tau_collapse < 1.0, "allocator.tau_collapse", "in [0, 1)", self.tau_collapse)
        _check(0 <= self.cooldown_steps <= 10_000, "allocator.cooldown_steps", "in [0, 10000]", self.cooldown_steps)
        _check(0.0 <= self.hysteresis_margin <= 1.0, "allocator.hysteresis_margin", "in [0, 1]", self.hysteresis_margin)
        _check(
            0 <= self.hysteresis_steps <= 10_000, "allocator.hysteresis_steps", "in [0, 10000]", self.hysteresis_steps
        )
        _check(1 <= self.max_edits <= 100_000, "allocator.max_edits", "in [1, 100000]", self.max_edits)
        _check(1 <= self.iterations <= 16, "allocator.iterations", "in [1, 16]", self.iterations)


SCORER_NAMES = ("lensnet", "recency", "compressive", "retrieval", "hopfield", "attention", "sink", "random")


@dataclass(frozen=True)
class ScorerConfig:
    name: str = "lensnet"  # which policy scores the working context
    seed: int = 0  # seed for the random scorer and random-initialised weights
    retrieval_top_k: int = 8  # retrieval: entries expanded per step (top-k by cosine)
    hopfield_beta: float = 8.0  # hopfield: inverse temperature of the softmax
    compressive_raw_share: float = 0.5  # compressive: share of w_max kept as raw recent tokens
    compressive_lod1_share: float = 0.25  # compressive: share of w_max spent on LOD1 gists
    query_blocks: int = 1  # newest blocks (plus tail) that form the query of similarity scorers
    sink_blocks: int = 1  # sink: oldest blocks kept raw beside the recent window (StreamingLLM's sink)

    def __post_init__(self) -> None:
        _check_types(self, "scorer")
        _check(self.name in SCORER_NAMES, "scorer.name", f"one of {', '.join(SCORER_NAMES)}", self.name)
        _check(self.seed >= 0, "scorer.seed", ">= 0", self.seed)
        _check(self.retrieval_top_k >= 1, "scorer.retrieval_top_k", ">= 1", self.retrieval_top_k)
        _check(0.0 < self.hopfield_beta <= 1000.0, "scorer.hopfield_beta", "in (0, 1000]", self.hopfield_beta)
        _check(
            0.0 < self.compressive_raw_share < 1.0,
            "scorer.compressive_raw_share",
            "in (0, 1)",
            self.compressive_raw_share,
        )
        _check(
            0.0 <= self.compressive_lod1_share < 1.0 - self.compressive_raw_share,
            "scorer.compressive_lod1_share",
            "in [0, 1 - compressive_raw_share)",
            self.compressive_lod1_share,
        )
        _check(1 <= self.query_blocks <= 64, "scorer.query_blocks", "in [1, 64]", self.query_blocks)
        _check(1 <= self.sink_blocks <= 64, "scorer.sink_blocks", "in [1, 64]", self.sink_blocks)


@dataclass(frozen=True)
class GistNetConfig:
    hidden: int = 256  # width of GistNet's transformer
    layers: int = 2  # bidirectional transformer layers
    heads: int = 4  # attention heads
    pooling: str = "query"  # "mean" or "query" (a learned query attends over the children)

    def __post_init__(self) -> None:
        _check_types(self, "gistnet")
        _check(self.hidden >= 8, "gistnet.hidden", ">= 8", self.hidden)
        _check(1 <= self.layers <= 24, "gistnet.layers", "in [1, 24]", self.layers)
        _check(self.heads >= 1 and self.hidden % self.heads == 0, "gistnet.heads", "a divisor of hidden", self.heads)
        _check(self.pooling in ("mean", "query"), "gistnet.pooling", "one of 'mean', 'query'", self.pooling)


@dataclass(frozen=True)
class LensNetConfig:
    hidden: int = 128  # width of LensNet
    layers: int = 2  # dual cross-attention layers
    heads: int = 4  # attention heads
    query_gists: int = 4  # newest gists that join the tail block as query vectors

    def __post_init__(self) -> None:
        _check_types(self, "lensnet")
        _check(self.hidden >= 8, "lensnet.hidden", ">= 8", self.hidden)
        _check(1 <= self.layers <= 24, "lensnet.layers", "in [1, 24]", self.layers)
        _check(self.heads >= 1 and self.hidden % self.heads == 0, "lensnet.heads", "a divisor of hidden", self.heads)
        _check(0 <= self.query_gists <= 64, "lensnet.query_gists", "in [0, 64]", self.query_gists)


@dataclass(frozen=True)
class SessionConfig:
    refocus_every: int = 32  # tokens read between refocus steps
    compute_nll: bool = True  # run the base model on the WC to get the next block's NLL
    nll_every: int = 1  # measure that NLL (and the baselines) at every Nth refocus step only
    attention_every: int = 0  # record base-model attention every N steps; 0 = never
    entries_every: int = 1  # record the per-entry table every N steps (dense tables' cadence)
    record_gists: bool = True  # record LOD>=1 gist vectors (the `gists` table, for the app's gist map)
    baselines: bool = False  # also compute full-context and recency-window NLL on each step
    check_invariants: bool = True  # verify all WC invariants after every step (raises on breach)
    max_tokens: int = 0  # stop after this many tokens; 0 = read the whole input

    def __post_init__(self) -> None:
        _check_types(self, "session")
        _check(1 <= self.refocus_every <= 65_536, "session.refocus_every", "in [1, 65536]", self.refocus_every)
        _check(1 <= self.nll_every <= 65_536, "session.nll_every", "in [1, 65536]", self.nll_every)
        _check(self.attention_every >= 0, "session.attention_every", ">= 0", self.attention_every)
        _check(self.entries_every >= 1, "session.entries_every", ">= 1", self.entries_every)
        _check(self.max_tokens >= 0, "session.max_tokens", ">= 0", self.max_tokens)


def protected_blocks(tree: TreeConfig, wc: WorkingContextConfig) -> int:
    """Number of newest complete blocks that must stay at LOD0."""
    return math.ceil(wc.protect_recent / tree.block_size)


def min_w_max(tree: TreeConfig, wc: WorkingContextConfig) -> int:
    """Smallest budget that eviction can always honour.

    After every legal collapse, what cannot be collapsed or evicted is: the protected LOD0 blocks,
    the tail (< one block), and per level at most two incomplete sibling groups of LOD>=1 gists.
    """
    bs = tree.block_size
    return (protected_blocks(tree, wc) + 1) * bs + 2 * tree.max_lod * (bs - 1) + 1


@dataclass(frozen=True)
class RunConfig:
    tree: TreeConfig = field(default_factory=TreeConfig)
    wc: WorkingContextConfig = field(default_factory=WorkingContextConfig)
    allocator: AllocatorConfig = field(default_factory=AllocatorConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    gistnet: GistNetConfig = field(default_factory=GistNetConfig)
    lensnet: LensNetConfig = field(default_factory=LensNetConfig)
    session: SessionConfig = field(default_factory=SessionConfig)

    def __post_init__(self) -> None:
        lo = min_w_max(self.tree, self.wc)
        _check(
            self.wc.w_max >= lo,
            "wc.w_max",
            f">= {lo} (protected blocks + tail + incomplete gist groups at this block_size/max_lod)",
            self.wc.w_max,
        )

    def to_dict(self) -> dict[str, dict[str, object]]:
        """Nested plain dict, section -> field -> value (tuples as lists), for the manifest."""
        out: dict[str, dict[str, object]] = {}
        for sec in dataclasses.fields(self):
            sub = getattr(self, sec.name)
            out[sec.name] = {
                f.name: list(v) if isinstance(v := getattr(sub, f.name), tuple) else v for f in dataclasses.fields(sub)
            }
        return out

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, object]]) -> RunConfig:
        """Inverse of `to_dict`. Unknown sections or fields, and values of the wrong type (a manifest
        edited by hand), raise ValueError naming the knob."""
        kwargs = {}
        sections = {f.name: f for f in dataclasses.fields(cls)}
        if not isinstance(d, dict):
            raise ValueError(f"config must be a mapping of sections, got {_shown(d)}")
        for name, values in d.items():
            if name not in sections:
                raise ValueError(f"unknown config section {name!r}; known: {', '.join(sections)}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {name} must be a mapping of knobs, got {_shown(values)}")
            sub_cls = _section_type(name)
            known = {f.name for f in dataclasses.fields(sub_cls)}
            for k in values:
                if k not in known:
                    raise ValueError(f"unknown knob {name}.{k}; known: {', '.join(sorted(known))}")
            fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            kwargs[name] = sub_cls(**fixed)
        return cls(**kwargs)

    def flat(self) -> dict[str, object]:
        """Flat dict `section.field -> value`, the one-name form of every knob."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}


def _section_type(name: str) -> type:
    hints = typing.get_type_hints(RunConfig)
    return hints[name]


def parse_value(text: str, typ: object, key: str) -> object:
    """Parse a `--set` value string into a field's declared type (bool, int, float, str, or a tuple
    of one of those: comma-separated, parentheses optional). ValueError names `key` and the text."""
    try:
        if typ is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
        if typing.get_origin(typ) is tuple:
            parts = [p.strip() for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(parse_value(p, typing.get_args(typ)[0], key) for p in parts)
    except ValueError:
        pass
    name = getattr(typ, "__name__", str(typ))
    raise ValueError(f"{key}: cannot parse {text!r} as {name}")


def apply_overrides(cfg: RunConfig, sets: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply `section.field=value` strings (the CLI's repeatable `--set`) to a config.

    Raises ValueError with one line naming the bad knob, the bad value or the violated range.
    """
    changes: dict[str, dict[str, object]] = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects section.field=value, got {item!r}")
        key, _, text = item.partition("=")
        key = key.strip()
        if key.count(".") != 1:
            raise ValueError(f"--set expects section.field=value, got {item!r}")
        section, name = key.split(".")
        sections = {f.name for f in dataclasses.fields(RunConfig)}
        if section not in sections:
            raise ValueError(
                f"unknown config section {section!r} in --set {item!r}; known: {', '.join(sorted(sections))}"
            )
        hints = typing.get_type_hints(_section_type(section))
        if name not in hints:
            raise ValueError(f"unknown knob {key!r}; known in {section}: {', '.join(sorted(hints))}")
        changes.setdefault(section, {})[name] = parse_value(text, hints[name], key)
    kwargs = {sec: dataclasses.replace(getattr(cfg, sec), **vals) for sec, vals in changes.items()}
    return dataclasses.replace(cfg, **kwargs)


def changed_knobs(base: RunConfig, other: RunConfig) -> dict[str, object]:
    """Knobs whose value differs between two configs, `section.field -> other's value`."""
    a, b = base.flat(), other.flat()
    return {k: b[k] for k in b if a.get(k) != b[k]}
