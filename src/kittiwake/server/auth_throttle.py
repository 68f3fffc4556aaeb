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

Two layers, as in `kittiwake.limits`, so the counters can live in a store
shared by several processes and nodes (docs/state.md):

- a `StateStore` keeps the counters and answers each decision at once, in
  one step: is this address or name locked (and is the address known for
  the name), count this failure against both, remember this address.
  The in-process store is the default; an endpoint's `state &NAME` puts
  the counters in a shared one.
- `AuthThrottle` is the policy: the keys, the exemptions, which limits
  apply, the log lines, and what an unreachable shared store means.

Only distinct guesses count: a failure repeating the (user name, password)
pair of an earlier counted failure of the same key in the same window is
not counted again, so a mail client retrying a stale password every few
minutes does not lock out its office, while a guesser, who never repeats
a guess, is counted in full. Guesses are kept as 8-byte keyed hashes; the
key is random per process (per server, for the worker processes sharing
the host store), so a password is never stored, not even in a shared
store (where the same guess sent to two nodes therefore counts once per
node).

The user name limit would let anybody lock a real user out. It therefore
spares addresses that logged in as that user before (remembered for
`KNOWN_TTL`): the user's own devices keep working while a botnet spread
over many addresses is refused.

Memory: every key comes from the network. Entries expire (window or lockout
over, whichever is later); in this process each table keeps at most
`MAX_KEYS`, and past that the least recently used entry is forgotten, which
can only make the limit more lenient for that one key, never refuse
anybody or grow memory (kittiwake/state/memory.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from kittiwake.config import values
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.log import Logger
from kittiwake.networks import Address, Network
from kittiwake.state.base import Failure, StateStore, StoreUnavailable
from kittiwake.state.memory import GUESS_SIZE, MemoryStore

__all__ = [
    "KNOWN_TTL",
    "MAX_KEYS",
    "AuthThrottle",
    "Lockout",
    "ThrottleSettings",
    "parse_auth_ratelimit",
]


#: Entries kept per table (per scope) at most, in the in-process store.
MAX_KEYS = 50_000
#: How long a successful login keeps its address known for that user.
KNOWN_TTL = 30 * 86400.0
#: A user name longer than this is kept as its hash (names can be 12 KB).
MAX_NAME_KEY = 256
#: The address Unix-socket clients count as (as in docs/limits.md).
UNIX_CLIENT_IP = "127.0.0.1"
DEFAULT_EXEMPT: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


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
        store: StateStore | None = None,
        owner: str = "",
        guess_key: bytes | None = None,
    ) -> None:
        """`normalize`: the endpoint's user name normalisation, so that
        `Alice@Example.ORG` and `alice@example.org` share one counter.
        `owner` names the counters in a shared store (the endpoint's).
        `guess_key` keys the guess hashes when every process of the server
        must hash alike (the host store); by default a random one."""
        self.settings = settings
        self.log = log
        self.normalize = normalize
        self.store: StateStore = store if store is not None else MemoryStore(max_keys=MAX_KEYS)
        prefix = f"auth/{owner}/" if owner else ""
        self.counters = (prefix + "ip", prefix + "username", prefix + "known")
        # Keys the guess hashes, so a password is never stored; per process,
        # or per server with worker processes (state/host.py `HostState`).
        self._secret = guess_key if guess_key is not None else os.urandom(32)

    def share_counters(self, previous: AuthThrottle) -> None:
        """Count on with `previous`'s counters (a reload, docs/reload.md).

        The guess hashes need the same key, so it comes along; the limits
        are this throttle's own, so a reload may change them. A shared
        store is this configuration's own (the counters are in it anyway).
        """
        if not self.store.shared and not previous.store.shared:
            self.store = previous.store
        self._secret = previous._secret

    async def check(self, ip: str | None, username: str) -> Lockout | None:
        """Whether an attempt must be refused before its password is checked.

        `ip` is the client address (PROXY-aware; `None` for a Unix socket).
        One decision: the lockouts of the address and of the name, and
        whether the address is known for the name. A shared store that
        cannot answer raises `StoreUnavailable` with `fail_closed` (the
        session answers `454`, as for a provider that cannot decide) and
        lets the attempt through with `fail_open`.
        """
        ip_key = self._ip_key(ip)
        user = self._user_key(username) if self.settings.user_limit else None
        asked: list[tuple[str, str]] = []
        if ip_key is not None:
            asked.append((self.counters[0], ip_key))
        if user is not None:
            asked.append((self.counters[1], user))
        if not asked:
            return None
        known = (self.counters[2], _pair(ip, user or ""))
        try:
            locks = await self.store.locked(asked, known)
        except StoreUnavailable:
            if self.store.fail_open:
                return None
            raise
        except Exception as exc:
            self.log.error("auth_ratelimit store failed", err=exc)
            return None
        for (counter, _key), left in zip(asked, locks.left, strict=True):
            if left <= 0:
                continue
            if counter == self.counters[0]:
                return Lockout("ip", left)
            if not locks.known:
                return Lockout("username", left)
        return None

    async def record_failure(self, ip: str | None, username: str, password: str) -> None:
        """Count a checked-and-wrong login (a `535`); log a lockout when one starts.

        A store that cannot count it is not a reason to refuse anything
        more: the failure goes uncounted (the store logs the outage).
        """
        s = self.settings
        user = self._user_key(username)
        guess = hmac.new(
            self._secret, f"{user}\0{password}".encode(errors="surrogatepass"), hashlib.sha256
        ).digest()[:GUESS_SIZE]
        failures: list[Failure] = []
        ip_key = self._ip_key(ip)
        if ip_key is not None:
            failures.append(Failure(self.counters[0], ip_key, s.ip_window, s.ip_limit, s.lockout))
        if s.user_limit:
            failures.append(Failure(self.counters[1], user, s.user_window, s.user_limit, s.lockout))
        if not failures:
            return
        try:
            counts = await self.store.count_failure(failures, guess)
        except StoreUnavailable:
            return
        except Exception as exc:
            self.log.error("auth_ratelimit store failed", err=exc)
            return
        for failure, count in zip(failures, counts, strict=True):
            scope = "ip" if failure.counter == self.counters[0] else "username"
            self._log_lockout(scope, count, failure.limit, ip, username)

    async def record_success(self, ip: str | None, username: str) -> None:
        """Remember the address as known for the user (spared its user name's lockout).

        A success resets no counter: with one valid account an attacker
        could otherwise guess other users' passwords between two logins of
        their own (docs/auth.md, "Password guessing").
        """
        if not self.settings.user_limit:
            return
        try:
            await self.store.remember(
                (self.counters[2], _pair(ip, self._user_key(username))), KNOWN_TTL
            )
        except StoreUnavailable:
            return
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
