"""The `state.redis` module: counters in Redis or Valkey, for several nodes.

```
state.redis cluster {
    endpoint redis://10.0.0.5:6379/0
    fail_closed                 # or fail_open
    key_prefix kittiwake:
    connect_timeout 1s
    timeout 1s
    lease 30s
}
```

or, with Redis Sentinel choosing the master (docs/state.md, "Redis with
Sentinel"):

```
state.redis cluster {
    sentinel mymaster 10.0.0.5:26379 10.0.0.6:26379 10.0.0.7:26379
    password s3cret             # the master's; optional
    sentinel_password s3cret    # the Sentinels' own; optional
    db 0
}
```

Referenced as `state &cluster` from `limits` blocks and from endpoints
(connection caps, `auth_ratelimit`); docs/state.md.

Strategy: the module is part of a configuration, like any other: its
connection pool is made when the configuration starts and closed when it
stops. A reload therefore builds a new pool for the new configuration
while the old one keeps serving (and renewing the slot leases of) the
sessions still draining; the counters themselves are in Redis, so both
configurations see the same ones and a reload forgets nothing. redis-py is
an optional extra: it is imported only when a `state.redis` block is
configured, and its absence is a configuration error at that block.

With `sentinel`, redis-py asks the Sentinels for the master's address
whenever it opens a connection; after a failover the connections to the
old master fail, the one retry reconnects through the Sentinels, and the
decisions in between follow the fail mode like any other outage.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from kittiwake.config import redact
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.module import Module, Role, register
from kittiwake.networks import host_port
from kittiwake.state.base import Failure, Grant, Held, Locks, Rate, Slot
from kittiwake.tls.directive import read_ca_bundle
from kittiwake.tls.loaders import global_path

if TYPE_CHECKING:
    from kittiwake.state.redis_store import RedisStore

__all__ = ["RedisState", "Sentinel", "parse_endpoint", "parse_sentinel"]

#: `key_prefix`: what may go before every key (no spaces or quotes to get
#: wrong in redis-cli, no `{}` hash tags).
_PREFIX = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
_SCHEMES = ("redis", "rediss", "unix")
#: Redis Sentinel's own port, for an address written without one.
SENTINEL_PORT = 26379
#: Directives that only the `sentinel` form takes: the master's login (an
#: endpoint URL holds it) and the Sentinels' own.
_MASTER_LOGIN = ("db", "username", "password")
_SENTINEL_LOGIN = ("sentinel_username", "sentinel_password")
#: All that only the `sentinel` form takes (`endpoint` has its URL for them).
_SENTINEL_ONLY = (*_MASTER_LOGIN, *_SENTINEL_LOGIN, "tls")


@dataclass(frozen=True)
class Sentinel:
    """`sentinel MASTER HOST[:PORT]...`: who names the master, and its name."""

    master: str
    addresses: tuple[tuple[str, int], ...]

    def hosts(self, sep: str = " ") -> str:
        """The Sentinels' addresses as HOST:PORT ([IPV6]:PORT), joined by `sep`."""
        return sep.join(host_port(h, p) for h, p in self.addresses)

    def __str__(self) -> str:
        return f"{self.master}@{self.hosts(',')}"


@register("state.redis")
class RedisState(Module):
    """`state.redis NAME { endpoint URL; fail_open|fail_closed; ... }`."""

    shared = True
    #: Set by `configure`; a class default so that the capability check,
    #: made before the block is configured, finds it.
    fail_open = False

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        self.url: str | None = cfg.custom("endpoint", parse_endpoint, None)
        cfg.hide("endpoint", lambda args: [redact.url(a) for a in args])
        self.sentinel: Sentinel | None = cfg.custom("sentinel", parse_sentinel, None)
        self._where_master(cfg)
        fail_open = cfg.get("fail_open")
        fail_closed = cfg.get("fail_closed")
        for node in (fail_open, fail_closed):
            if node is not None and (node.args or node.children is not None):
                raise node.error(f"{node.name} takes no arguments")
        if fail_open is not None and fail_closed is not None:
            later = max(fail_open, fail_closed, key=lambda n: (n.file, n.line))
            raise later.error("fail_open and fail_closed cannot both be set: choose one")
        #: Whether decisions go through when Redis cannot answer (default: no).
        self.fail_open = fail_open is not None
        #: Extra CAs for Redis's certificates (PEM), beside the system's.
        self.root_ca = self._root_ca(cfg)
        self.key_prefix = cfg.custom("key_prefix", _parse_prefix, "kittiwake:")
        self.connect_timeout = cfg.duration("connect_timeout", 1.0, positive=True)
        self.timeout = cfg.duration("timeout", 1.0, positive=True)
        self.lease = cfg.duration("lease", 30.0, positive=True)
        if self.lease < 3:
            raise (cfg.get("lease") or cfg.node).error(
                "lease: must be at least 3s (leases are renewed every third of it)"
            )
        cfg.finish()
        try:
            from kittiwake.state import redis_store
        except ImportError as exc:
            if exc.name is None or not exc.name.startswith("redis"):
                raise
            # An optional dependency: say how to get it (pyproject.toml).
            raise cfg.node.error(
                f"{self.module_name}: the redis package is not installed: "
                "pip install 'kittiwake[redis]'"
            ) from None
        self._store_module = redis_store
        self.store: RedisStore | None = None

    def _where_master(self, cfg: Directives) -> None:
        """One of `endpoint` and `sentinel`; the master's login only with `sentinel`."""
        endpoint, sentinel = cfg.get("endpoint"), cfg.get("sentinel")
        if endpoint is None and sentinel is None:
            raise cfg.node.error(
                "missing required directive: endpoint (for example endpoint "
                "redis://127.0.0.1:6379/0), or sentinel MASTER HOST:PORT..."
            )
        if endpoint is not None and sentinel is not None:
            later = max(endpoint, sentinel, key=lambda n: (n.file, n.line))
            raise later.error(
                "endpoint and sentinel cannot both be set: with sentinel, "
                "the Sentinels say where the master is"
            )
        self.db, self.username, self.password = 0, "", ""
        self.sentinel_username, self.sentinel_password = "", ""
        #: With `sentinel`: TLS to the Sentinels and to the master they name.
        self.tls = False
        if endpoint is not None:
            for name in _SENTINEL_ONLY:
                node = cfg.get(name)
                if node is None:
                    continue
                if name in _SENTINEL_LOGIN:
                    raise node.error(f"{name}: only with sentinel (it is the Sentinels' own)")
                if name == "tls":
                    raise node.error("tls: only with sentinel; with endpoint, use rediss://")
                raise node.error(f"{name}: only with sentinel; with endpoint, write it in the URL")
            return
        self.db = cfg.integer("db", 0, minimum=0)
        self.username = cfg.string("username", "")
        self.password = cfg.string("password", "", secret=True)
        self.sentinel_username = cfg.string("sentinel_username", "")
        self.sentinel_password = cfg.string("sentinel_password", "", secret=True)
        self.tls = cfg.boolean("tls", False)

    def _root_ca(self, cfg: Directives) -> str:
        """`root_ca FILE...`: only where there is TLS (`rediss://`, or `tls yes`
        with `sentinel`); each file read and checked now, as `tls_client`'s."""
        node = cfg.get("root_ca")
        if node is None:
            return ""
        tls = self.tls if self.sentinel is not None else str(self.url).startswith("rediss://")
        if not tls:
            raise node.error(
                "root_ca: only with TLS: a rediss:// endpoint, or sentinel with tls yes"
            )
        if node.children is not None or not node.args:
            raise node.error("root_ca: expected one or more PEM files")
        state_dir = global_path(self.container, "state_dir")
        bundles = [read_ca_bundle(node, os.path.join(state_dir, p)) for p in node.args]
        return "\n".join(b.decode("ascii") for b in bundles)

    def where(self) -> str:
        """The endpoint or the Sentinels, without passwords, for logs."""
        if self.sentinel is not None:
            return f"sentinel {self.sentinel}"
        assert self.url is not None
        return redact.url(self.url)

    async def start(self) -> None:
        """Make the client (no connection yet: the first decision connects)."""
        if self.sentinel is not None:
            client = self._store_module.connect_sentinel(
                self.sentinel.master,
                list(self.sentinel.addresses),
                db=self.db,
                username=self.username or None,
                password=self.password or None,
                sentinel_username=self.sentinel_username or None,
                sentinel_password=self.sentinel_password or None,
                tls=self.tls,
                root_ca=self.root_ca,
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
                on_master=self._master_named,
            )
        else:
            assert self.url is not None
            client = self._store_module.connect(
                self.url,
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
                root_ca=self.root_ca,
            )
        self.store = self._store_module.RedisStore(
            client,
            self.log,
            name=self.instance_name or self.module_name,
            prefix=self.key_prefix,
            fail_open=self.fail_open,
            timeout=self.timeout,
            lease=self.lease,
            # With worker processes each one logs its own outage: say whose.
            log_fields=self._log_fields(),
            sentinels=self.sentinel.hosts() if self.sentinel is not None else "",
            tls=self.tls if self.sentinel is not None else str(self.url).startswith("rediss://"),
        )
        self.store.start()
        self.log.info(
            "shared state in redis",
            endpoint=self.where(),
            mode="fail_open" if self.fail_open else "fail_closed",
        )

    def _log_fields(self) -> dict[str, object]:
        """With worker processes each one logs its own lines: say whose."""
        return {} if self.container.role is Role.SINGLE else {"pid": os.getpid()}

    def _master_named(self, host: str, port: int) -> None:
        """The Sentinels named a master, for the first time or after a failover."""
        assert self.sentinel is not None
        self.log.info(
            "redis master found",
            master=self.sentinel.master,
            address=host_port(host, port),
            **self._log_fields(),
        )

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.stop()

    def _running(self) -> RedisStore:
        if self.store is None:
            raise RuntimeError(f"{self!r} is not started")
        return self.store

    # -- the StateStore interface, kept by the store made at start -----------------

    async def acquire(self, wanted: Sequence[Rate | Slot]) -> Grant:
        return await self._running().acquire(wanted)

    async def release(self, held: Sequence[Held]) -> None:
        await self._running().release(held)

    async def locked(self, counters: Sequence[tuple[str, str]], known: tuple[str, str]) -> Locks:
        return await self._running().locked(counters, known)

    async def count_failure(self, failures: Sequence[Failure], guess: bytes) -> list[int]:
        return await self._running().count_failure(failures, guess)

    async def remember(self, known: tuple[str, str], ttl: float) -> None:
        await self._running().remember(known, ttl)


def parse_endpoint(node: Node) -> str:
    """`endpoint redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, `rediss://...` (TLS)
    or `unix:///PATH[?db=N]`: checked here so a typo is a FILE:LINE error."""
    if node.children is not None:
        raise ValueError("unexpected block")
    if len(node.args) != 1:
        raise ValueError("expected one URL, for example redis://127.0.0.1:6379/0")
    url = node.args[0]
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"{redact.url(url)}: the scheme must be redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError(f"{redact.url(url)}: a unix:// endpoint needs an absolute path")
        return url
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        # The '@' ended up in the path, query or fragment: the password
        # holds a character that ends the address part of a URL.
        raise ValueError(
            f"{redact.url(url)}: a password with / ? # or @ in it must be "
            "percent-encoded (%2F %3F %23 %40)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{redact.url(url)}: invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{redact.url(url)}: a host is required")
    if port == 0:
        raise ValueError(f"{redact.url(url)}: invalid port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{redact.url(url)}: the database must be a number, as in /0")
    return url


def parse_sentinel(node: Node) -> Sentinel:
    """`sentinel MASTER HOST[:PORT] [HOST[:PORT]...]`: the master's name as the
    Sentinels know it, then the Sentinels (port 26379 when none is written;
    an IPv6 address in brackets)."""
    if node.children is not None:
        raise ValueError("unexpected block")
    if len(node.args) < 2:
        raise ValueError("expected the master's name and at least one HOST:PORT of a Sentinel")
    master, *written = node.args
    if not master.isprintable() or " " in master:
        raise ValueError(f"invalid master name {master!r}")
    if _looks_like_address(master):
        raise ValueError(
            f"{master}: the first argument is the master's name as the Sentinels know it "
            "(their `sentinel monitor` line), then the Sentinels"
        )
    addresses: list[tuple[str, int]] = []
    for text in written:
        addresses.append(_host_port(text))
    return Sentinel(master, tuple(addresses))


def _looks_like_address(text: str) -> bool:
    """An IP address, or HOST:PORT with a numeric port: not a master's name."""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host:
        return True
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _host_port(text: str) -> tuple[str, int]:
    if "://" in text:
        raise ValueError(
            f"{text}: a Sentinel is written HOST:PORT, not as a URL "
            "(for TLS to the Sentinels and the master, add `tls yes`)"
        )
    if "," in text:
        raise ValueError(f"{text}: separate the Sentinels with spaces, not commas")
    host, port, bracketed = text, None, False
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text}: expected [IPV6]:PORT")
        port = rest[1:] if rest else None
        bracketed = True
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise ValueError(f"{text}: write an IPv6 address in brackets, as in [::1]:26379")
    if not host:
        raise ValueError(f"{text}: a host is required")
    if bracketed and ":" not in host:
        raise ValueError(f"{text}: brackets are for IPv6 addresses only")
    if port is None:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text}: invalid port {port!r}")
    return host, int(port)


def _parse_prefix(node: Node) -> str:
    if node.children is not None or len(node.args) != 1:
        raise ValueError("expected one prefix, for example kittiwake:")
    prefix = node.args[0]
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"invalid prefix {prefix!r}: use 1 to 64 letters, digits and _ . : / -")
    return prefix
