"""Reading one module's block: typed getters, then `finish()`.

A module asks for each directive it knows, by name and type
(`cfg.duration("read_timeout", default=600.0)`); each getter consumes the
matching child nodes, checks arity and duplicates, and raises a positioned
`ConfigError`. `finish()` then reports the first directive nobody asked for,
so an unknown or misspelt directive is an error instead of being ignored.
Modules that forward unknown directives (the endpoints pass them to their
message pipeline) call `finish(allow_unknown=True)` and get them back.

Getters with `inherit=True` fall back to the global directive of the same
name (already parsed once by the container) before the module's default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from kittiwake.config import values
from kittiwake.config.node import Node
from kittiwake.config.redact import HIDDEN
from kittiwake.errors import ConfigError

if TYPE_CHECKING:
    from kittiwake.container import Container

T = TypeVar("T")
_UNSET: Any = object()


class Directives:
    """The directives of one block, consumed by a module's `configure`."""

    def __init__(self, node: Node, container: Container | None = None) -> None:
        self.node = node
        self.container = container
        self._children = node.block
        self._used = [False] * len(self._children)

    # -- raw access -------------------------------------------------------

    def all(self, name: str) -> list[Node]:
        """Every child called `name`, in file order (repeatable directives)."""
        found = []
        for i, child in enumerate(self._children):
            if child.name == name:
                self._used[i] = True
                found.append(child)
        return found

    def get(self, name: str) -> Node | None:
        """The single child called `name`; a second one is an error."""
        found = self.all(name)
        if len(found) > 1:
            raise found[1].error(f"duplicate directive: {name}")
        return found[0] if found else None

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self._children)

    def hide(self, name: str, show: Callable[[list[str]], list[str]]) -> None:
        """The directive `name` holds a secret: `config show` prints `show(args)`
        for its arguments (kittiwake/config/redact.py)."""
        node = self.get(name)
        if node is None or self.container is None:
            return
        shown = show(list(node.args))
        if shown != node.args:
            self.container.note_secret(node, shown)

    # -- typed getters ----------------------------------------------------

    def custom(
        self,
        name: str,
        parse: Callable[[Node], T],
        default: T = _UNSET,
        *,
        required: bool = False,
        inherit: bool = False,
        hint: str = "",
        show: Callable[[T], list[str]] | None = None,
    ) -> T:
        """The value of `name` parsed by `parse(node)`; the base of every getter.

        `parse` may raise `ConfigError` or `ValueError`; a ValueError is
        positioned at the directive. `hint` is added to the error for a
        missing required directive: how to write the usual value. `show`
        writes a default back as arguments, for `kittiwake config show
        --defaults` (docs/cli.md); the container keeps what was used.
        """
        node = self.get(name)
        if node is not None:
            try:
                return parse(node)
            except ValueError as exc:
                raise node.error(f"{name}: {exc}") from None
        if inherit and self.container is not None:
            present, value = self.container.global_value(name)
            if present:
                return cast(T, value)
        if required or default is _UNSET:
            raise self.node.error(f"missing required directive: {name}{hint}")
        if show is not None and self.container is not None and default is not None:
            shown = show(default)
            if shown:
                self.container.note_default(self.node, name, shown)
        return default

    def _simple(
        self,
        name: str,
        conv: Callable[[list[str]], T],
        default: T,
        required: bool,
        inherit: bool,
        show: Callable[[T], list[str]],
    ) -> T:
        def parse(node: Node) -> T:
            if node.children is not None:
                raise node.error(f"{name}: unexpected block")
            return conv(node.args)

        return self.custom(name, parse, default, required=required, inherit=inherit, show=show)

    def boolean(self, name: str, default: bool = _UNSET, *, inherit: bool = False) -> bool:
        return self._simple(name, values.parse_bool, default, False, inherit, values.format_bool)

    def integer(
        self,
        name: str,
        default: int = _UNSET,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        required: bool = False,
        inherit: bool = False,
    ) -> int:
        def conv(args: list[str]) -> int:
            v = values.parse_int(args)
            if minimum is not None and v < minimum:
                raise ValueError(f"must be at least {minimum}, got {v}")
            if maximum is not None and v > maximum:
                raise ValueError(f"must be at most {maximum}, got {v}")
            return v

        return self._simple(name, conv, default, required, inherit, lambda v: [str(v)])

    def string(
        self,
        name: str,
        default: str = _UNSET,
        *,
        required: bool = False,
        inherit: bool = False,
        secret: bool = False,
    ) -> str:
        """One argument; with `secret`, `config show` prints it hidden."""

        def conv(args: list[str]) -> str:
            if len(args) != 1:
                raise ValueError("expected exactly one argument")
            return args[0]

        value = self._simple(name, conv, default, required, inherit, lambda v: [v] if v else [])
        if secret:
            self.hide(name, lambda args: [HIDDEN for _ in args])
        return value

    def optional_string(self, name: str, *, inherit: bool = False) -> str | None:
        return self.string(name, cast(str, None), inherit=inherit)

    def string_list(
        self,
        name: str,
        default: list[str] = _UNSET,
        *,
        required: bool = False,
        inherit: bool = False,
    ) -> list[str]:
        def conv(args: list[str]) -> list[str]:
            if not args:
                raise ValueError("expected at least one argument")
            return list(args)

        return self._simple(name, conv, default, required, inherit, list)

    def enum(
        self, name: str, choices: Iterable[str], default: str = _UNSET, *, inherit: bool = False
    ) -> str:
        allowed = list(choices)

        def conv(args: list[str]) -> str:
            if len(args) != 1 or args[0] not in allowed:
                raise ValueError(f"expected one of: {', '.join(allowed)}")
            return args[0]

        return self._simple(name, conv, default, False, inherit, lambda v: [v])

    def duration(
        self, name: str, default: float = _UNSET, *, positive: bool = False, inherit: bool = False
    ) -> float:
        """A Go-style duration, in seconds."""

        def conv(args: list[str]) -> float:
            v = values.parse_duration(args)
            if positive and v <= 0:
                raise ValueError("must be greater than zero")
            return v

        return self._simple(name, conv, default, False, inherit, values.format_duration)

    def size(self, name: str, default: int = _UNSET, *, inherit: bool = False) -> int:
        """A data size such as `32M`, in bytes."""
        return self._simple(name, values.parse_size, default, False, inherit, values.format_size)

    # -- module references --------------------------------------------------

    def module(
        self,
        name: str,
        cap: type[T],
        namespace: str,
        default: T | None = None,
        *,
        default_module: str = "",
        required: bool = False,
        inherit: bool = False,
    ) -> T | None:
        """A single `&ref` or inline definition providing capability `cap`."""
        container = self._need_container()

        def parse(node: Node) -> T:
            return container.module_from_node(node, cap, namespace, default_module=default_module)

        return self.custom(name, parse, default, required=required, inherit=inherit)

    def modules(
        self, name: str, cap: type[T], namespace: str, *, default_module: str = ""
    ) -> list[T]:
        """Every occurrence of a repeatable module directive, in file order."""
        container = self._need_container()
        return [
            container.module_from_node(n, cap, namespace, default_module=default_module)
            for n in self.all(name)
        ]

    def _need_container(self) -> Container:
        if self.container is None:
            raise ConfigError("internal: module references need a container", self.node.file)
        return self.container

    # -- the end ------------------------------------------------------------

    def finish(self, *, allow_unknown: bool = False) -> list[Node]:
        """Check that every directive was known; return the rest if allowed."""
        rest = [c for c, used in zip(self._children, self._used, strict=True) if not used]
        if rest and not allow_unknown:
            raise rest[0].error(f"unexpected directive: {rest[0].name}")
        return rest
