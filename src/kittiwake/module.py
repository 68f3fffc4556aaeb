"""What every module is, how it registers, and the capabilities modules offer.

This is the one facade a module author imports from: `Module` (the base
class), `register` (configuration name -> class), `capability` (marks a
`typing.Protocol` as something a block can be asked for) and `Directives`
(the reader of a module's block).

A module is built from one configuration block: constructed with its names
and inline arguments, configured once from its block, started after every
module it references, stopped before them. Capabilities (table, delivery
target, check, auth provider, limits, ...) are small `typing.Protocol`s
declared next to the concept they belong to (`checks/base.py`,
`targets/base.py`, ...) and registered here with a label, so a reference to
a module of the wrong kind is reported in words.

The registry only records what registers. It never imports modules itself:
`kittiwake.modules` lists every built-in module, and the program's entry
point (`kittiwake.cli`) imports that list, as the composition root.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

from kittiwake import log
from kittiwake.config.directives import Directives

if TYPE_CHECKING:
    from kittiwake.config.values import ListenAddress
    from kittiwake.container import Container

__all__ = [
    "Directives",
    "Endpoint",
    "Module",
    "Role",
    "capability",
    "capability_label",
    "find",
    "names",
    "register",
    "unregister",
]

_LABELS: dict[type, str] = {}
C = TypeVar("C", bound=type)
M = TypeVar("M", bound="type[Module]")

_MODULES: dict[str, type[Module]] = {}


def capability(label: str) -> Callable[[C], C]:
    """Mark a runtime-checkable Protocol as a capability named `label`."""

    def mark(cls: C) -> C:
        _LABELS[cls] = label
        return cls

    return mark


def capability_label(cap: type) -> str:
    return _LABELS.get(cap, cap.__name__)


class Role(enum.Enum):
    """Which part of the server this process is (docs/workers.md).

    With `workers 1` one process does everything (`SINGLE`). With more,
    the main process (`SUPERVISOR`) runs what must exist once (the queue
    runners, the control socket, the metrics page) and the `WORKER`
    processes serve the mail endpoints.
    """

    SINGLE = "single"
    SUPERVISOR = "supervisor"
    WORKER = "worker"


class Module:
    """Base class of every configurable module.

    `name` is the registered module name (`table.static`), `instance_name` the
    block's own name (empty for an inline definition), `inline_args` the
    arguments that followed the module name in an inline definition.
    """

    #: Set by `@register`: the configuration name.
    module_name: ClassVar[str] = ""

    def __init__(self, container: Container, instance_name: str, inline_args: list[str]) -> None:
        self.container = container
        self.instance_name = instance_name
        self.inline_args = inline_args
        label = self.module_name + (f"/{instance_name}" if instance_name else "")
        self.log = log.get(label)

    def block_only(self, cfg: Directives) -> None:
        """Refuse inline arguments (the module is set up by its block), and read
        `debug`, which every check inherits from the global one."""
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name}: inline arguments are not used")
        self.log.debug_enabled = cfg.boolean("debug", default=self.log.debug_enabled, inherit=True)

    def configure(self, cfg: Directives) -> None:
        """Read the block. The default accepts an empty block only."""
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name} takes no arguments")
        cfg.finish()

    async def start(self) -> None:
        """Acquire run-time resources (sockets, files, tasks)."""

    async def stop(self) -> None:
        """Release what `start` acquired; called in reverse start order."""

    def __repr__(self) -> str:
        return f"<{self.module_name} {self.instance_name or '(inline)'}>"


class Endpoint(Module):
    """A module that listens: configured eagerly, never referenced.

    Its inline arguments are listen addresses. After `start` has bound them,
    `addresses()` names them for the readiness lines; `stop` stops accepting,
    lets sessions in progress finish within `grace` seconds and closes the
    rest (SIGTERM; docs/server.md, "Shutdown").
    """

    grace: float = 10.0
    #: The processes that start this endpoint (the others configure it only).
    roles: ClassVar[frozenset[Role]] = frozenset(Role)

    def addresses(self) -> list[str]:
        raise NotImplementedError

    def listen_addresses(self) -> list[ListenAddress]:
        """Its addresses as configured: with workers, the supervisor binds
        them and the workers inherit the sockets (docs/workers.md)."""
        return []

    def binds(self) -> list[tuple[str, str, int]]:
        """What `start` will bind, known at configuration time, so that two
        endpoints that would bind the same socket are a configuration error
        (`config check` finds it, not the start): `("unix", PATH, 0)` or
        `("inet", HOST, PORT)` with HOST an IP address. Port 0 binds nothing
        fixed."""
        return []

    def serving(self) -> list[tuple[str, str, int]]:
        """What it listens on once started, as `binds` but a port 0 as the port
        it got: the sockets a reload must keep open for it (docs/reload.md)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop accepting and leave sessions in progress alone: a reload
        retired this endpoint's configuration (docs/reload.md, "Draining")."""
        raise NotImplementedError

    async def drain(self, within: float) -> bool:
        """Wait up to `within` seconds for its sessions to end; whether they did."""
        raise NotImplementedError


# --- The registry --------------------------------------------------------------


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
    if namespace and "." not in name:
        cls = _MODULES.get(f"{namespace}.{name}")
        if cls is not None:
            return cls
    return _MODULES.get(name)


def names() -> list[str]:
    """Every registered configuration name, sorted."""
    return sorted(_MODULES)
