"""The MTA-STS policy cache: in memory, optionally kept in a directory too.

RFC 8461 §5.1 makes the cache part of the security: a policy once seen
protects the next deliveries for its `max_age` even if an attacker then
hides the TXT record or the policy host. So the `fs` cache (the default)
survives restarts: one small JSON file per domain, written to a temporary
name and renamed into place, so a crash never leaves half a policy. The
policy's own text is stored and parsed again when read, so a file edited
by hand or damaged is refused exactly as a bad fetched policy would be.

Expiry is counted in wall-clock time (`time.time()`), because it must
hold across restarts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from kittiwake import log
from kittiwake.mx_auth.sts_text import STSError, STSPolicy, parse_policy

__all__ = ["CachedPolicy", "PolicyCache"]

_log = log.get("mx_auth/mtasts")
#: Policies kept in memory at most (the fs cache keeps every one on disk).
RAM_ENTRIES = 10_000
# A file name is the domain itself: lowercase A-labels only, nothing that
# could leave the directory.
_SAFE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    """A policy, the TXT id it was fetched for, and when it was fetched."""

    policy_id: str
    policy: STSPolicy
    body: bytes
    fetched: float  # time.time()

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires


class PolicyCache:
    """Policies by domain; `directory` None keeps them in memory only (`cache ram`)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self._ram: OrderedDict[str, CachedPolicy | None] = OrderedDict()

    async def get(self, domain: str) -> CachedPolicy | None:
        """The unexpired policy of `domain`, or None."""
        if domain in self._ram:
            self._ram.move_to_end(domain)
            entry = self._ram[domain]
        else:
            entry = await asyncio.to_thread(self._read, domain) if self.directory else None
            self._remember(domain, entry)
        if entry is None or not entry.fresh():
            return None
        return entry

    async def put(self, domain: str, entry: CachedPolicy) -> None:
        """Keep `entry` as the policy of `domain` (on disk too, with `fs`)."""
        self._remember(domain, entry)
        if self.directory:
            try:
                await asyncio.to_thread(self._write, domain, entry)
            except OSError as exc:
                # The policy is still used from memory; only a restart forgets it.
                _log.error("cannot write the MTA-STS cache", err=exc, domain=domain)

    def _remember(self, domain: str, entry: CachedPolicy | None) -> None:
        self._ram[domain] = entry
        self._ram.move_to_end(domain)
        while len(self._ram) > RAM_ENTRIES:
            self._ram.popitem(last=False)

    # -- the directory (worker threads) -----------------------------------------------

    def _path(self, domain: str) -> str | None:
        if self.directory is None or _SAFE.fullmatch(domain) is None or ".." in domain:
            return None
        return os.path.join(self.directory, domain)

    def _read(self, domain: str) -> CachedPolicy | None:
        path = self._path(domain)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read(256 * 1024))
            entry = CachedPolicy(
                str(data["id"]),
                parse_policy(data["policy"].encode("ascii")),
                data["policy"].encode("ascii"),
                float(data["fetched"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, STSError) as exc:
            _log.warn("ignoring a damaged MTA-STS cache file", path=path, err=str(exc))
            return None
        return entry

    def _write(self, domain: str, entry: CachedPolicy) -> None:
        path = self._path(domain)
        if path is None:
            return
        assert self.directory is not None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        data = {
            "id": entry.policy_id,
            "fetched": entry.fetched,
            "policy": entry.body.decode("ascii"),
        }
        temp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        with open(temp, "w", encoding="ascii") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
