"""Each package declares its public names in `__init__.py` (`PUBLIC`: name -> defining module), and the
tests use them: a public name is imported from its package, never from the module behind it, so that
moving a name between modules changes one table, not every test.

Internals that tests pin on purpose (the allocator's reference stages, the compiled kernels, private
helpers) are imported from their modules; they are not in any table.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "engine", "telemetry", "studio", "studio.train")


def _table() -> dict[tuple[str, str], str]:
    """(defining module, name) -> the package that exports it."""
    out = {}
    for pkg in PACKAGES:
        for name, module in importlib.import_module(pkg).PUBLIC.items():
            out[(module, name)] = pkg
    return out


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_public_name_is_defined_where_the_table_says(pkg):
    package = importlib.import_module(pkg)
    assert package.__all__ == sorted(package.PUBLIC) and package.__all__
    for name, module in package.PUBLIC.items():
        obj, home = getattr(package, name), importlib.import_module(module)
        assert obj is getattr(home, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):  # defined there, or chosen there on purpose
            ok = obj.__module__ == module or name in getattr(home, "__all__", ())
            assert ok, f"{pkg}.{name} is defined in {obj.__module__}, the table says {module}"
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_tests_import_public_names_from_their_package():
    table = _table()
    found = []
    for f in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    pkg = table.get((node.module, a.name))
                    if pkg is not None and pkg != node.module:
                        found.append(f"{f.name}:{node.lineno} imports {a.name} from {node.module}, not from {pkg}")
    assert not found, "\n".join(found)


def test_the_public_allocator_stack_imports_without_torch():
    code = (
        "import sys; from engine import plan, apply, WorkingContext, AllocatorState; from contract import PlanKnobs;"
        "from contract import RunConfig, Decisions; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_table_entry_outside_its_package_is_refused():
    from contract.exports import exports

    with pytest.raises(ValueError, match="must be unprefixed and defined in engine"):
        exports("engine", {"Run": "telemetry.reader"})
    with pytest.raises(ValueError, match="must be unprefixed"):
        exports("engine", {"_plan": "engine.allocator_jit"})
