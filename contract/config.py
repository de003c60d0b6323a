"""Run configuration: one frozen dataclass per component, composed into `RunConfig`.

Every knob has exactly one name, `section.field`, used unchanged by the CLI (`--set
allocator.cooldown_steps=3`), the run manifest, the app's sliders and Parquet columns. Each field
is declared with `knob(default, help, ...)`: its meaning and what it allows (range, choices, a rule
on other knobs) are data on the field (`Knob`, in the field's metadata), read by validation, by the
README's reference (`scripts/gen_reference.py`) and by the app's widgets (`knob_spec`).
`__post_init__` raises `ValueError` naming the field and what it allows; nothing is clamped.

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


@dataclass(frozen=True)
class Knob:
    """What one knob means and allows. `lo`/`hi` bound a number (each element of a tuple), open
    when `lo_open`/`hi_open`; `choices` lists a string's values; `length` fixes a tuple's length;
    `rule` states a condition on other knobs that the section checks in code (`check_rule`)."""

    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    length: int | None = None
    rule: str = ""

    def range_text(self) -> str:
        """What the range and choices allow, as the errors and the README say it ("" if unbounded)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            text = f"in {'(' if self.lo_open else '['}{_num(lo)}, {_num(hi)}{')' if self.hi_open else ']'}"
        elif lo is not None:
            text = f"{'>' if self.lo_open else '>='} {_num(lo)}"
        elif hi is not None:
            text = f"{'<' if self.hi_open else '<='} {_num(hi)}"
        else:
            text = ""
        if self.length is not None:
            return f"{self.length} numbers, each {text}" if text else f"{self.length} numbers"
        return text

    def allowed(self) -> list[str]:
        """Every statement of what the knob allows: the range text, then the rule."""
        return [t for t in (self.range_text(), self.rule) if t]

    def admits(self, value: object) -> bool:
        """Whether `value` (already of the knob's type) is within the range and choices; rules aside."""
        if self.choices:
            return value in self.choices
        if value != value:  # NaN is within no range
            return False
        if isinstance(value, tuple):
            return (self.length is None or len(value) == self.length) and all(self.admits(v) for v in value)
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def knob(default: object, help: str, **allowed) -> object:
    """A config field with its `Knob` (meaning and allowed values) attached as metadata."""
    return field(default=default, metadata={"knob": Knob(help, **allowed)})


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


def check_knobs(section: object, prefix: str) -> None:
    """Every field of a config section has its declared type, every integer fits int64, and every
    value is within its `Knob`'s range and choices (rules on other knobs are the section's own).

    Run first in each `__post_init__`, so that a manifest's `"block_size": "abc"` (or a seed with
    24 digits) is refused here, naming the knob, not later by a comparison or by torch.
    """
    for name, typ in _field_types(type(section)):
        value, key = getattr(section, name), f"{prefix}.{name}"
        if not _is_a(value, typ):
            if typing.get_origin(typ) is tuple:
                what = f"a tuple of {typing.get_args(typ)[0].__name__}"
            else:
                what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[typ]
            raise ValueError(f"{key} must be {what}, got {_shown(value)}")
        if typ is int and not INT_MIN <= value <= INT_MAX:
            bound = f"at most 2**63-1 = {INT_MAX}" if value > 0 else f"at least -2**63 = {INT_MIN}"
            raise ValueError(f"{key} must be a 64-bit integer, {bound}, got {_shown(value)}")
        spec = _spec(type(section), name)
        _check(spec.admits(value), key, spec.range_text(), value)


@functools.cache
def _specs(cls: type) -> dict[str, Knob]:
    """Each field's `Knob`, by field name (every section is validated field by field on construction)."""
    return {f.name: f.metadata["knob"] for f in dataclasses.fields(cls)}


def _spec(cls: type, name: str) -> Knob:
    return _specs(cls)[name]


def check_rule(section: object, prefix: str, name: str, ok: bool) -> None:
    """A rule of a knob on other knobs (its `Knob.rule`, stated once, on the field)."""
    _check(ok, f"{prefix}.{name}", _spec(type(section), name).rule, getattr(section, name))


def knob_spec(name: str) -> tuple[type, Knob]:
    """(declared type, Knob) of the knob `section.field`; KeyError if there is none."""
    section, _, field_name = name.partition(".")
    cls = _section_type(section)
    return dict(_field_types(cls))[field_name], _spec(cls, field_name)


@dataclass(frozen=True)
class TreeConfig:
    block_size: int = knob(32, "tokens per LOD0 block and children per gist", lo=2, hi=1024)
    max_lod: int = knob(2, "coarsest level of the gist tree (LOD2 gist = 32 LOD1 gists)", lo=1, hi=4)
    spill_dir: str = knob("", 'folder for memory-mapped gist storage; "" keeps gists in host RAM')

    def __post_init__(self) -> None:
        check_knobs(self, "tree")


POSITION_MODES = ("auto", "global", "compact")
W_MAX_RULE = ">= min_w_max(tree, wc) (protected blocks + tail + incomplete gist groups at this block_size/max_lod)"


@dataclass(frozen=True)
class WorkingContextConfig:
    w_max: int = knob(2048, "budget: maximum total cost of the working context, in token positions", lo=1,
                      rule=W_MAX_RULE)  # fmt: skip
    protect_recent: int = knob(128, "newest tokens kept at LOD0 (rounded up to whole blocks)", lo=0)
    # "auto" resolves to "compact" for a model with a finite trained context (the default model),
    # else to "global"; the manifest records the result
    position_mode: str = knob("auto", '"global": true positions; "compact": renumber 0..cost-1; or "auto"',
                              choices=POSITION_MODES)  # fmt: skip

    def __post_init__(self) -> None:
        check_knobs(self, "wc")


@dataclass(frozen=True)
class AllocatorConfig:
    interp_gate: float = knob(1.0, "NTM gate g: s = g*raw + (1-g)*s_prev; 1.0 = off", lo=0, hi=1)
    shift_kernel: tuple[float, float] = knob((0.0, 0.0), "(left, right) neighbour weights; (0, 0) = off",
                                             lo=0, hi=1, length=2)  # fmt: skip
    sharpen_gamma: float = knob(1.0, "sharpening exponent: sign(s)*|s|**gamma; 1.0 = off", lo=0.1, hi=10)
    tau_expand: float = knob(0.2, "expand an entry whose score is above this", lo=0, hi=1, hi_open=True)
    tau_collapse: float = knob(0.2, "collapse an entry whose score is below minus this", lo=0, hi=1, hi_open=True)
    cooldown_steps: int = knob(2, "an edit cannot be reversed for this many refocus steps", lo=0, hi=10_000)
    hysteresis_margin: float = knob(0.1, "extra threshold needed to reverse a recent edit", lo=0, hi=1)
    hysteresis_steps: int = knob(8, "an edit counts as recent for this many refocus steps", lo=0, hi=10_000)
    max_edits: int = knob(4, "voluntary edits applied per refocus step (forced ones are extra)", lo=1, hi=100_000)
    iterations: int = knob(1, "scorer/allocator rounds per refocus step", lo=1, hi=16)

    def __post_init__(self) -> None:
        check_knobs(self, "allocator")


SCORER_NAMES = ("lensnet", "recency", "compressive", "retrieval", "hopfield", "attention", "sink", "random")


@dataclass(frozen=True)
class ScorerConfig:
    name: str = knob("lensnet", "which policy scores the working context", choices=SCORER_NAMES)
    seed: int = knob(0, "seed for the random scorer and random-initialised weights", lo=0)
    retrieval_top_k: int = knob(8, "retrieval: entries expanded per step (top-k by cosine)", lo=1)
    hopfield_beta: float = knob(8.0, "hopfield: inverse temperature of the softmax", lo=0, hi=1000, lo_open=True)
    compressive_raw_share: float = knob(0.5, "compressive: share of w_max kept as raw recent tokens",
                                        lo=0, hi=1, lo_open=True, hi_open=True)  # fmt: skip
    compressive_lod1_share: float = knob(0.25, "compressive: share of w_max spent on LOD1 gists",
                                         lo=0, hi=1, hi_open=True, rule="< 1 - compressive_raw_share")  # fmt: skip
    query_blocks: int = knob(1, "newest blocks (plus tail) that form the query of similarity scorers", lo=1, hi=64)
    sink_blocks: int = knob(1, "sink: oldest blocks kept raw beside the recent window (StreamingLLM's sink)",
                            lo=1, hi=64)  # fmt: skip

    def __post_init__(self) -> None:
        check_knobs(self, "scorer")
        ok = self.compressive_lod1_share < 1.0 - self.compressive_raw_share
        check_rule(self, "scorer", "compressive_lod1_share", ok)


@dataclass(frozen=True)
class GistNetConfig:
    hidden: int = knob(256, "width of GistNet's transformer", lo=8)
    layers: int = knob(2, "bidirectional transformer layers", lo=1, hi=24)
    heads: int = knob(4, "attention heads", lo=1, rule="a divisor of hidden")
    pooling: str = knob("query", '"mean" or "query" (a learned query attends over the children)',
                        choices=("mean", "query"))  # fmt: skip

    def __post_init__(self) -> None:
        check_knobs(self, "gistnet")
        check_rule(self, "gistnet", "heads", self.hidden % self.heads == 0)


@dataclass(frozen=True)
class LensNetConfig:
    hidden: int = knob(128, "width of LensNet", lo=8)
    layers: int = knob(2, "dual cross-attention layers", lo=1, hi=24)
    heads: int = knob(4, "attention heads", lo=1, rule="a divisor of hidden")
    query_gists: int = knob(4, "newest gists that join the tail block as query vectors", lo=0, hi=64)

    def __post_init__(self) -> None:
        check_knobs(self, "lensnet")
        check_rule(self, "lensnet", "heads", self.hidden % self.heads == 0)


@dataclass(frozen=True)
class SessionConfig:
    refocus_every: int = knob(32, "tokens read between refocus steps", lo=1, hi=65_536)
    compute_nll: bool = knob(True, "run the base model on the WC to get the next block's NLL")
    nll_every: int = knob(1, "measure that NLL (and the baselines) at every Nth refocus step only", lo=1, hi=65_536)
    attention_every: int = knob(0, "record base-model attention every N steps; 0 = never", lo=0)
    entries_every: int = knob(1, "record the per-entry table every N steps (dense tables' cadence)", lo=1)
    record_gists: bool = knob(True, "record LOD>=1 gist vectors (the `gists` table, for the app's gist map)")
    baselines: bool = knob(False, "also compute full-context and recency-window NLL on each step")
    check_invariants: bool = knob(True, "verify all WC invariants after every step (raises on breach)")
    max_tokens: int = knob(0, "stop after this many tokens; 0 = read the whole input", lo=0)

    def __post_init__(self) -> None:
        check_knobs(self, "session")


def protected_blocks(tree: TreeConfig, wc: WorkingContextConfig) -> int:
    """Number of newest complete blocks that must stay at LOD0."""
    return math.ceil(wc.protect_recent / tree.block_size)


@dataclass(frozen=True)
class PlanKnobs:
    """What the focus allocator reads of a run config: its own section, the budget and the protected blocks."""

    allocator: AllocatorConfig
    w_max: int  # wc.w_max
    protect_blocks: int  # newest complete blocks kept at LOD0

    @staticmethod
    def from_config(cfg: RunConfig) -> PlanKnobs:
        return PlanKnobs(cfg.allocator, cfg.wc.w_max, protected_blocks(cfg.tree, cfg.wc))


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
