"""The `mx_auth { ... }` block of `target.remote` (docs/target-remote.md, docs/mx-auth.md).

Each directive in the block names one policy (`mtasts`, `dane`, `dnssec`,
`local_policy`), with its own arguments and block. Policy modules register
a builder under their name with `@policy(NAME)`; `parse_mx_auth` builds
the listed policies in a fixed order: the ones that raise levels first
(as configured), `local_policy` last, because it judges the levels the
others reached (mx_auth/base.py).

As in maddy, a set of policies can also be written once as a top-level
named block, `mx_auth NAME { ... }`, and used by several targets as
`mx_auth &NAME`; the block is the module `mx_auth` (`MXAuthGroup`), built
on its first reference like every named block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kittiwake.config import values
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.module import Module, register
from kittiwake.mx_auth.base import Policy

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = ["Builder", "MXAuthGroup", "parse_mx_auth", "policy"]

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
    """The policies of one `mx_auth` directive, in the order they are asked.

    `mx_auth { POLICY... }` lists them; `mx_auth &NAME` uses those of the
    top-level block `mx_auth NAME { ... }`.
    """
    if node.args:
        ref = node.args[0]
        if len(node.args) != 1 or not ref.startswith("&") or node.children is not None:
            raise node.error("mx_auth: takes a block of policies, or one &NAME of an mx_auth block")
        return list(container.instance(ref[1:], node, MXAuthGroup).policies)
    return _build(node, container)


def _build(node: Node, container: Container) -> list[Policy]:
    seen: set[str] = set()
    first: list[Policy] = []
    last: list[Policy] = []
    for child in node.block:
        if child.name == "debug":
            # maddy's switch for the policies' debug log: accepted (checked)
            # for compatibility; kittiwake's global `debug` covers it.
            try:
                values.parse_bool(child.args)
            except ValueError as exc:
                raise child.error(f"debug: {exc}") from None
            continue
        builder = _BUILDERS.get(child.name)
        if builder is None:
            known = ", ".join(sorted(_BUILDERS)) or "none"
            raise child.error(f"mx_auth: unknown policy {child.name!r} (known: {known})")
        if child.name in seen:
            raise child.error(f"mx_auth: {child.name} is given twice")
        seen.add(child.name)
        (last if child.name in _LAST else first).append(builder(child, container))
    return first + last


@register("mx_auth")
class MXAuthGroup(Module):
    """`mx_auth NAME { POLICY... }` at the top level, for `mx_auth &NAME`."""

    policies: list[Policy]

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error("mx_auth: inline arguments are not used")
        self.policies = _build(cfg.node, self.container)
        cfg.finish(allow_unknown=True)  # the policies were read by their builders
