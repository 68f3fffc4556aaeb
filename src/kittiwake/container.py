"""Building the server from the configuration tree, and running its modules.

Strategy: the top level is split into global directives and module blocks.
Globals are parsed first. Endpoints are configured eagerly in file order;
named blocks lazily, on their first `&reference`, so a block is configured
with everything it references already configured. The order in which
configuration *completes* is therefore a dependency order: modules start in
that order and stop in reverse. A named block that nothing references is an
error, as is a reference cycle.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from kittiwake import log
from kittiwake.config.directives import Directives
from kittiwake.config.globals import PARSERS, Globals
from kittiwake.config.maddy import maddy_only
from kittiwake.config.node import Node
from kittiwake.control import Commands
from kittiwake.dns import Resolver
from kittiwake.errors import ConfigError, ConfigErrors
from kittiwake.module import Endpoint, Module, Role, capability_label
from kittiwake.module import find as find_module
from kittiwake.server.sockets import ListenSockets, balanced_reuse_port
from kittiwake.state.host import HostState

T = TypeVar("T")

DEFAULT_STATE_DIR = "kittiwake-data"


@dataclass(frozen=True)
class DebugFlags:
    """`--debug.*` command-line flags, for tests and local experiments."""

    dns_override: str | None = None
    smtp_port: int | None = None
    #: MTA-STS policy fetches go to this port instead of 443, and trust this
    #: CA bundle besides the system's (docs/mx-auth.md, "Testing").
    mtasts_port: int | None = None
    mtasts_ca: str | None = None


class BlockState(enum.Enum):
    """Where a block is in being configured: references are followed depth
    first, so meeting a block in `CONFIGURING` again means a reference cycle."""

    NEW = "new"
    CONFIGURING = "configuring"
    DONE = "done"


@dataclass
class _Block:
    node: Node
    cls: type[Module]
    instance_name: str
    module: Module | None = None
    state: BlockState = BlockState.NEW


class Uplink(Protocol):
    """A worker process's line to its supervisor (docs/workers.md).

    What a worker hands to the one process that does it for the whole
    server: the queue entries it committed (the supervisor's queue
    delivers them) and its TLS report counts (the supervisor's store
    writes them). Never raises and never waits.
    """

    def queued(self, location: str, entry_id: str) -> None: ...

    def tls_counts(self, day: str, counts: dict[str, Any]) -> None: ...


class Shared:
    """What the process keeps across configuration reloads (docs/reload.md).

    One per server process: the first configuration makes it and every
    reloaded one receives it. The listening sockets (so kept addresses are
    never unbound), the DNS resolver and its cache, and the closers of
    process-wide things such as the TLS report store, run once the server
    stops rather than when one configuration retires. `role` says which
    part of the server this process is (docs/workers.md); a worker's
    `uplink` reaches its supervisor.

    `host_state` keeps every counter that no `state &NAME` names when the
    server has worker processes (docs/state.md, "The host store"): the
    supervisor's own store, which its workers reach through theirs. None
    in a single process, where each module counts in its own memory.
    """

    def __init__(self, debug_flags: DebugFlags, role: Role = Role.SINGLE) -> None:
        self.debug_flags = debug_flags
        self.host_state: HostState | None = None
        self.set_role(role)
        self.uplink: Uplink | None = None
        self._resolver: Resolver | None = None
        self.closers: list[Callable[[], Awaitable[None]]] = []

    def set_role(self, role: Role) -> None:
        """Which part of the server this process is; decided before anything is
        bound (the `workers` directive is read with the other globals)."""
        self.role = role
        self.sockets = ListenSockets(
            reuse_port=role is Role.SUPERVISOR and balanced_reuse_port(),
            inherited_only=role is Role.WORKER,
        )
        if role is Role.SUPERVISOR and self.host_state is None:
            self.host_state = HostState.for_supervisor()

    @property
    def resolver(self) -> Resolver:
        if self._resolver is None:
            self._resolver = Resolver(self.debug_flags.dns_override)
        return self._resolver


@runtime_checkable
class Successor(Protocol):
    """A module that takes something over from the configuration before it.

    `take_over` runs after the new configuration is built and before any
    of its modules starts; `previous` is every module of the running
    configuration (docs/reload.md, "The queue").
    """

    async def take_over(self, previous: list[Module]) -> None: ...

    async def give_back(self) -> None:
        """The new configuration failed to start: return what `take_over` took."""


@runtime_checkable
class Heir(Protocol):
    """A module that shares state with its counterpart in the configuration
    before it, both going on using it (docs/reload.md, "What a reload keeps")."""

    def inherit(self, previous: list[Module]) -> None: ...


class Container:
    """Every module instance of one configuration, and their life cycle."""

    def __init__(
        self,
        nodes: list[Node],
        *,
        config_file: str = "",
        cwd: str | None = None,
        debug_flags: DebugFlags | None = None,
        serving: bool = True,
        shared: Shared | None = None,
    ) -> None:
        self.nodes = nodes
        #: False for operator commands (`kittiwake queue`) that build the
        #: configuration only to find things in it: warnings about how the
        #: server would serve mail are for `run` and `config check`.
        self.serving = serving
        self.config_file = config_file
        self.cwd = cwd or os.getcwd()
        self.debug_flags = debug_flags or DebugFlags()
        #: Kept across reloads; a reloaded configuration gets its predecessor's.
        self.shared = shared or Shared(self.debug_flags)
        state_dir = os.path.join(self.cwd, DEFAULT_STATE_DIR)
        self.globals = Globals(state_dir=state_dir, runtime_dir=os.path.join(state_dir, "run"))
        self._global_nodes: dict[str, Node] = {}
        self._global_values: dict[str, Any] = {}
        self._blocks: dict[str, _Block] = {}
        self._endpoint_nodes: list[tuple[Node, type[Endpoint]]] = []
        #: Modules in the order their configuration completed (= start order).
        self.modules: list[Module] = []
        self.endpoints: list[Endpoint] = []
        self._binds: list[tuple[tuple[str, str, int], Node]] = []
        self._globals_parsed = False
        self._started: list[Module] = []
        #: Operator commands modules offer while they run (kittiwake/control.py).
        self.control = Commands()
        #: Inline definitions get a block node of their own; each maps back to
        #: the directive it came from (kept alive here, so ids stay unique).
        self._origins: dict[int, tuple[Node, Node]] = {}
        #: Defaults modules used, by the directive whose block lacked them
        #: (`kittiwake config show --defaults`).
        self._defaults: dict[int, tuple[Node, dict[str, list[str]]]] = {}
        #: Directives that hold a secret, with the arguments `config show`
        #: prints instead (kittiwake/config/redact.py).
        self._hidden: dict[int, tuple[Node, list[str]]] = {}
        self.log = log.get("")

    # -- building -----------------------------------------------------------

    def parse_globals(self) -> Globals:
        """Split the top level and read the global directives (first step of build).

        Separate so the command line can apply `log` and `debug` before any
        module is configured and logs.
        """
        if not self._globals_parsed:
            self._globals_parsed = True
            self._split_top_level()
            self._parse_globals()
        return self.globals

    def build(self) -> None:
        """Parse globals and configure every module; raise the first ConfigError."""
        self.parse_globals()
        if not self._endpoint_nodes:
            raise ConfigError("at least one endpoint should be configured", self.config_file)
        for node, cls in self._endpoint_nodes:
            module = cls(self, "", list(node.args))
            module.configure(Directives(node, self))
            self.modules.append(module)
            self.endpoints.append(module)
            self._check_binds(module, node)
        for block in self._unique_blocks():
            if block.state is BlockState.NEW:
                raise block.node.error(
                    f"unused configuration block {block.instance_name} ({block.cls.module_name})"
                )

    def _check_binds(self, new: Endpoint, node: Node) -> None:
        """Refuse a listen address that an earlier endpoint already binds.

        Two sockets conflict when they are the same Unix path, or the same
        port of one address family where the hosts are equal or one of them
        is the family's wildcard (`0.0.0.0`, `::`); IPv6 sockets are
        v6-only, so `[::]:25` and `0.0.0.0:25` do not conflict.
        """
        for bind in new.binds():
            for seen, seen_node in self._binds:
                if _same_socket(bind, seen):
                    kind, host, port = bind
                    shown = host if kind == "unix" else f"{host}:{port}"
                    raise node.error(
                        f"{node.name}: {shown} is already a listen address of "
                        f"{seen_node.name} at {seen_node.file}:{seen_node.line}"
                    )
            self._binds.append((bind, node))

    def _split_top_level(self) -> None:
        # maddy's modules kittiwake lacks, all at once, with what to do instead.
        lacking = maddy_only(self.nodes, lambda name: find_module(name) is not None)
        if lacking:
            raise ConfigErrors(lacking)
        for node in self.nodes:
            if node.name in PARSERS:
                if node.name in self._global_nodes:
                    raise node.error(f"duplicate global directive: {node.name}")
                self._global_nodes[node.name] = node
                continue
            cls = find_module(node.name)
            if cls is None:
                raise node.error(f"unknown module or global directive: {node.name}")
            if issubclass(cls, Endpoint):
                self._endpoint_nodes.append((node, cls))
                continue
            if node.children is None:
                raise node.error(f"{node.name}: a configuration block {{ ... }} is required")
            names = node.args or [node.name]
            block = _Block(node, cls, names[0])
            for name in names:
                if name.startswith("&"):
                    raise node.error(f"invalid block name {name!r}: '&' is for references")
                if name in self._blocks:
                    raise node.error(f"config block named {name} already exists")
                self._blocks[name] = block

    def _parse_globals(self) -> None:
        # File order, so the first bad global in the file is the one reported.
        for node in sorted(self._global_nodes.values(), key=lambda n: (n.file, n.line)):
            value = PARSERS[node.name](node, self)
            self._global_values[node.name] = value
            if hasattr(self.globals, node.name):
                setattr(self.globals, node.name, value)
        if "runtime_dir" not in self._global_values and "state_dir" in self._global_values:
            self.globals.runtime_dir = os.path.join(self.globals.state_dir, "run")

    def _unique_blocks(self) -> list[_Block]:
        seen: dict[int, _Block] = {}
        for block in self._blocks.values():
            seen.setdefault(id(block), block)
        return sorted(seen.values(), key=lambda b: (b.node.file, b.node.line))

    def global_value(self, name: str) -> tuple[bool, Any]:
        """(present, value) of a global directive, for inheriting modules."""
        if name in self._global_values:
            return True, self._global_values[name]
        return False, None

    # -- references ---------------------------------------------------------

    def module_from_node(
        self, node: Node, cap: type[T], namespace: str, *, default_module: str = ""
    ) -> T:
        """Resolve a directive naming a module: `&ref`, or an inline definition."""
        return self.module_from_args(
            node, node.args, node.children, cap, namespace, default_module=default_module
        )

    def module_from_args(
        self,
        node: Node,
        args: list[str],
        block: list[Node] | None,
        cap: type[T],
        namespace: str,
        *,
        default_module: str = "",
    ) -> T:
        """Like `module_from_node`, for directives whose block is not the module's."""
        if args and args[0].startswith("&"):
            if len(args) != 1 or block is not None:
                raise node.error(
                    f"{node.name}: exactly one argument is required to use an existing "
                    "config block (&name), and no block"
                )
            return self.instance(args[0][1:], node, cap)
        if args:
            name, inline = args[0], list(args[1:])
        elif default_module:
            name, inline = default_module, []
        else:
            raise node.error(f"{node.name}: expected a module name or an &reference")
        cls = find_module(name, namespace)
        if cls is None:
            where = f" (namespace: {namespace})" if namespace else ""
            raise node.error(f"unknown module: {name}{where}")
        if issubclass(cls, Endpoint):
            raise node.error(f"{name} is an endpoint and cannot be used here")
        module = cls(self, "", inline)
        self._check_capability(module, cap, node, name)
        own = Node(name, inline, block, node.file, node.line)
        self._origins[id(own)] = (own, self.origin(node))
        module.configure(Directives(own, self))
        self.modules.append(module)
        return module  # type: ignore[return-value]  # checked by _check_capability

    def instance(self, name: str, ref: Node, cap: type[T]) -> T:
        """The named block `name`, configured on first use, as capability `cap`."""
        block = self._blocks.get(name)
        if block is None:
            raise ref.error(f"unknown configuration block: {name}")
        if block.state is BlockState.CONFIGURING:
            raise ref.error(f"reference cycle: {name} refers back to itself")
        if block.module is None:
            block.module = block.cls(self, block.instance_name, [])
        self._check_capability(block.module, cap, ref, name)
        if block.state is BlockState.NEW:
            block.state = BlockState.CONFIGURING
            block.module.configure(Directives(block.node, self))
            block.state = BlockState.DONE
            self.modules.append(block.module)
        return block.module  # type: ignore[return-value]

    @staticmethod
    def _check_capability(module: Module, cap: type, node: Node, name: str) -> None:
        if not isinstance(module, cap):
            raise node.error(
                f"{node.name}: module {module.module_name} ({name}) cannot be used here: "
                f"it is not {_article(capability_label(cap))}"
            )

    # -- defaults, for `config show --defaults` ----------------------------------

    def origin(self, node: Node) -> Node:
        """The configuration directive behind `node` (itself, unless made for an
        inline definition)."""
        found = self._origins.get(id(node))
        return found[1] if found is not None else node

    def note_default(self, node: Node, name: str, args: list[str]) -> None:
        """A module used its default for `name` in the block of `node`."""
        at = self.origin(node)
        _, used = self._defaults.setdefault(id(at), (at, {}))
        used.setdefault(name, args)

    def defaults_of(self, node: Node) -> dict[str, list[str]]:
        """The defaults used in `node`'s block, by directive name (file order)."""
        found = self._defaults.get(id(node))
        return dict(found[1]) if found is not None else {}

    def note_secret(self, node: Node, shown: list[str]) -> None:
        """`node`'s arguments hold a secret: `config show` prints `shown` instead."""
        self._hidden[id(node)] = (node, shown)

    def shown_args(self, node: Node) -> list[str] | None:
        """What `config show` prints for `node`'s arguments, if they hold a secret."""
        found = self._hidden.get(id(node))
        return found[1] if found is not None else None

    # -- paths ----------------------------------------------------------------

    @property
    def resolver(self) -> Resolver:
        """The process's one DNS resolver (docs/dns.md), made on first use.

        Every module asks through it, so `--debug.dnsoverride` reaches
        every lookup and all share one cache, kept across reloads.
        """
        return self.shared.resolver

    def state_path(self, path: str) -> str:
        """Relative paths in module configuration resolve against state_dir."""
        return os.path.join(self.globals.state_dir, path)

    def runtime_path(self, path: str) -> str:
        return os.path.join(self.globals.runtime_dir, path)

    def prepare_dirs(self) -> None:
        """Create state_dir and runtime_dir (0700) and prove they are writable."""
        for name in ("state_dir", "runtime_dir"):
            d = getattr(self.globals, name)
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
                probe = os.path.join(d, f".write-test-{os.getpid()}")
                with open(probe, "w") as f:
                    f.write("ok")
                os.unlink(probe)
            except OSError as exc:
                message = f"cannot use {name} {d}: {exc.strerror}"
                node = self._global_nodes.get(name)
                raise (node.error(message) if node else ConfigError(message)) from None

    # -- life cycle -----------------------------------------------------------

    async def start(self, previous: Container | None = None) -> None:
        """Start modules in dependency order; on failure stop what started.

        A module whose own `start` failed is stopped too, so one that bound
        the first of two addresses releases it: `stop` must cope with a
        partial start. With `previous` (a reload, docs/reload.md), modules
        that take something over from the running configuration do so
        first; if the start then fails they give it back when stopped.
        """
        takers = [m for m in self.modules if isinstance(m, Successor)] if previous else []
        if previous is not None:
            for module in self.modules:
                if isinstance(module, Heir):
                    module.inherit(previous.modules)
        try:
            for taker in takers:
                await taker.take_over(previous.modules if previous else [])
            for module in self.modules:
                if not self.runs_here(module):
                    continue
                self._started.append(module)
                await module.start()
        except BaseException:
            # Given back first, while the modules that took it still run.
            for taker in takers:
                try:
                    await taker.give_back()
                except Exception as exc:
                    self.log.error("module failed to give back", err=exc, module=repr(taker))
            await self.stop(final=previous is None)
            raise

    async def abandon(self) -> None:
        """Undo a start that succeeded, for a reload that fails after it (its
        worker processes could not start, docs/workers.md): what was taken
        over goes back to the running configuration, then every module stops."""
        for module in self.modules:
            if isinstance(module, Successor):
                try:
                    await module.give_back()
                except Exception as exc:
                    self.log.error("module failed to give back", err=exc, module=repr(module))
        await self.stop(final=False)

    @property
    def role(self) -> Role:
        """Which part of the server this process is (docs/workers.md)."""
        return self.shared.role

    def runs_here(self, module: Module) -> bool:
        """Whether `module` starts in this process: an endpoint only where its
        `roles` say (workers serve mail; the supervisor serves the metrics)."""
        return not isinstance(module, Endpoint) or self.role in module.roles

    def on_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run `closer` when the server stops, after every module has stopped.

        For what modules share rather than own (the TLS report store,
        docs/tls-report.md): made on first use by whichever module needs
        it, closed once nothing can use it any more. Process-wide: a
        configuration retired by a reload does not run them.
        """
        self.shared.closers.append(closer)

    async def stop(self, *, final: bool = True) -> None:
        """Stop started modules in reverse order; one failure does not stop the rest.

        `final` (the server stops): then run the `on_stop` closers (last
        registered first) and close the listening sockets. A configuration
        a reload retired stops with `final=False`: those are its successor's.
        """
        while self._started:
            module = self._started.pop()
            try:
                await module.stop()
            except Exception as exc:
                self.log.error("module failed to stop", err=exc, module=repr(module))
        if final:
            await self.close_shared()

    async def close_shared(self) -> None:
        """Close what the process shares across reloads (`Shared`): the
        listening sockets, then the `on_stop` closers, last registered first."""
        self.shared.sockets.close_all()
        while self.shared.closers:
            closer = self.shared.closers.pop()
            try:
                await closer()
            except Exception as exc:
                self.log.error("failed to close at shutdown", err=exc, closer=repr(closer))


def _same_socket(a: tuple[str, str, int], b: tuple[str, str, int]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "unix":
        return a[1] == b[1]
    if not a[2] or a[2] != b[2]:
        return False  # port 0 is a fresh port each time
    try:
        ha, hb = ipaddress.ip_address(a[1]), ipaddress.ip_address(b[1])
    except ValueError:
        return a[1] == b[1]
    return ha.version == hb.version and (ha == hb or ha.is_unspecified or hb.is_unspecified)


def _article(label: str) -> str:
    return f"an {label}" if label[:1].lower() in "aeio" else f"a {label}"
