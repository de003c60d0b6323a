"""CPU threads for torch on a shared machine: wait without spinning, fit the pool, adapt to contention.

A recording shares its cores with the app, UMAP, a browser and whatever else runs. torch's OpenMP
workers spin while they wait for one another; when another process holds one of the cores, each
parallel region waits for a worker that is not running. On 2 cores one busy neighbour made a
recording 3x slower (tiny and default model), 10x with a second part-time one; see
docs/BENCHMARKS.md, "Recording beside a competing process". Two measures, in order of effect:

- `configure_process()`: OpenMP workers sleep instead of spinning while they wait
  (`OMP_WAIT_POLICY=PASSIVE`; a short spin, GOMP_SPINCOUNT=10000, did not help). This is the
  main fix (one neighbour then costs 1.15-1.7x); alone it costs nothing measurable on the default
  model and ~20% on the tiny test model, whose parallel regions are too short to wake a worker
  for. It must be set before torch loads, so studio/cli.py calls it first; it does nothing once
  torch is imported (in-process sessions rely on the governor).
- `ThreadGovernor`: its first `tick()` sets torch's intra-op threads to the cores this process may
  use (affinity mask, cgroup CPU quota), never more than torch has then; later ticks (the session
  calls one per refocus step: a clock read unless a measurement is due) measure every
  `interval_s` how busy those cores are with other work (/proc/stat minus this process's own CPU
  time; the load average where there is no /proc) and set torch's threads to the cores left
  free, at least 1, with hysteresis (`decide_threads`); `restore()` puts back the count it found.
  Alone the default model keeps 2 threads (1.5x faster than 1); beside a neighbour it runs as
  fast as 1 thread.

Both stay off where the user chose: `MCS_THREADS=fixed` leaves threads and wait policy to torch
and the environment; an explicit `OMP_NUM_THREADS` / `MKL_NUM_THREADS` fixes the count (the wait
policy is still set unless `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` is).

What it does not do: numba's thread pool is never touched (the engine's kernels are compiled
without `parallel=True`, so numba starts no threads; tests/test_threads.py checks that), nor
torch's inter-op pool (the engine has no `torch.jit.fork`), nor priority or pinning. Threads of
this process that are not torch's (a sink's writer) count as our own time, not as contention.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

MODES = ("auto", "fixed")  # MCS_THREADS: auto = this module manages threads, fixed = torch's own behaviour
USER_COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # an explicit thread count the user chose
USER_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # an explicit wait policy the user chose
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat ticks per second


def threads_mode(env=os.environ) -> str:
    """MCS_THREADS, checked: 'auto' (the default) or 'fixed'."""
    mode = env.get("MCS_THREADS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"MCS_THREADS must be one of {', '.join(MODES)}, got {env.get('MCS_THREADS')!r}")
    return mode


def configure_process(env=os.environ) -> dict[str, str]:
    """Before torch loads: let OpenMP workers sleep while they wait. Returns the variables it set."""
    if threads_mode(env) == "fixed" or "torch" in sys.modules or any(v in env for v in USER_WAIT_VARS):
        return {}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def available_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    """CPUs' worth of time the cgroup allows per period (v2 cpu.max or v1 cfs files), None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
            quota_us, period_us = int(f.read()), int(g.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# the decision


def decide_threads(current: int, ceiling: int, other_busy: float, grow_below: float = 0.2,
                   shrink_above: float = 0.5) -> int:  # fmt: skip
    """Threads to use next, given `other_busy`: cores' worth of CPU time other processes used.

    A core counts as free to grow into when others use less than `grow_below` of it; a core we
    hold is given up when others use more than `shrink_above` of it. Between the two the count
    stays, so a neighbour near half a core does not make it flap. Always within [1, ceiling].
    """
    free = ceiling - max(0.0, other_busy)
    grow_to = math.floor(free + grow_below)
    keep_to = math.floor(free + shrink_above)
    if grow_to > current:
        current = grow_to
    elif keep_to < current:
        current = keep_to
    return min(max(current, 1), ceiling)


@dataclass(frozen=True)
class CpuSample:
    """One reading: when, CPU seconds the watched cores were busy (everyone), and our own CPU seconds."""

    wall_s: float
    busy_s: float | None  # None where /proc/stat cannot be read (then the load average is used)
    own_s: float


def other_busy_cores(a: CpuSample, b: CpuSample, load_average: float | None = None) -> float:
    """Cores' worth of CPU time other processes used between samples `a` and `b` (>= 0)."""
    dt = b.wall_s - a.wall_s
    if dt <= 0:
        return 0.0
    own = (b.own_s - a.own_s) / dt
    if a.busy_s is not None and b.busy_s is not None:
        return max(0.0, (b.busy_s - a.busy_s) / dt - own)
    if load_average is not None:  # runnable threads, ours included, averaged over a minute: crude
        return max(0.0, load_average - own)
    return 0.0


def read_busy_seconds(cpus: set[int], path: str = "/proc/stat") -> float | None:
    """CPU seconds the given cores spent busy since boot (all processes), from /proc/stat.

    Busy = user + nice + system + irq + softirq + steal (steal: the hypervisor ran someone else);
    idle and iowait are free. A niced neighbour counts in full: with autogroup scheduling it
    competes with us as much as any other.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        if int(name[3:]) in cpus:
            v = [int(x) for x in fields[:8]]
            ticks += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return ticks / _CLK_TCK


def cpu_sample() -> CpuSample:
    """Now: the busy seconds of the cores this process may use, and its own CPU seconds (all threads)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    return CpuSample(time.monotonic(), read_busy_seconds(cpus), time.process_time())


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# the governor


class ThreadGovernor:
    """Fits torch's intra-op threads to the cores other processes leave free; `tick()` once per step.

    The first `tick()` sets the thread count to the ceiling; later ones measure every `interval_s`
    and re-set it; `restore()` puts back the count the first tick found. `enabled=False` makes
    every call a no-op. The clock, the sampler and the thread getter/setter are parameters so
    that tests drive it with constructed numbers.
    """

    def __init__(
        self,
        enabled: bool = True,
        ceiling: int | None = None,  # most threads to use; None = min(available_cores(), torch's count then)
        interval_s: float = 1.5,  # seconds between measurements
        first_interval_s: float = 0.25,  # the first measurement comes sooner: a neighbour may be there already
        patience: int = 2,  # consecutive measurements that must agree before growing (shrinking is at once)
        clock: Callable[[], float] = time.monotonic,
        sample: Callable[[], CpuSample] = cpu_sample,
        load_average: Callable[[], float | None] = _load_average,
        get_threads: Callable[[], int] = _torch_threads,
        set_threads: Callable[[int], None] = _set_torch_threads,
    ):
        if interval_s <= 0 or first_interval_s <= 0:
            raise ValueError(f"interval_s and first_interval_s must be > 0, got {interval_s}, {first_interval_s}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if ceiling is not None and ceiling < 1:
            raise ValueError(f"ceiling must be >= 1, got {ceiling}")
        self.enabled, self.ceiling, self.patience = enabled, ceiling, patience
        self.interval_s, self.first_interval_s = interval_s, first_interval_s
        self._clock, self._sample, self._load_average = clock, sample, load_average
        self._get, self._set = get_threads, set_threads
        self.initial: int | None = None  # torch's count at the first tick (what restore() puts back)
        self.threads: int | None = None  # the count set now
        self.other_busy: float | None = None  # the latest measurement, cores' worth of others' CPU time
        self.changes = 0  # how many times the count changed after the first tick (for benchmarks)
        self._last: CpuSample | None = None
        self._grow_votes = 0
        self._due = -math.inf if enabled else math.inf  # the next tick that does work

    @classmethod
    def from_env(cls, env=os.environ, **kw) -> ThreadGovernor:
        """Enabled unless MCS_THREADS=fixed or the user set OMP_NUM_THREADS / MKL_NUM_THREADS."""
        user = threads_mode(env) == "fixed" or any(env.get(v, "").strip() for v in USER_COUNT_VARS)
        return cls(enabled=not user, **kw)

    def tick(self) -> None:
        """A clock read, unless a measurement is due (every `interval_s`): then /proc/stat, maybe a re-set."""
        if self._clock() < self._due:
            return
        if self.threads is None:
            self._start()
            return
        s = self._sample()
        other = other_busy_cores(self._last, s, self._load_average() if s.busy_s is None else None)
        self._last, self.other_busy = s, other
        self._due = self._clock() + self.interval_s
        want = decide_threads(self.threads, self.ceiling, other)
        self._grow_votes = self._grow_votes + 1 if want > self.threads else 0
        if want < self.threads or self._grow_votes >= self.patience:
            self._grow_votes = 0
            if want != self.threads:
                self.threads = want
                self.changes += 1
                self._set(want)

    def _start(self) -> None:
        self.initial = self._get()
        self.ceiling = self.ceiling or max(1, min(self.initial, available_cores()))
        self.threads = self.ceiling
        if self.threads != self.initial:
            self._set(self.threads)
        self._due = math.inf
        if self.ceiling > 1:  # one thread cannot go lower: nothing to measure
            self._last = self._sample()
            self._due = self._clock() + self.first_interval_s

    def restore(self) -> None:
        """Put back the thread count the first tick found (a session leaves torch as it found it)."""
        if self.threads is not None and self.threads != self.initial:
            self._set(self.initial)
        self.threads, self._last, self._grow_votes = None, None, 0
        self._due = -math.inf if self.enabled else math.inf
