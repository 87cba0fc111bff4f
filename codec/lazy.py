"""Lazy package exports (PEP 562): public names import their module on first use, so importing a package (or
one small submodule of it, in a worker process) does not pay for torchvision and every model."""
from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose public ``name`` lives in ``exports[name]``
    (a submodule path relative to the package)."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    names = sorted(exports)

    def __dir__():
        return names

    return __getattr__, __dir__, names
