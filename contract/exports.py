"""Public names of a package, declared in its `__init__.py` and imported only when first used.

A package's `__init__.py` lists its public names and the module that defines each one:

    PUBLIC = {"GistTree": "engine.tree", "refocus": "engine.refocus"}
    __all__, __getattr__, __dir__ = exports(__name__, PUBLIC)

`from engine import GistTree` then imports `engine.tree` at that moment and no earlier (PEP 562), so
that importing a light part of a package (the allocator, which must run without torch) does not
pull in its heavy modules (the base model). This module defines no public name of its own package.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable


def exports(package: str, public: dict[str, str]) -> tuple[list[str], Callable[[str], object], Callable[[], list]]:
    """(`__all__`, module `__getattr__`, module `__dir__`) of `package` for the name -> module table `public`."""
    for name, module in public.items():
        if name.startswith("_") or not module.startswith(package + "."):
            raise ValueError(f"{package}: public name {name!r} must be unprefixed and defined in {package}.*")
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            # Importing the submodule sets the package's attribute to the module, shadowing the name.
            raise ValueError(f"{package}: public name {name!r} is also a submodule; import it from {module}")

    def __getattr__(name: str) -> object:
        try:
            module = public[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(public)

    return sorted(public), __getattr__, __dir__
