"""Thread policy (engine/threads.py) and the record progress estimate: decisions on constructed numbers.

No timing asserts: the governor runs on a fake clock, fake CPU samples and a fake thread setter.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract import RunFinished, StepRecorded
from engine import CpuSample, ThreadGovernor, decide_threads, other_busy_cores, read_busy_seconds
from studio import CountingText, ProgressBar, estimate_total_tokens

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# the decision


@pytest.mark.parametrize(
    "current,ceiling,other,expect",
    [
        (2, 2, 0.0, 2),  # alone: every core
        (2, 2, 1.0, 1),  # one busy neighbour on two cores: give its core up
        (2, 2, 0.45, 2),  # under half a core: keep (hysteresis)
        (2, 2, 0.55, 1),  # over half: give it up
        (1, 2, 0.3, 1),  # not free enough to grow back
        (1, 2, 0.1, 2),  # free again
        (2, 2, 5.0, 1),  # never below one
        (1, 2, -0.2, 2),  # a negative reading (rounding) is no load
        (4, 8, 2.0, 6),  # grows to what is free at once
        (8, 8, 2.3, 6),
        (1, 1, 0.0, 1),
    ],
)
def test_decide_threads(current, ceiling, other, expect):
    assert decide_threads(current, ceiling, other) == expect


def test_decision_is_stable_under_a_steady_load():
    """Applied twice to the same reading it does not move again: no flapping without a change."""
    for ceiling in (1, 2, 4, 16):
        for current in range(1, ceiling + 1):
            for k in range(0, 40 * ceiling):
                other = k / 20
                once = decide_threads(current, ceiling, other)
                assert 1 <= once <= ceiling and decide_threads(once, ceiling, other) == once


def test_other_busy_cores_subtracts_our_own_time():
    a, b = CpuSample(10.0, 100.0, 5.0), CpuSample(12.0, 103.0, 6.0)  # 1.5 cores busy, 0.5 of them ours
    assert other_busy_cores(a, b) == pytest.approx(1.0)
    assert other_busy_cores(a, CpuSample(12.0, 101.0, 7.0)) == 0.0  # jiffy rounding: never negative
    assert other_busy_cores(a, a) == 0.0
    na, nb = CpuSample(0.0, None, 0.0), CpuSample(1.0, None, 0.5)  # no /proc/stat: load average - ours
    assert other_busy_cores(na, nb, load_average=2.0) == pytest.approx(1.5)
    assert other_busy_cores(na, nb) == 0.0


def test_read_busy_seconds_counts_the_watched_cores_only(tmp_path):
    p = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    p.write_text("cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 100 1 10 500 50 2 3 4 0 0\ncpu1 7 0 0 900 0 0 0 0 0 0\nintr 1 2\n")
    tick = read_busy_seconds({0, 1}, str(p)) / (100 + 1 + 10 + 2 + 3 + 4 + 7)
    assert read_busy_seconds({0}, str(p)) == pytest.approx(120 * tick)
    assert read_busy_seconds({5}, str(tmp_path / "missing")) is None


# ----------------------------------------------------------------------------------------------
# the governor on a fake clock


class Fake:
    """Clock, CPU samples and torch's thread count, all set by the test."""

    def __init__(self, threads: int = 2):
        self.now, self.busy, self.own, self.threads = 0.0, 0.0, 0.0, threads
        self.sets: list[int] = []
        self.samples = 0

    def advance(self, seconds: float, others: float, ours: float = 1.0) -> None:
        """`seconds` pass with `others` cores busy with other work and `ours` with this process."""
        self.now += seconds
        self.busy += (others + ours) * seconds
        self.own += ours * seconds

    def sample(self) -> CpuSample:
        self.samples += 1
        return CpuSample(self.now, self.busy, self.own)

    def set(self, n: int) -> None:
        self.sets.append(n)
        self.threads = n

    def governor(self, **kw) -> ThreadGovernor:
        return ThreadGovernor(clock=lambda: self.now, sample=self.sample, load_average=lambda: None,
                              get_threads=lambda: self.threads, set_threads=self.set, **kw)  # fmt: skip


def test_governor_gives_a_core_up_at_once_and_takes_it_back_with_patience():
    f = Fake(threads=2)
    g = f.governor(ceiling=2, interval_s=1.5, first_interval_s=0.25, patience=2)
    g.tick()  # the first tick starts it: 2 threads, already torch's count
    assert g.threads == 2 and f.sets == [] and f.samples == 1
    f.advance(0.1, others=1.0)
    g.tick()  # not due yet: no reading
    assert f.samples == 1
    f.advance(0.2, others=1.0)
    g.tick()
    assert g.threads == 1 and f.sets == [1] and g.other_busy == pytest.approx(1.0)
    f.advance(1.6, others=0.0)
    g.tick()  # free, but one reading is not enough to grow
    assert g.threads == 1
    f.advance(1.6, others=0.0)
    g.tick()
    assert g.threads == 2 and f.sets == [1, 2] and g.changes == 2
    f.advance(1.6, others=1.0)
    g.tick()
    assert f.sets == [1, 2, 1]
    g.restore()  # a session leaves torch as it found it
    assert f.threads == 2 and f.sets[-1] == 2
    g.tick()  # and a later run starts afresh
    assert g.threads == 2


def test_governor_a_neighbour_near_half_a_core_does_not_flap():
    f = Fake(threads=2)
    g = f.governor(ceiling=2, patience=1)
    g.tick()
    for others in (0.4, 0.3, 0.45, 0.35, 0.4):
        f.advance(1.6, others=others)
        g.tick()
    assert f.sets == [] and g.threads == 2


def test_governor_first_tick_fits_the_pool_to_the_ceiling():
    f = Fake(threads=8)
    g = f.governor(ceiling=2)
    g.tick()
    assert f.sets == [2]
    g.restore()
    assert f.threads == 8


def test_governor_with_one_thread_never_measures():
    f = Fake(threads=1)
    g = f.governor()  # ceiling: min(torch's 1, the cores here)
    g.tick()
    f.advance(10.0, others=1.0)
    g.tick()
    assert g.ceiling == 1 and f.samples == 0 and f.sets == []


def test_disabled_governor_does_nothing():
    f = Fake(threads=2)
    g = f.governor(enabled=False)
    for _ in range(3):
        f.advance(2.0, others=2.0)
        g.tick()
    g.restore()
    assert f.samples == 0 and f.sets == [] and g.threads is None


@pytest.mark.parametrize(
    "env,enabled",
    [
        ({}, True),
        ({"MCS_THREADS": "auto"}, True),
        ({"MCS_THREADS": "fixed"}, False),
        ({"MCS_THREADS": "FIXED "}, False),
        ({"OMP_NUM_THREADS": "1"}, False),  # the user's count is respected
        ({"MKL_NUM_THREADS": "2"}, False),
        ({"OMP_NUM_THREADS": ""}, True),
    ],
)
def test_env_opt_out(env, enabled):
    assert ThreadGovernor.from_env(env).enabled is enabled


def test_bad_mode_is_one_clear_error():
    with pytest.raises(ValueError, match="MCS_THREADS must be one of auto, fixed"):
        ThreadGovernor.from_env({"MCS_THREADS": "4"})


def test_wait_policy_is_set_before_torch_loads():
    """`python -m engine` imports studio.cli without torch, so configure_process() still takes effect."""
    code = """
import json, sys
import studio.cli
from engine.threads import configure_process
loaded = "torch" in sys.modules
cases = [{}, {"MCS_THREADS": "fixed"}, {"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"},
         {"OMP_NUM_THREADS": "2"}]
out = []
for env in cases:
    configure_process(env)
    out.append(env.get("OMP_WAIT_POLICY"))
print(json.dumps([loaded, out]))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded, out = json.loads(r.stdout)
    assert not loaded
    assert out == ["PASSIVE", None, "ACTIVE", None, "PASSIVE"]


def test_engine_starts_no_numba_thread_pool():
    """engine/threads.py sets no numba threads because no kernel is compiled with parallel=True."""
    for path in (REPO / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "parallel":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), path


# ----------------------------------------------------------------------------------------------
# the progress estimate


def test_estimate_total_tokens():
    assert estimate_total_tokens(1000, 4000, 40000) == 10000  # 0.25 tokens/byte over the whole file
    assert estimate_total_tokens(1000, 4000, 40000, max_tokens=5000) == 5000
    assert estimate_total_tokens(1000, 4000, 40000, done=12000) == 12000  # never below what is done
    assert estimate_total_tokens(1000, 5000, 4000) == 1000  # the file grew past its size: what was read
    assert estimate_total_tokens(1000, 4000, None) is None  # stdin: no total
    assert estimate_total_tokens(0, 0, 40000) is None  # nothing read yet


def _step(tokens_seen: int, step: int) -> StepRecorded:
    return StepRecorded(step, tokens_seen, 0, 0, 0, 100, 0, 0, 0, None, None, None, 0.0, 0.0, 0.0, 0.0)


def test_progress_bar_total_follows_the_bytes_read(capsys):
    text = ["ab" * 50, "cd" * 50, "é" * 100]  # 100 + 100 + 200 bytes
    counter = CountingText(iter(text))
    session = dataclasses.make_dataclass("S", [("tokens_read", int)])(0)
    bar = ProgressBar(True, total_bytes=400, counter=counter)  # enabled: a disabled tqdm counts nothing
    assert bar.watch(session) is session
    it = iter(counter)
    next(it)
    session.tokens_read = 50  # the tokenizer made 50 tokens of the first 100 bytes
    bar.emit(_step(32, 0))
    assert counter.bytes == 100 and bar.bar.total == 200 and bar.bar.n == 32
    next(it), next(it)
    session.tokens_read = 150
    bar.emit(_step(64, 1))
    assert counter.bytes == 400 and bar.bar.total == 150 and bar.bar.n == 64
    bar.emit(RunFinished("complete", 150, 2))
    assert bar.bar.total == bar.bar.n == 64


def test_progress_bar_on_stdin_has_no_total(capsys):
    counter = CountingText(iter(["x" * 10]))
    bar = ProgressBar(True, total_bytes=None, counter=counter)
    bar.watch(dataclasses.make_dataclass("S", [("tokens_read", int)])(10))
    list(counter)
    bar.emit(_step(10, 0))
    assert bar.bar.total is None and bar.bar.n == 10


# ----------------------------------------------------------------------------------------------
# the hook in the session


class Spy:
    def __init__(self):
        self.ticks = self.restores = 0

    def tick(self) -> None:
        self.ticks += 1

    def restore(self) -> None:
        self.restores += 1


def test_session_ticks_once_per_step_restores_at_the_end_and_counts_tokens_read():
    from contract import NullSink, RunConfig, apply_overrides
    from engine import Session, build_engine

    eng = build_engine(apply_overrides(RunConfig(), ["wc.w_max=400", "scorer.name=recency"]), "tiny", "cpu")
    spy = Spy()
    sess = Session(eng.cfg, eng.model, eng.gistnet, eng.scorer, NullSink(), "t", governor=spy)
    text = (REPO / "tests" / "data" / "sample.txt").read_text()[:1500]
    done = sess.run([text[:700], text[700:]])
    assert spy.ticks == done.steps > 0 and spy.restores == 1
    assert sess.tokens_read == done.tokens == len(text.encode())  # the tiny model's tokens are bytes

    def broken():
        yield text
        raise OSError("disk went away")

    spy = Spy()
    with pytest.raises(OSError):
        Session(eng.cfg, eng.model, eng.gistnet, eng.scorer, NullSink(), "t", governor=spy).run(broken())
    assert spy.restores == 1
