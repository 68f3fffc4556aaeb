"""Reading pipeline directives into an immutable routing structure.

Strategy: the three levels of a pipeline (root, source blocks, destination
blocks; docs/pipeline.md, "Three levels") become three frozen classes built
once at start-up, so the per-message code only looks things up: rule keys
are already in lookup form, module references are resolved,
`check`/`modify` groups are flattened into plain tuples, and every `reject`
is a ready reply.

Directives are read in file order. When two directives conflict, the error
is reported at the later one (docs/config-language.md). Blocks whose body
depends on the whole level (the implicit default blocks and the
`default_*` blocks) are built once the level has been read, as maddy
does. The errors are listed in docs/pipeline.md, "Configuration errors".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic, TypeVar

from kittiwake.address import AddressError, normalize_rule
from kittiwake.checks.base import Check, parse_reply
from kittiwake.config.node import Node
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.log import Logger
from kittiwake.modify.base import Modifier
from kittiwake.pipeline.groups import CheckGroup, ModifierGroup
from kittiwake.tables.base import Table
from kittiwake.targets.base import DeliveryTarget

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = [
    "DestinationBlock",
    "NestedFactory",
    "RoutingConfig",
    "SourceBlock",
    "parse_routing",
]

#: Builds the pipeline of a `reroute { ... }` block: (its directives, the node).
NestedFactory = Callable[[list[Node], Node], DeliveryTarget]

_B = TypeVar("_B")


@dataclass
class _Level(Generic[_B]):
    """What `_level` read from one selection level."""

    checks: list[Check] = field(default_factory=list)
    modifiers: list[Modifier] = field(default_factory=list)
    tables: list[tuple[Table, _B]] = field(default_factory=list)
    rules: Mapping[str, _B] = field(default_factory=dict)
    default: _B | None = None


_ROOT_HANDLING = frozenset(
    {"deliver_to", "reroute", "reject", "destination", "destination_in", "default_destination"}
)
_SOURCE_HANDLING = frozenset({"deliver_to", "reroute", "reject"})

# Check modules whose results DMARC evaluates (docs/pipeline.md, "DMARC"). A check
# module may also say so itself with a `dmarc_input = "spf"` class attribute.
_DMARC_INPUTS = {"check.spf": "spf", "check.dkim": "dkim"}


@dataclass(frozen=True, eq=False, slots=True)
class DestinationBlock:
    """Final handling of the recipients routed here: targets, or a rejection.

    Compared by identity: the per-message code keys modifier states by block.
    """

    label: str
    checks: tuple[Check, ...] = ()
    modifiers: tuple[Modifier, ...] = ()
    targets: tuple[DeliveryTarget, ...] = ()
    reject: SMTPError | None = None
    #: Where the block starts (for an implicit block: its first directive).
    file: str = ""
    line: int = 0


@dataclass(frozen=True, eq=False, slots=True)
class SourceBlock:
    """Checks, modifiers and recipient routing for senders matched here."""

    label: str
    default: DestinationBlock
    checks: tuple[Check, ...] = ()
    modifiers: tuple[Modifier, ...] = ()
    tables: tuple[tuple[Table, DestinationBlock], ...] = ()
    rules: Mapping[str, DestinationBlock] = field(default_factory=lambda: MappingProxyType({}))
    #: Where the block starts (for an implicit block: its first directive).
    file: str = ""
    line: int = 0

    def destinations(self) -> Iterable[DestinationBlock]:
        yield from (block for _, block in self.tables)
        yield from self.rules.values()
        yield self.default


@dataclass(frozen=True, eq=False, slots=True)
class RoutingConfig:
    """The root level of one pipeline."""

    default: SourceBlock
    checks: tuple[Check, ...] = ()
    modifiers: tuple[Modifier, ...] = ()
    tables: tuple[tuple[Table, SourceBlock], ...] = ()
    rules: Mapping[str, SourceBlock] = field(default_factory=lambda: MappingProxyType({}))
    dmarc: bool = True

    def sources(self) -> Iterable[SourceBlock]:
        yield from (block for _, block in self.tables)
        yield from self.rules.values()
        yield self.default

    def all_targets(self) -> Iterable[DeliveryTarget]:
        """Every target of every destination block (repeats included)."""
        for source in self.sources():
            for dest in source.destinations():
                yield from dest.targets

    def all_checks(self) -> Iterable[Check]:
        """Every check at every level (the same module may appear more than once)."""
        yield from self.checks
        for source in self.sources():
            yield from source.checks
            for dest in source.destinations():
                yield from dest.checks

    def dmarc_runs(self) -> bool:
        """DMARC is enabled and has both an SPF and a DKIM check to work with."""
        if not self.dmarc:
            return False
        kinds = {_dmarc_input(check) for check in self.all_checks()}
        return {"spf", "dkim"} <= kinds


def _dmarc_input(check: Check) -> str:
    declared = getattr(check, "dmarc_input", None)
    if isinstance(declared, str):
        return declared
    return _DMARC_INPUTS.get(getattr(check, "module_name", ""), "")


def _where(node: Node) -> str:
    return f"{node.file}:{node.line}" if node.file else f"line {node.line}"


def _label(node: Node) -> str:
    """`destination example.org (file:12)`, for debug logs."""
    return " ".join([node.name, *node.args, f"({_where(node)})"])


def parse_routing(
    container: Container,
    nodes: list[Node],
    where: Node | None,
    *,
    log: Logger,
    nested: NestedFactory,
) -> RoutingConfig:
    """Build the routing of one pipeline from its directives.

    `where` is the block holding them (endpoint, `msgpipeline`, `reroute`),
    used to place errors that belong to no single directive. Raises
    `ConfigError` at the offending line.
    """
    return _Reader(container, log, nested).root(nodes, where)


class _Reader:
    def __init__(self, container: Container, log: Logger, nested: NestedFactory) -> None:
        self.container = container
        self.log = log
        self.nested = nested

    # -- shared pieces ------------------------------------------------------

    def checks(self, node: Node) -> list[Check]:
        """`check { ... }`, `check &name`: a group, flattened into its members."""
        found = self.container.module_from_node(node, Check, "check", default_module="checks")
        return list(found.members) if isinstance(found, CheckGroup) else [found]

    def modifiers(self, node: Node) -> list[Modifier]:
        """`modify { ... }`, `modify &name`: a group, flattened into its members."""
        found = self.container.module_from_node(
            node, Modifier, "modify", default_module="modifiers"
        )
        return list(found.members) if isinstance(found, ModifierGroup) else [found]

    def table(self, node: Node) -> Table:
        """`source_in`/`destination_in` TABLE: the block is the pipeline's, not the table's."""
        if not node.args:
            raise node.error(f"{node.name}: expected a table (&name or module name)")
        return self.container.module_from_args(node, node.args, None, Table, "table")

    def rules(self, node: Node, kind: str) -> list[str]:
        if not node.args:
            what = "matching" if kind == "source" else "match"
            raise node.error(f"expected at least one {kind} {what} rule")
        keys = []
        for rule in node.args:
            try:
                keys.append(normalize_rule(rule))
            except AddressError:
                raise node.error(f"invalid {kind} match rule: {rule}") from None
        return keys

    def add_rules(
        self, table: dict[str, tuple[Node, _B]], node: Node, keys: list[str], block: _B, kind: str
    ) -> None:
        """First block wins for a repeated rule (maddy's code); we also warn."""
        for key in keys:
            first = table.get(key)
            if first is not None and first[0] is node:
                continue  # the same rule twice on one line: harmless
            if first is not None:
                self.log.warn(
                    f"duplicate {kind} rule ignored: the first block for it is used",
                    rule=key,
                    at=_where(node),
                    first=_where(first[0]),
                )
                continue
            table[key] = (node, block)

    # -- the two selection levels (root -> sources, source -> destinations) ----

    def _level(
        self,
        nodes: list[Node],
        kind: str,
        child: Callable[[list[Node], Node, bool], _B],
        handling_names: frozenset[str],
        empty: Callable[[], ConfigError],
        other: Callable[[Node], bool] = lambda node: False,
    ) -> _Level[_B]:
        """Read one selection level: `KIND` rules, `KIND_in` tables, the
        `default_KIND` block, or handling directives forming the implicit
        default (docs/pipeline.md, "Three levels"). The root (sources) and
        each source block (destinations) follow the same rules with other
        names; `other` takes a level's own extra directives (the root's
        `dmarc`)."""
        level: _Level[_B] = _Level()
        rules: dict[str, tuple[Node, _B]] = {}
        first_rule: Node | None = None
        default_node: Node | None = None
        handling: list[Node] = []
        default_name = f"default_{kind}"
        for node in nodes:
            name = node.name
            if name == "check":
                level.checks.extend(self.checks(node))
            elif name == "modify":
                level.modifiers.extend(self.modifiers(node))
            elif name == f"{kind}_in":
                table = self.table(node)
                level.tables.append((table, child(node.block, node, False)))
            elif name == kind:
                if handling:
                    raise _mixed(node, kind)
                keys = self.rules(node, kind)
                self.add_rules(rules, node, keys, child(node.block, node, False), kind)
                first_rule = first_rule or node
            elif name == default_name:
                if default_node is not None:
                    raise node.error(f"duplicate '{default_name}' block")
                if handling:
                    raise _mixed(node, kind)
                if node.args:
                    raise node.error(f"{default_name} takes no arguments")
                default_node = node
            elif other(node):
                pass
            elif name in handling_names:
                if first_rule is not None or default_node is not None:
                    raise _mixed(node, kind)
                handling.append(node)
            else:
                raise node.error(f"unknown pipeline directive: {name}")

        if first_rule is None and default_node is None:
            if not handling:
                raise empty()
            level.default = child(handling, handling[0], True)
        else:
            if default_node is None or not default_node.block:
                at = default_node or first_rule
                assert at is not None
                raise at.error(
                    f"missing or empty default {kind} block, "
                    f"use {default_name} {{ reject }} to reject messages"
                )
            level.default = child(default_node.block, default_node, False)
        level.rules = MappingProxyType({key: block for key, (_, block) in rules.items()})
        return level

    # -- root -------------------------------------------------------------

    def root(self, nodes: list[Node], where: Node | None) -> RoutingConfig:
        dmarc = [True]
        written = [False]

        def read_dmarc(node: Node) -> bool:
            if node.name != "dmarc":
                return False
            dmarc[0] = _dmarc(node, dmarc[0], self.log)
            written[0] = True
            return True

        def empty() -> ConfigError:
            message = "empty pipeline configuration, use 'reject' to reject messages"
            return where.error(message) if where is not None else ConfigError(message)

        level = self._level(
            nodes,
            "source",
            lambda block, owner, implicit: self.source(block, owner, implicit=implicit),
            _ROOT_HANDLING,
            empty,
            read_dmarc,
        )
        assert level.default is not None
        if not written[0] and where is not None:
            # On unless the block says otherwise: `config show -d` says so too.
            self.container.note_default(where, "dmarc", ["yes"])
        return RoutingConfig(
            default=level.default,
            checks=tuple(level.checks),
            modifiers=tuple(level.modifiers),
            tables=tuple(level.tables),
            rules=level.rules,
            dmarc=dmarc[0],
        )

    # -- source level -------------------------------------------------------

    def source(self, nodes: list[Node], owner: Node, *, implicit: bool = False) -> SourceBlock:
        level = self._level(
            nodes,
            "destination",
            lambda block, at, implicit: self.destination(block, at, implicit=implicit),
            _SOURCE_HANDLING,
            lambda: owner.error("empty source block, use 'reject' to reject messages"),
        )
        assert level.default is not None
        return SourceBlock(
            label="default_source (implicit)" if implicit else _label(owner),
            default=level.default,
            checks=tuple(level.checks),
            modifiers=tuple(level.modifiers),
            tables=tuple(level.tables),
            rules=level.rules,
            file=owner.file,
            line=owner.line,
        )

    # -- destination level ----------------------------------------------------

    def destination(
        self, nodes: list[Node], owner: Node, *, implicit: bool = False
    ) -> DestinationBlock:
        checks: list[Check] = []
        modifiers: list[Modifier] = []
        targets: list[DeliveryTarget] = []
        target_kind = ""
        reject: SMTPError | None = None
        for node in nodes:
            name = node.name
            if name == "check":
                checks.extend(self.checks(node))
            elif name == "modify":
                modifiers.extend(self.modifiers(node))
            elif name == "deliver_to":
                if reject is not None:
                    raise node.error("can't use 'reject' and 'deliver_to' together")
                if not node.args:
                    raise node.error("required at least one argument")
                targets.append(
                    self.container.module_from_args(
                        node, node.args, node.children, DeliveryTarget, "target"
                    )
                )
                target_kind = target_kind or "deliver_to"
            elif name == "reroute":
                if reject is not None:
                    raise node.error("can't use 'reject' and 'reroute' together")
                if node.args:
                    raise node.error("reroute takes no arguments, only a pipeline block")
                if not node.block:
                    raise node.error("missing or empty reroute pipeline configuration")
                targets.append(self.nested(node.block, node))
                target_kind = target_kind or "reroute"
            elif name == "reject":
                if targets:
                    raise node.error(f"can't use 'reject' and '{target_kind}' together")
                if reject is not None:
                    raise node.error("duplicate 'reject' directive")
                if node.children is not None:
                    raise node.error("reject: unexpected block")
                try:
                    reject = parse_reply(node.args)
                except ValueError as exc:
                    raise node.error(f"reject: {exc}") from None
            else:
                raise node.error(f"invalid directive: {name}")
        if not targets and reject is None:
            raise owner.error("destination block has neither deliver_to nor reject")
        if checks:
            self.log.warn(
                "checks in a destination block also run at the body stage: a body "
                "rejection there fails the whole message, for every recipient",
                at=_where(owner),
            )
        return DestinationBlock(
            label="default_destination (implicit)" if implicit else _label(owner),
            checks=tuple(checks),
            modifiers=tuple(modifiers),
            targets=tuple(targets),
            reject=reject,
            file=owner.file,
            line=owner.line,
        )


def _mixed(node: Node, kind: str) -> ConfigError:
    return node.error(
        f"can't put handling directives together with {kind} rules, did you mean to put "
        f"it into 'default_{kind}' block or into all {kind} blocks?"
    )


def _dmarc(node: Node, current: bool, log: Logger) -> bool:
    """`dmarc` / `dmarc yes` / `dmarc no` (docs/pipeline.md, "DMARC")."""
    if not node.args:
        return True
    if len(node.args) > 1:
        # maddy ignores the directive in this case; so do we, but say so.
        log.warn("dmarc: more than one argument, directive ignored", at=_where(node))
        return current
    if node.args[0] == "yes":
        return True
    if node.args[0] == "no":
        return False
    raise node.error("invalid argument for dmarc")
