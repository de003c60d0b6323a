"""contract.config refuses knobs of the wrong type or beyond 64 bits, naming the knob, before any model loads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from contract import INT_MAX, INT_MIN, RunConfig, apply_overrides

REPO = Path(__file__).resolve().parents[1]


def _knobs() -> list[tuple[str, str, object]]:
    """(section, field, declared type) of every knob."""
    out = []
    for sec in dataclasses.fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[sec.name]
        out += [(sec.name, name, typ) for name, typ in typing.get_type_hints(cls).items()]
    return out


INT_KNOBS = [f"{s}.{f}" for s, f, t in _knobs() if t is int]


def test_there_are_integer_knobs_to_check():
    assert "scorer.seed" in INT_KNOBS and len(INT_KNOBS) >= 15


@pytest.mark.parametrize("knob", INT_KNOBS)
@pytest.mark.parametrize("value", [INT_MAX + 1, 10**23, INT_MIN - 1])
def test_every_integer_knob_refuses_values_beyond_64_bits_naming_itself(knob, value):
    with pytest.raises(ValueError) as err:
        apply_overrides(RunConfig(), [f"{knob}={value}"])
    msg = str(err.value)
    assert msg.startswith(f"{knob} must be ") and "\n" not in msg
    if value > 0:  # the bound it crossed: either the knob's own range or the 64-bit one
        assert "2**63-1" in msg or "in [" in msg, msg


def test_the_seed_names_its_64_bit_bound():
    with pytest.raises(ValueError, match=r"^scorer\.seed must be a 64-bit integer, at most 2\*\*63-1"):
        apply_overrides(RunConfig(), ["scorer.seed=99999999999999999999999"])
    assert apply_overrides(RunConfig(), [f"scorer.seed={INT_MAX}"]).scorer.seed == INT_MAX


@pytest.mark.parametrize(
    "section,values,needle",
    [
        ("tree", {"block_size": "abc"}, "tree.block_size must be an integer, got 'abc'"),
        ("tree", {"block_size": 32.0}, "tree.block_size must be an integer"),
        ("tree", {"max_lod": True}, "tree.max_lod must be an integer, got True"),
        ("wc", {"w_max": None}, "wc.w_max must be an integer, got None"),
        ("wc", {"position_mode": 3}, "wc.position_mode must be a string"),
        ("allocator", {"tau_expand": "0.3"}, "allocator.tau_expand must be a number, got '0.3'"),
        ("allocator", {"shift_kernel": ["a", 0.1]}, "allocator.shift_kernel must be a tuple of float"),
        ("allocator", {"shift_kernel": "ab"}, "allocator.shift_kernel must be a tuple of float"),
        ("session", {"compute_nll": "true"}, "session.compute_nll must be true or false, got 'true'"),
        ("session", {"compute_nll": 1}, "session.compute_nll must be true or false, got 1"),
        ("scorer", {"seed": 10**23}, "scorer.seed must be a 64-bit integer"),
    ],
)
def test_from_dict_refuses_wrong_types_naming_the_knob(section, values, needle):
    d = RunConfig().to_dict()
    d[section].update(values)
    with pytest.raises(ValueError) as err:
        RunConfig.from_dict(d)
    assert str(err.value).startswith(needle), str(err.value)


def test_from_dict_still_round_trips_and_takes_an_integer_for_a_float():
    cfg = apply_overrides(RunConfig(), ["allocator.shift_kernel=0.1,0.2", "scorer.seed=7"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    d = RunConfig().to_dict()
    d["allocator"]["tau_expand"] = 0  # a hand-edited manifest may write 0 for 0.0
    assert RunConfig.from_dict(d).allocator.tau_expand == 0


@pytest.mark.parametrize("d", [{"tree": 3}, {"tree": ["block_size"]}, ["tree"]])
def test_from_dict_refuses_a_section_that_is_no_mapping(d):
    with pytest.raises(ValueError, match="must be a mapping"):
        RunConfig.from_dict(d)


def test_cli_refuses_a_huge_seed_before_loading_any_model():
    # The model path does not exist: had the model been loaded first, the error would name it instead.
    r = subprocess.run([sys.executable, "-m", "engine", "run", "--quiet", "--model", "/nonexistent/model", "--input",
                        "tests/data/sample.txt", "--set", "scorer.seed=99999999999999999999999"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: scorer.seed must be a 64-bit integer"), r.stderr
    assert "2**63-1" in lines[0]


def test_knobs_command_lists_every_knob_from_its_declaration(capsys):
    import json

    from contract import RunConfig, apply_overrides, knob_spec
    from studio import cli

    assert cli.main(["knobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("=", 1)[0] for ln in lines] == list(RunConfig().flat())
    sets = []
    for ln in lines:
        setting, allowed, meaning = ln.split("\t")
        name, value = setting.split("=", 1)
        assert meaning == knob_spec(name)[1].help and allowed == ("; ".join(knob_spec(name)[1].allowed()) or "any")
        text = json.loads(value) if value.startswith('"') else value  # strings are shown quoted
        sets.append(f"{name}={text}")
    assert apply_overrides(RunConfig(), sets) == RunConfig()  # the defaults shown are what --set takes
    assert cli.main(["knobs", "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert rows[0] == {"knob": "tree.block_size", "default": 32, "allowed": "in [2, 1024]",
                       "help": "tokens per LOD0 block and children per gist"}  # fmt: skip
