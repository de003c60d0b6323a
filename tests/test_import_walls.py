"""Import walls between the layers (DESIGN section 6), each checked in a fresh interpreter.

- `engine/` imports no streamlit, pandas, plotly or umap (the engine runs headless, on a GPU box);
- `telemetry/` imports no torch, transformers or streamlit (a reader of recordings needs no model);
- the allocator and the modules under it import no torch: `plan` is a pure numpy function, so a
  recording can be re-planned anywhere;
- `contract/` imports the standard library and numpy only;
- packages import downward only, contract < engine, telemetry < studio < app (engine and telemetry
  never import each other), checked on the source with `ast`
  so that an import inside a function counts too (the one exception: `engine/__main__.py`, the
  entry point of `python -m engine`, runs `studio.cli`).

Modules are found with pkgutil, so new modules are walled in as soon as they exist. A fresh
subprocess is the only honest check: in the test process, other tests have imported everything.
This file does not check what modules do once imported, only what importing them drags in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Imports every module of a package (pkgutil walk; `__main__` would run a CLI, so it is skipped),
# then prints which it imported, which failed and every top-level module now loaded.
_PROBE = """
import importlib, json, pkgutil, sys, traceback
sys.path.insert(0, {repo!r})
targets = {targets!r}
imported, failed = [], {{}}
for name in targets:
    try:
        importlib.import_module(name)
        imported.append(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=3)
        continue
    pkg = sys.modules[name]
    if {walk!r} and hasattr(pkg, "__path__"):
        for info in pkgutil.walk_packages(pkg.__path__, name + "."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(info.name)
                imported.append(info.name)
            except Exception:
                failed[info.name] = traceback.format_exc(limit=3)
loaded = sorted({{m.split(".")[0] for m in sys.modules}})
print(json.dumps({{"imported": imported, "failed": failed, "loaded": loaded}}))
"""


def _probe(targets: list[str], walk: bool) -> dict:
    code = _PROBE.format(repo=str(REPO), targets=targets, walk=walk)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _walled(package: str, forbidden: set[str]) -> dict:
    res = _probe([package], walk=True)
    assert not res["failed"], "modules that do not import:\n" + "\n".join(res["failed"].values())
    leaked = forbidden & set(res["loaded"])
    assert not leaked, f"importing {package}/* pulls in {sorted(leaked)} (modules: {res['imported']})"
    return res


def test_engine_imports_no_ui_stack():
    res = _walled("engine", {"streamlit", "pandas", "plotly", "umap"})
    # Not vacuous: the walk reached the core modules (and the torch-heavy ones, when present).
    assert {"engine.edits", "engine.tree", "engine.allocator"} <= set(res["imported"])


def test_studio_imports_no_ui_stack():
    res = _walled("studio", {"streamlit", "plotly", "umap"})
    assert {"studio.cli", "studio.replay", "studio.rebuild"} <= set(res["imported"])


def test_telemetry_imports_no_torch_or_ui():
    res = _walled("telemetry", {"torch", "transformers", "streamlit"})
    assert res["imported"][0] == "telemetry"


@pytest.mark.parametrize(
    "module", ["contract.config", "contract.nodes", "engine.working_context", "contract.decisions", "engine.allocator"]
)
def test_allocator_stack_imports_without_torch(module):
    res = _probe([module], walk=False)
    assert not res["failed"], res["failed"]
    assert "torch" not in res["loaded"], f"{module} imports torch; the allocator must stay pure numpy"
    assert "numpy" in res["loaded"] or module == "contract.config"  # the probe really imported the module


def test_telemetry_source_imports_no_ui_stack():
    """pyarrow itself imports pandas whenever pandas is installed (the app installs it), so the
    fresh-interpreter probe cannot hold telemetry to "no pandas"; its own import lines can."""
    import ast

    forbidden = {"pandas", "plotly", "streamlit", "umap", "torch", "transformers"}
    files = sorted((REPO / "telemetry").glob("*.py"))
    assert files
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = {n.split(".")[0] for n in names} & forbidden
            assert not bad, f"{f.name} imports {sorted(bad)}"


# The project's packages and what each may import of the others (DESIGN section 6: app -> studio ->
# engine/telemetry -> contract), at any place in a file: a function-level import is still a dependency,
# and the fresh-interpreter probes above only see import-time ones. engine and telemetry stand side by
# side on the contract and never import each other.
PROJECT = ("contract", "engine", "telemetry", "studio", "app")
MAY_IMPORT = {
    "contract": set(),
    "engine": {"contract"},
    "telemetry": {"contract"},
    "studio": {"contract", "engine", "telemetry"},
    "app": {"contract", "engine", "telemetry", "studio"},
}
ENTRY_POINTS = {"engine/__main__.py": {"studio"}}  # `python -m engine` runs the CLI that lives above it


def _imports(path: Path) -> set[str]:
    """Top-level package names of every import statement in a file, wherever it stands."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", PROJECT)
def test_no_package_imports_one_it_stands_above_or_beside_even_inside_a_function(package):
    forbidden = set(PROJECT) - MAY_IMPORT[package] - {package}
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    for f in files:
        rel = str(f.relative_to(REPO))
        bad = (_imports(f) & forbidden) - ENTRY_POINTS.get(rel, set())
        assert not bad, f"{rel} imports {sorted(bad)}, which {package}/ may not import"


def test_the_contract_is_numpy_only():
    """contract/ is what both engine and telemetry stand on: the standard library and numpy, nothing else."""
    files = sorted((REPO / "contract").glob("*.py"))
    assert {"config.py", "nodes.py", "decisions.py", "events.py"} <= {f.name for f in files}
    for f in files:
        third_party = _imports(f) - set(sys.stdlib_module_names) - {"contract", "numpy"}
        assert not third_party, f"contract/{f.name} imports {sorted(third_party)}"
    res = _walled("contract", {"torch", "pyarrow", "duckdb", "numba", "pandas", "streamlit"})
    assert {"contract.config", "contract.decisions", "contract.events", "contract.nodes"} <= set(res["imported"])


def test_the_wall_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from telemetry.reader import Run\n    import app.lab\n")
    assert _imports(f) == {"telemetry", "app"}


def test_pages_reach_the_system_only_through_the_app_layer():
    """A page (app/views/*.py) draws: its data comes from the query layer and the app's own modules
    (lab, projection, recorder), never straight from engine, telemetry or studio."""
    pages = sorted((REPO / "app" / "views").glob("*.py"))
    assert len(pages) >= 9
    for f in pages:
        bad = _imports(f) & {"engine", "telemetry", "studio"}
        assert not bad, f"app/views/{f.name} imports {sorted(bad)}; go through app/queries.py (or app/lab.py)"
