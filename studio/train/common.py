"""Shared pieces of the training scripts: resumable checkpoints, budgets, progress logging, seeding.

A training run lives in one *run folder* holding exactly two files that matter:

- `checkpoint.safetensors`: every tensor needed to resume (model weights under `model.*`, optimizer
  state under `optim.*`, RNG state under `rng.*`), written whole to a temp file then `os.replace`d,
  so a killed run leaves the previous checkpoint intact;
- `state.json`: plain JSON (step, tokens seen, elapsed seconds, loss curve, the run's config), written
  the same way *after* the tensors, so a state file never points at tensors that are not there yet.

Nothing here is ever unpickled: tensors go through safetensors, everything else through JSON.
A missing or unreadable checkpoint raises `CheckpointError` with one line naming the file.

Typical loop (see `studio/train/gistnet_train.py`)::

    gen = seeded_generator(cfg.seed)            # every random draw takes `generator=gen`
    model, opt = ..., ...                       # built in the same parameter order every time
    budget = Budget(max_steps=..., max_tokens=..., max_seconds=...)
    ckpt = Checkpointer(run_dir, every_s=180)
    resumed = ckpt.load()                       # None on a fresh run; CheckpointError if corrupt
    state = None
    if resumed:
        tensors, state = resumed
        restore_training(model, opt, gen, tensors)
        budget.resume(state)
    log = ProgressLog(every=10, resume=state, tokens=budget.tokens)
    while not budget.done():
        lr = cosine_lr(budget.fraction(), peak)
        loss = ...                              # one optimizer step
        budget.advance(tokens=n)
        log.step(budget, loss, lr=lr)           # prints "step .. loss .. tok/s .. eta" to stderr
        if ckpt.due():
            ckpt.save(training_tensors(model, opt, gen), log.state(budget, config_dict))
    ckpt.save(training_tensors(model, opt, gen), log.state(budget, config_dict))

This module does not build models, data or optimizers, and holds no global state.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINT_FILE = "checkpoint.safetensors"
STATE_FILE = "state.json"


class CheckpointError(Exception):
    """A checkpoint or model folder is missing or corrupt; the message is one line naming the file."""


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`: pass it to every random draw (batches, init, dropout)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (contiguous CPU copies) to `path` as safetensors, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # safetensors refuses tensors that share storage (tied weights): clone each one.
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; any failure becomes one-line `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {_first_line(e)}") from e


def read_json(path: Path) -> dict:
    """Read a JSON object; missing or malformed files become one-line `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"state file {path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"state file {path} is corrupt: {_first_line(e)}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"state file {path} is corrupt: expected a JSON object")
    return data


def write_json(path: Path, data: dict) -> None:
    _atomic_write_bytes(Path(path), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# what a checkpoint holds


def training_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> dict:
    """Flatten model weights, optimizer state and RNG state into one name -> tensor dict.

    Optimizer state is stored per parameter index (`optim.<i>.<key>`), which is stable as long as
    the optimizer is rebuilt over the same parameters in the same order, as every trainer here does.
    """
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        for key, val in opt.state.get(p, {}).items():
            out[f"optim.{i}.{key}"] = torch.as_tensor(val)
    out["rng.generator"] = gen.get_state()
    return out


def restore_training(
    model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, tensors: dict[str, torch.Tensor]
) -> None:
    """Inverse of `training_tensors`: load weights (strictly), optimizer state and RNG state in place."""
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights appear once in safetensors but twice in state_dict: only "missing" tied copies are fine.
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        bad = sorted(set(missing) - tied) + sorted(unexpected)
        raise CheckpointError(f"checkpoint does not match the model: {len(bad)} tensors differ, e.g. {bad[0]}")
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            # Adam's `step` must stay a float scalar tensor on CPU; the moments follow the parameter.
            p = params[int(i)]
            opt.state[p][key] = val.clone() if key == "step" else val.to(p.device, p.dtype).clone()
    if "rng.generator" in tensors:
        gen.set_state(tensors["rng.generator"])


# ---------------------------------------------------------------------------------------------
# run folder


class Checkpointer:
    """Saves and loads the run folder's checkpoint + state pair; `due()` says when to save again."""

    def __init__(self, run_dir: Path, every_s: float = 180.0):
        self.run_dir = Path(run_dir)
        self.every_s = float(every_s)
        self._last = time.monotonic()

    @property
    def tensors_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def exists(self) -> bool:
        return self.state_path.is_file()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(self.tensors_path, tensors)
        write_json(self.state_path, state)
        self._last = time.monotonic()

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, state) of the last save, or None if the folder holds no run yet."""
        if not self.exists():
            return None
        state = read_json(self.state_path)
        return load_tensors(self.tensors_path), state


# ---------------------------------------------------------------------------------------------
# budget and schedule


@dataclass
class Budget:
    """When to stop: whichever of steps, tokens or wall-clock seconds runs out first (0 = no limit).

    `elapsed_s` counts only time spent in this and earlier (resumed) runs, so a resumed run honours
    the original wall-clock budget.
    """

    max_steps: int = 0  # optimizer steps in total, across resumes
    max_tokens: int = 0  # training tokens in total, across resumes
    max_seconds: float = 0.0  # wall-clock seconds of training in total, across resumes
    step: int = 0  # optimizer steps done so far
    tokens: int = 0  # training tokens consumed so far
    prior_s: float = 0.0  # seconds spent by earlier runs of this folder
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if min(self.max_steps, self.max_tokens, self.max_seconds) < 0:
            raise ValueError("budget limits must be >= 0")
        if not (self.max_steps or self.max_tokens or self.max_seconds):
            raise ValueError("a budget needs at least one of max_steps, max_tokens, max_seconds")

    @property
    def elapsed_s(self) -> float:
        return self.prior_s + time.monotonic() - self._t0

    def resume(self, state: dict) -> None:
        self.step, self.tokens, self.prior_s = int(state["step"]), int(state["tokens"]), float(state["elapsed_s"])
        self._t0 = time.monotonic()

    def advance(self, tokens: int) -> None:
        self.step += 1
        self.tokens += int(tokens)

    def fraction(self) -> float:
        """Progress in [0, 1] along the tightest limit (drives the LR schedule and the ETA)."""
        parts = []
        if self.max_steps:
            parts.append(self.step / self.max_steps)
        if self.max_tokens:
            parts.append(self.tokens / self.max_tokens)
        if self.max_seconds:
            parts.append(self.elapsed_s / self.max_seconds)
        return min(1.0, max(parts))

    def done(self) -> bool:
        return self.fraction() >= 1.0


def cosine_lr(fraction: float, peak: float, warmup: float = 0.02, floor: float = 0.1) -> float:
    """Linear warmup over the first `warmup` of training, then cosine decay from `peak` to `floor*peak`."""
    if fraction < warmup:
        return peak * (fraction + 1e-3) / warmup
    t = min(1.0, (fraction - warmup) / max(1e-9, 1.0 - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))


# ---------------------------------------------------------------------------------------------
# progress


class ProgressLog:
    """Prints one progress line every `every` steps to stderr and keeps the loss curve.

    The curve is a list of dicts (`step`, `tokens`, `elapsed_s`, `loss`, plus whatever extra
    numbers the caller passes, e.g. `val_loss`), mean train loss over the steps since the last line.
    """

    def __init__(
        self,
        every: int = 10,
        stream=None,
        curve: list[dict] | None = None,
        tokens: int = 0,
        resume: dict | None = None,
    ):
        """`curve`: points of earlier (resumed) runs; `tokens`: tokens already seen (for the tok/s
        rate); `resume`: a saved `state()` instead of `curve`, which also restores the losses not yet
        averaged into a point, so that a resumed curve equals an uninterrupted one."""
        self.every = max(1, int(every))
        self.stream = stream if stream is not None else sys.stderr
        self.curve: list[dict] = list((resume or {}).get("curve", curve or []))
        self._losses: list[float] = [float(x) for x in (resume or {}).get("pending_losses", [])]
        self._tok0 = int(tokens)
        self._t0 = time.monotonic()

    def step(self, budget: Budget, loss: float, force: bool = False, **extra: float) -> None:
        """Add one step's train loss; print a point every `every` steps (or now if `force`)."""
        self._losses.append(float(loss))
        if force or budget.step % self.every == 0:
            self.point(budget, **extra)

    def point(self, budget: Budget, **extra: float) -> dict:
        """Record (and print) a curve point now; train loss is the mean since the last point."""
        dt = max(1e-9, time.monotonic() - self._t0)
        tok_s = (budget.tokens - self._tok0) / dt
        row = {"step": budget.step, "tokens": budget.tokens, "elapsed_s": round(budget.elapsed_s, 1)}
        if self._losses:
            row["loss"] = round(sum(self._losses) / len(self._losses), 4)
        row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in extra.items()})
        self.curve.append(row)
        frac = budget.fraction()
        eta = (budget.elapsed_s / frac - budget.elapsed_s) if frac > 0 else float("nan")
        shown = "  ".join(f"{k} {v}" for k, v in row.items() if k not in ("step", "tokens", "elapsed_s"))
        print(
            f"step {budget.step}  tokens {budget.tokens}  {shown}  {tok_s:.0f} tok/s  "
            f"{100 * frac:.1f}%  elapsed {budget.elapsed_s / 60:.1f} min  eta {eta / 60:.1f} min",
            file=self.stream,
            flush=True,
        )
        self._losses, self._tok0, self._t0 = [], budget.tokens, time.monotonic()
        return row

    def state(self, budget: Budget, config: dict, **extra) -> dict:
        """The JSON state to save beside a checkpoint."""
        return {
            "step": budget.step,
            "tokens": budget.tokens,
            "elapsed_s": budget.elapsed_s,
            "curve": self.curve,
            "pending_losses": self._losses,
            "config": config,
            **extra,
        }
