"""Failed AUTH attempts counted across connections (docs/auth.md, "Password guessing").

```
auth_ratelimit {
    ip 10 10m          # failed guesses per client address per window
    username 20 10m    # failed guesses per user name, from every address
    lockout 15m        # how long an address or user name is then refused
    exempt 127.0.0.0/8 ::1
}
```

Strategy: the per-session delays (`server/sasl.py`) only slow one
connection down; an attacker opens a new connection per guess. So failures
are also counted per client address and per user name, and past a threshold
the address (or the name) is *locked*: for `lockout` every attempt is
answered `454 4.7.0` after the usual delay, without asking any provider, so
a right password is answered exactly like a wrong one.

Two layers, as in `kittiwake.limits`, so the counters can later live in a
store shared by several processes and nodes:

- `AuthFailureStore` keeps the counters and answers at once. Its calls are
  the few a Redis store can make atomic (a set per key with a TTL, a lock
  key with a TTL). `MemoryAuthFailureStore` is today's implementation.
- `AuthThrottle` is the policy: the keys, the exemptions, which limits
  apply, the log lines.

Only distinct guesses count: a failure repeating the (user name, password)
pair of an earlier counted failure of the same key in the same window is
not counted again, so a mail client retrying a stale password every few
minutes does not lock out its office, while a guesser, who never repeats
a guess, is counted in full. Guesses are kept as 8-byte keyed hashes; the
key is random per process, so a password is never stored.

The user name limit would let anybody lock a real user out. It therefore
spares addresses that logged in as that user before (remembered for
`KNOWN_TTL`): the user's own devices keep working while a botnet spread
over many addresses is refused.

Memory: every key comes from the network. Entries expire (window or lockout
over, whichever is later) and each table keeps at most `MAX_KEYS`; past
that the least recently used entry is forgotten, which can only make the
limit more lenient for that one key, never refuse anybody or grow memory.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kittiwake.config import values
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.log import Logger
from kittiwake.networks import Address, Network

__all__ = [
    "KNOWN_TTL",
    "MAX_KEYS",
    "AuthFailureStore",
    "AuthThrottle",
    "Lockout",
    "MemoryAuthFailureStore",
    "ThrottleSettings",
    "parse_auth_ratelimit",
]


#: Entries kept per table (per scope) at most.
MAX_KEYS = 50_000
#: How long a successful login keeps its address known for that user.
KNOWN_TTL = 30 * 86400.0
#: Guesses remembered per entry for the repeat rule; beyond it every failure
#: counts (only matters for thresholds above it).
MAX_GUESSES = 64
GUESS_SIZE = 8
#: A user name longer than this is kept as its hash (names can be 12 KB).
MAX_NAME_KEY = 256
#: The address Unix-socket clients count as (as in docs/limits.md).
UNIX_CLIENT_IP = "127.0.0.1"
DEFAULT_EXEMPT: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


# -- the store ---------------------------------------------------------------


class AuthFailureStore(Protocol):
    """Where the counters live; every call answers at once.

    `scope` is `ip` or `username` (one table each), `key` the address or
    the name. A Redis store would keep a counter as a set of guesses with a
    TTL of `window` (SADD, SCARD) and a lockout as a key with a TTL.
    """

    async def lockout_left(self, scope: str, key: str) -> float:
        """Seconds left of `key`'s lockout; 0.0 when it is not locked."""
        ...

    async def add_failure(
        self, scope: str, key: str, guess: bytes, *, window: float, limit: int, lockout: float
    ) -> int:
        """Count one failed guess of `key`; return the count in its window.

        The window starts with the first counted failure and lasts `window`
        seconds. A `guess` already counted in the window is not counted
        again. The failure that brings the count to `limit` locks the key
        for `lockout` seconds and clears the count (the return value is
        then `limit`), so after the lockout the key starts afresh. While
        the key is locked nothing is counted and 0 is returned.
        """
        ...

    async def remember(self, key: str, ttl: float) -> None:
        """Note `key` (an address and a user name) as known for `ttl` seconds."""
        ...

    async def known(self, key: str) -> bool:
        """Whether `key` was remembered and has not expired."""
        ...


@dataclass(slots=True)
class _Counter:
    count: int
    window_end: float
    locked_until: float
    guesses: bytes  # GUESS_SIZE bytes per counted guess

    @property
    def expires(self) -> float:
        return max(self.window_end, self.locked_until)


class MemoryAuthFailureStore:
    """The in-process `AuthFailureStore`, bounded in memory (module docstring)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self.clock = clock
        self.max_keys = max_keys
        # Least recently written first.
        self._counters: dict[str, OrderedDict[str, _Counter]] = {}
        self._known: OrderedDict[str, float] = OrderedDict()
        #: Entries forgotten because a table was full (tests, stats).
        self.evicted = 0

    async def lockout_left(self, scope: str, key: str) -> float:
        table = self._counters.get(scope)
        counter = table.get(key) if table is not None else None
        if counter is None:
            return 0.0
        return max(counter.locked_until - self.clock(), 0.0)

    async def add_failure(
        self, scope: str, key: str, guess: bytes, *, window: float, limit: int, lockout: float
    ) -> int:
        now = self.clock()
        table = self._counters.setdefault(scope, OrderedDict())
        self._expire(table, now)
        counter = table.get(key)
        if counter is None or counter.expires <= now:
            table.pop(key, None)
            if len(table) >= self.max_keys:
                table.popitem(last=False)
                self.evicted += 1
            counter = table[key] = _Counter(0, now + window, 0.0, b"")
        else:
            table.move_to_end(key)
        if now < counter.locked_until:
            return 0
        if now >= counter.window_end:
            counter.count, counter.guesses, counter.window_end = 0, b"", now + window
        if _has_guess(counter.guesses, guess):
            return counter.count
        counter.count += 1
        if len(counter.guesses) < MAX_GUESSES * GUESS_SIZE:
            counter.guesses += guess[:GUESS_SIZE].ljust(GUESS_SIZE, b"\0")
        count = counter.count
        if count >= limit:
            counter.locked_until = now + lockout
            counter.count, counter.guesses, counter.window_end = 0, b"", now
        return count

    @staticmethod
    def _expire(table: OrderedDict[str, _Counter], now: float) -> None:
        # Oldest written first; entries written later almost always expire
        # later, so stopping at the first live one is enough (the cap bounds
        # the rest).
        while table:
            oldest = next(iter(table.values()))
            if oldest.expires > now:
                return
            table.popitem(last=False)

    async def remember(self, key: str, ttl: float) -> None:
        now = self.clock()
        known = self._known
        while known and next(iter(known.values())) <= now:
            known.popitem(last=False)
        if key in known:
            known.move_to_end(key)
        elif len(known) >= self.max_keys:
            known.popitem(last=False)
            self.evicted += 1
        known[key] = now + ttl

    async def known(self, key: str) -> bool:
        expires = self._known.get(key)
        return expires is not None and expires > self.clock()

    def key_count(self, scope: str | None = None) -> int:
        """Entries held: in one scope's table, `known`, or all (tests, stats)."""
        if scope == "known":
            return len(self._known)
        tables = [t for name, t in self._counters.items() if scope in (None, name)]
        return sum(len(t) for t in tables) + (len(self._known) if scope is None else 0)


def _has_guess(guesses: bytes, guess: bytes) -> bool:
    guess = guess[:GUESS_SIZE].ljust(GUESS_SIZE, b"\0")
    return any(guesses[i : i + GUESS_SIZE] == guess for i in range(0, len(guesses), GUESS_SIZE))


# -- the policy --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """One endpoint's `auth_ratelimit`; a limit of 0 is off."""

    ip_limit: int = 10
    ip_window: float = 600.0
    user_limit: int = 20
    user_window: float = 600.0
    lockout: float = 900.0
    exempt: tuple[Network, ...] = DEFAULT_EXEMPT

    @property
    def enabled(self) -> bool:
        return bool(self.ip_limit or self.user_limit)


@dataclass(frozen=True, slots=True)
class Lockout:
    """Why an attempt is refused: which limit (`ip` or `username`), for how long."""

    scope: str
    seconds_left: float


class AuthThrottle:
    """Counts failed logins per address and per user name; refuses past the limits."""

    def __init__(
        self,
        settings: ThrottleSettings,
        log: Logger,
        *,
        normalize: Callable[[str], str] = str,
        store: AuthFailureStore | None = None,
    ) -> None:
        """`normalize`: the endpoint's user name normalisation, so that
        `Alice@Example.ORG` and `alice@example.org` share one counter."""
        self.settings = settings
        self.log = log
        self.normalize = normalize
        self.store: AuthFailureStore = store if store is not None else MemoryAuthFailureStore()
        # Keys the guess hashes; per process, so a password is never stored.
        self._secret = os.urandom(32)

    def share_counters(self, previous: AuthThrottle) -> None:
        """Count on with `previous`'s counters (a reload, docs/reload.md).

        The guess hashes need the same key, so it comes along; the limits
        are this throttle's own, so a reload may change them.
        """
        self.store = previous.store
        self._secret = previous._secret

    async def check(self, ip: str | None, username: str) -> Lockout | None:
        """Whether an attempt must be refused before its password is checked.

        `ip` is the client address (PROXY-aware; `None` for a Unix socket).
        A store that fails lets the attempt through: the per-session delays
        still apply, and nobody is locked out by an outage.
        """
        s = self.settings
        try:
            ip_key = self._ip_key(ip)
            if ip_key is not None:
                left = await self.store.lockout_left("ip", ip_key)
                if left > 0:
                    return Lockout("ip", left)
            if s.user_limit:
                user = self._user_key(username)
                left = await self.store.lockout_left("username", user)
                if left > 0 and not await self.store.known(_pair(ip, user)):
                    return Lockout("username", left)
        except Exception as exc:
            self.log.error("auth_ratelimit store failed", err=exc)
        return None

    async def record_failure(self, ip: str | None, username: str, password: str) -> None:
        """Count a checked-and-wrong login (a `535`); log a lockout when one starts."""
        s = self.settings
        user = self._user_key(username)
        guess = hmac.new(
            self._secret, f"{user}\0{password}".encode(errors="surrogatepass"), hashlib.sha256
        ).digest()[:GUESS_SIZE]
        try:
            ip_key = self._ip_key(ip)
            if ip_key is not None:
                n = await self.store.add_failure(
                    "ip", ip_key, guess, window=s.ip_window, limit=s.ip_limit, lockout=s.lockout
                )
                self._log_lockout("ip", n, s.ip_limit, ip, username)
            if s.user_limit:
                n = await self.store.add_failure(
                    "username",
                    user,
                    guess,
                    window=s.user_window,
                    limit=s.user_limit,
                    lockout=s.lockout,
                )
                self._log_lockout("username", n, s.user_limit, ip, username)
        except Exception as exc:
            self.log.error("auth_ratelimit store failed", err=exc)

    async def record_success(self, ip: str | None, username: str) -> None:
        """Remember the address as known for the user (spared its user name's lockout).

        A success resets no counter: with one valid account an attacker
        could otherwise guess other users' passwords between two logins of
        their own (docs/auth.md, "Password guessing").
        """
        if not self.settings.user_limit:
            return
        try:
            await self.store.remember(_pair(ip, self._user_key(username)), KNOWN_TTL)
        except Exception as exc:
            self.log.error("auth_ratelimit store failed", err=exc)

    def _log_lockout(
        self, scope: str, count: int, limit: int, ip: str | None, username: str
    ) -> None:
        if count >= limit:
            # One line per lockout, for fail2ban. The address comes before
            # the client's user name, so a filter anchored on `scope=... src_ip=`
            # cannot be fooled by a name containing `src_ip=` (docs/auth.md).
            self.log.info(
                "authentication locked out",
                scope=scope,
                src_ip=ip or "unix",
                username=username,
                failures=count,
                lockout=round(self.settings.lockout),
            )

    def _ip_key(self, ip: str | None) -> str | None:
        """The `ip` counter's key; None when the address is exempt or the limit off."""
        if not self.settings.ip_limit:
            return None
        addr = _parse_ip(ip)
        if addr is None:
            return ip
        if any(addr.version == net.version and addr in net for net in self.settings.exempt):
            return None
        return _address_key(addr)

    def _user_key(self, username: str) -> str:
        try:
            name = self.normalize(username)
        except ValueError:
            name = username
        if len(name) > MAX_NAME_KEY:
            return "#" + hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()
        return name


def _parse_ip(ip: str | None) -> Address | None:
    """The client's address; IPv4-mapped IPv6 as IPv4, Unix as 127.0.0.1."""
    try:
        addr = ipaddress.ip_address((ip or UNIX_CLIENT_IP).partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _address_key(addr: Address) -> str:
    """One key per client: an IPv4 address, or an IPv6 /64.

    A single IPv6 host usually holds a whole /64 (often more), so counting
    single IPv6 addresses would give it billions of fresh budgets.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def _pair(ip: str | None, user: str) -> str:
    addr = _parse_ip(ip)
    return f"{_address_key(addr) if addr is not None else ip} {user}"


# -- the directive -------------------------------------------------------------


def parse_auth_ratelimit(node: Node) -> ThrottleSettings:
    """`auth_ratelimit { ip N [WINDOW]; username N [WINDOW]; lockout D; exempt ... }`."""
    if node.args:
        raise ValueError("takes no arguments: write its settings in a block { ... }")
    if node.children is None:
        raise ValueError("a block { ... } is required")
    cfg = Directives(node)
    default = ThrottleSettings()
    ip_limit, ip_window = cfg.custom("ip", _parse_limit, (default.ip_limit, default.ip_window))
    user_limit, user_window = cfg.custom(
        "username", _parse_limit, (default.user_limit, default.user_window)
    )
    lockout = cfg.duration("lockout", default.lockout, positive=True)
    exempt = cfg.custom("exempt", _parse_exempt, default.exempt)
    cfg.finish()
    return ThrottleSettings(ip_limit, ip_window, user_limit, user_window, lockout, exempt)


def _parse_limit(node: Node) -> tuple[int, float]:
    """`FAILURES [WINDOW]`: 0 failures turns the limit off; the window defaults to 10m."""
    if node.children is not None:
        raise ValueError("unexpected block")
    if not 1 <= len(node.args) <= 2:
        raise ValueError("expected FAILURES [WINDOW], for example 10 10m")
    try:
        limit = values.parse_int(node.args[:1])
    except ValueError:
        raise ValueError(
            f"invalid number of failures {node.args[0]!r}: expected an integer"
        ) from None
    if limit < 0:
        raise ValueError(f"invalid number of failures {limit}: must not be negative (0 = off)")
    window = 600.0
    if len(node.args) == 2:
        try:
            window = values.parse_duration(node.args[1:])
        except ValueError as exc:
            raise ValueError(f"invalid window: {exc}") from None
        if window <= 0:
            raise ValueError("invalid window: must be greater than zero")
    return limit, window


def _parse_exempt(node: Node) -> tuple[Network, ...]:
    """`none`, or addresses and CIDRs (a bare address is itself alone)."""
    if node.children is not None:
        raise ValueError("unexpected block")
    if not node.args:
        raise ValueError("expected addresses or CIDRs, or none")
    if node.args == ["none"]:
        return ()
    networks: list[Network] = []
    for entry in node.args:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if entry == "none":
                raise ValueError("none cannot be combined with addresses") from None
            raise ValueError(f"invalid address {entry!r}: expected an IP address or CIDR") from None
    return tuple(networks)
