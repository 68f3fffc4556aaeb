"""The `mx_auth { ... }` block of `target.remote` (docs/target-remote.md).

Each directive in the block names one policy (`mtasts`, `dane`, `dnssec`,
`local_policy`), with its own arguments and block. Policy modules register
a builder under their name with `@policy(NAME)`; `parse_mx_auth` builds
the listed policies in a fixed order: the ones that raise levels first
(as configured), `local_policy` last, because it judges the levels the
others reached (mx_auth/base.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kittiwake.config.node import Node
from kittiwake.mx_auth.base import Policy

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = ["Builder", "parse_mx_auth", "policy"]

#: Builds one policy from its directive.
Builder = Callable[[Node, "Container"], Policy]

_BUILDERS: dict[str, Builder] = {}
#: Policies that judge the others' levels run after them.
_LAST = ("local_policy",)


def policy(name: str) -> Callable[[Builder], Builder]:
    """Register the builder of the `mx_auth` policy `name`."""

    def register(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        return builder

    return register


def parse_mx_auth(node: Node, container: Container) -> list[Policy]:
    """The policies of one `mx_auth` block, in the order they are asked."""
    if node.args:
        raise node.error("mx_auth: takes a block of policies, no arguments")
    seen: set[str] = set()
    first: list[Policy] = []
    last: list[Policy] = []
    for child in node.block:
        builder = _BUILDERS.get(child.name)
        if builder is None:
            known = ", ".join(sorted(_BUILDERS)) or "none"
            raise child.error(f"mx_auth: unknown policy {child.name!r} (known: {known})")
        if child.name in seen:
            raise child.error(f"mx_auth: {child.name} is given twice")
        seen.add(child.name)
        (last if child.name in _LAST else first).append(builder(child, container))
    return first + last
