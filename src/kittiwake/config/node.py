"""The configuration tree: what the parser produces and every module reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from kittiwake.errors import ConfigError


@dataclass(slots=True)
class Node:
    """One directive: a name, its arguments and an optional block.

    `children is None` means the directive had no block at all; an empty list
    means an empty block (`a { }`). The two differ in maddy's tree and some
    directives care.
    """

    name: str
    args: list[str] = field(default_factory=list)
    children: list[Node] | None = None
    file: str = ""
    line: int = 0

    @property
    def has_block(self) -> bool:
        return self.children is not None

    @property
    def block(self) -> list[Node]:
        """The children, treating an absent block as an empty one."""
        return self.children if self.children is not None else []

    def error(self, message: str) -> ConfigError:
        """A ConfigError positioned at this directive."""
        return ConfigError(message, self.file, self.line)

    def dump(self, indent: int = 0) -> str:
        """A readable rendering used by tests and `--debug` output."""
        pad = "  " * indent
        text = pad + " ".join([self.name, *(repr(a) for a in self.args)])
        if self.children is not None:
            inner = "".join(c.dump(indent + 1) for c in self.children)
            text += " {\n" + inner + pad + "}"
        return text + "\n"
