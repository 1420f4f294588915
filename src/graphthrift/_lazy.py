"""Lazy re-exports, so ``import graphthrift`` stays fast and optional extras stay optional."""

from __future__ import annotations

import importlib
from typing import Any


def lazy_getattr(package: str, table: dict[str, str]) -> Any:
    """Build a module ``__getattr__`` that imports ``name`` from ``table[name]`` on first use."""

    def __getattr__(name: str) -> Any:
        module_name = table.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name, package)
        return getattr(module, name)

    return __getattr__
