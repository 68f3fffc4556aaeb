"""Module registration: configuration name -> class.

Modules register with `@register("table.static")`; `kittiwake.modules`
imports every built-in module so the full list is in one place and no
registration hides in an import side effect elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from kittiwake.module import Module

M = TypeVar("M", bound=type[Module])

_MODULES: dict[str, type[Module]] = {}


def register(name: str) -> Callable[[M], M]:
    """Register a module class under its configuration name."""

    def add(cls: M) -> M:
        if name in _MODULES and _MODULES[name] is not cls:
            raise RuntimeError(f"module {name} registered twice")
        _MODULES[name] = cls
        if not cls.__dict__.get("module_name"):
            cls.module_name = name
        return cls

    return add


def unregister(name: str) -> None:
    """Remove a registration (tests register throw-away modules)."""
    _MODULES.pop(name, None)


def find(name: str, namespace: str = "") -> type[Module] | None:
    """Look a module up, trying `NAMESPACE.NAME` first for a bare name."""
    load_builtin()
    if namespace and "." not in name:
        cls = _MODULES.get(f"{namespace}.{name}")
        if cls is not None:
            return cls
    return _MODULES.get(name)


def names() -> list[str]:
    load_builtin()
    return sorted(_MODULES)


_state = {"loaded": False}


def load_builtin() -> None:
    if not _state["loaded"]:
        _state["loaded"] = True
        import kittiwake.modules  # noqa: F401  (registers every built-in module)
