"""Module attributes that import their home module on first use (PEP 562), shared by the
``modify`` and ``modify.layers`` packages so that importing them stays cheap and torch-free."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, homes: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``homes[name]`` on first use and caches the value.

    Example:
        >>> ns: dict = {}
        >>> getter = lazy_getattr("pkg", {"sqrt": "math"}, ns)
        >>> getter("sqrt")(4.0), "sqrt" in ns
        (2.0, True)
    """

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(homes[name]), name)
            namespace[name] = value  # later lookups find it without calling here
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
