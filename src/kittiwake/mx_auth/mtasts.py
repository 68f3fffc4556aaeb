"""`mx_auth { mtasts { cache fs|ram; fs_dir DIR } }`: MTA-STS (RFC 8461; docs/mx-auth.md).

Strategy. `for_domain` finds the policy that applies to a destination the
way RFC 8461 §5.1 orders it:

1. the TXT record at `_mta-sts.DOMAIN` gives the current policy id;
2. a cached, unexpired policy with that id is used as it is;
3. otherwise the policy is fetched over HTTPS (mx_auth/sts_fetch.py),
   parsed strictly (mx_auth/sts_text.py) and cached for its max_age;
4. when the TXT lookup or the fetch fails, or the TXT record is gone, an
   unexpired cached policy still applies: hiding the record or the policy
   host must not switch the protection off (RFC 8461 §10.2).

Concurrent deliveries to one domain share one discovery. A failed fetch is
remembered for `RETRY_AFTER` seconds so a domain with a broken policy host
does not cost a fetch per message. A cached policy still in use is fetched
again in the background once it is a day old (or half its max_age), so a
destination mail keeps going to never drops out of the cache.

Effects, per MX: an MX the policy lists gets MX level `mtasts`; in
`enforce` mode an MX it does not list is refused (`550 5.7.0`), and so is
a connection without TLS or whose certificate did not verify for the MX
name (`451 4.7.1`); `testing` mode only logs what `enforce` would refuse;
`none` applies nothing.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kittiwake import log
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.dns import DNSError, Resolver
from kittiwake.errors import SMTPError
from kittiwake.mx_auth.base import (
    RESULT_TYPE,
    MXCandidate,
    MXLevel,
    PolicyReport,
    TLSLevel,
    TLSState,
)
from kittiwake.mx_auth.config import policy
from kittiwake.mx_auth.sts_cache import CachedPolicy, PolicyCache
from kittiwake.mx_auth.sts_fetch import FETCH_TIMEOUT, FetchError, fetch_policy
from kittiwake.mx_auth.sts_text import Mode, STSError, STSPolicy, parse_policy, parse_txt_records

if TYPE_CHECKING:
    from kittiwake.container import Container

__all__ = ["MTASTS", "STSDomain", "build_mtasts"]

_log = log.get("mx_auth/mtasts")
#: How long a failed discovery is remembered before the next fetch attempt.
RETRY_AFTER = 300.0
#: A cached policy in use is fetched again once it is this old (or half its
#: max_age, if that is shorter).
REFRESH_AFTER = 86_400.0
#: Failed domains remembered at most.
FAILURES_KEPT = 10_000
DEFAULT_DIR = "mtasts_cache"

MX_REFUSED = "Failed to establish the MX record authenticity (MTA-STS)"
NO_TLS = "TLS is required but unavailable or failed (MTA-STS)"
NOT_TRUSTED = "TLS certificate of the MX is not trusted but authentication is required (MTA-STS)"


@dataclass(frozen=True, slots=True)
class _Found:
    """What discovery concluded for one domain."""

    policy: STSPolicy | None
    report: PolicyReport


class MTASTS:
    """The configured `mtasts` policy: the cache and how to fetch."""

    def __init__(
        self,
        resolver: Resolver,
        cache: PolicyCache,
        *,
        port: int = 443,
        cafile: str | None = None,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        """`port` and `cafile`: only tests change them (`--debug.mtastsport`, `.mtastsca`)."""
        self.resolver = resolver
        self.cache = cache
        self.port = port
        self.timeout = timeout
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if cafile is not None:
            self.context.load_verify_locations(cafile=cafile)
        self._inflight: dict[str, asyncio.Task[_Found]] = {}
        self._failed: dict[str, tuple[float, str, _Found]] = {}
        self._refreshing: dict[str, asyncio.Task[STSPolicy | _Found]] = {}

    async def for_domain(self, domain: str) -> STSDomain:
        """The policy of `domain` as it applies now (never raises for a bad policy)."""
        domain = domain.rstrip(".").lower()
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._discover(domain))
            self._inflight[domain] = task
            task.add_done_callback(lambda _: self._inflight.pop(domain, None))
        found = await asyncio.shield(task)
        return STSDomain(domain, found.policy, found.report)

    async def _discover(self, domain: str) -> _Found:
        cached = await self.cache.get(domain)
        try:
            answer = await self.resolver.query(f"_mta-sts.{domain}", "TXT")
            policy_id = parse_txt_records([r for r in answer.records if isinstance(r, bytes)])
        except (DNSError, STSError) as exc:
            _log.debug("no usable MTA-STS TXT record", domain=domain, reason=str(exc))
            policy_id = None
        if policy_id is None:
            # No record (or none usable): a cached policy still binds (RFC 8461 §5.1).
            if cached is not None:
                return self._use(domain, cached.policy)
            return _Found(None, PolicyReport("no-policy-found", domain))
        if cached is not None and cached.policy_id == policy_id:
            if time.time() - cached.fetched > min(REFRESH_AFTER, cached.policy.max_age / 2):
                self._refresh(domain, policy_id)
            return self._use(domain, cached.policy)
        failed = self._failed.get(domain)
        if failed is not None and failed[0] > time.monotonic() and failed[1] == policy_id:
            return self._use(domain, cached.policy) if cached is not None else failed[2]
        fetched = await self._fetch(domain, policy_id, has_cached=cached is not None)
        if isinstance(fetched, STSPolicy):
            return self._use(domain, fetched)
        # A policy cached under an older id still binds (RFC 8461 §5.1).
        return self._use(domain, cached.policy) if cached is not None else fetched

    async def _fetch(self, domain: str, policy_id: str, *, has_cached: bool) -> STSPolicy | _Found:
        """Fetch, parse and cache the policy; on failure what to report, remembered."""
        try:
            body = await fetch_policy(
                domain, self.resolver, self.context, port=self.port, time_limit=self.timeout
            )
            fetched = parse_policy(body)
        except (FetchError, STSError) as exc:
            kind = exc.kind if isinstance(exc, FetchError) else "sts-policy-invalid"
            _log.warn(
                "cannot use the MTA-STS policy",
                domain=domain,
                reason=str(exc),
                using_cached=has_cached,
            )
        except Exception as exc:
            # A bug here must not stop deliveries: logged as one, handled as a failed fetch.
            kind = "sts-policy-fetch-error"
            _log.error("MTA-STS policy fetch failed unexpectedly", err=exc, domain=domain)
        else:
            self._failed.pop(domain, None)
            await self.cache.put(domain, CachedPolicy(policy_id, fetched, body, time.time()))
            _log.debug(
                "MTA-STS policy fetched", domain=domain, id=policy_id, mode=fetched.mode.value
            )
            return fetched
        found = _Found(None, PolicyReport("sts", domain, failure=kind))
        self._remember_failure(domain, policy_id, found)
        return found

    def _refresh(self, domain: str, policy_id: str) -> None:
        """Fetch a cached policy again in the background, so that a domain mail
        keeps going to stays protected past the policy's first max_age (its
        expiry counts from the last successful fetch); the delivery does not
        wait for it, and a failure keeps the cached policy."""
        if domain in self._refreshing:
            return
        failed = self._failed.get(domain)
        if failed is not None and failed[0] > time.monotonic():
            return
        task = asyncio.get_running_loop().create_task(
            self._fetch(domain, policy_id, has_cached=True)
        )
        self._refreshing[domain] = task
        task.add_done_callback(lambda _: self._refreshing.pop(domain, None))

    def _remember_failure(self, domain: str, policy_id: str, found: _Found) -> None:
        now = time.monotonic()
        if len(self._failed) >= FAILURES_KEPT:
            # Bounded memory whatever the number of broken domains: expired first.
            for key in [k for k, v in self._failed.items() if v[0] <= now] or list(self._failed):
                del self._failed[key]
        self._failed[domain] = (now + RETRY_AFTER, policy_id, found)

    @staticmethod
    def _use(domain: str, found: STSPolicy) -> _Found:
        return _Found(found, PolicyReport("sts", domain, found.text, found.mx))


class STSDomain:
    """The MTA-STS policy of one destination domain, for one delivery."""

    def __init__(self, domain: str, sts: STSPolicy | None, report: PolicyReport) -> None:
        self.domain = domain
        self.policy = sts
        self._report = report
        #: The report for the MX being tried: `_report`, or in `testing` mode
        #: for an MX the policy does not list, the same with the failure it
        #: let through, so the TLS report counts it (RFC 8460 §4.3) though
        #: the message goes on.
        self._current = report

    @property
    def report(self) -> PolicyReport | None:
        return self._current

    async def check_mx(self, mx: MXCandidate, level: MXLevel) -> MXLevel:
        self._current = self._report  # a new MX: nothing found yet
        if self.policy is None or self.policy.mode is Mode.NONE:
            return level
        if self.policy.matches(mx.host):
            return max(level, MXLevel.MTASTS)
        if self.policy.mode is Mode.ENFORCE:
            raise SMTPError(
                550,
                (5, 7, 0),
                MX_REFUSED,
                reason=f"{mx.host} is not an MX the policy lists",
                misc={RESULT_TYPE: "validation-failure"},
            )
        _log.info(
            "MX not listed by the MTA-STS policy (testing mode)", domain=mx.domain, mx=mx.host
        )
        if not self._report.failure:
            self._current = replace(self._report, failure="validation-failure")
        return level

    async def check_conn(
        self, mx: MXCandidate, mx_level: MXLevel, tls: TLSState, level: TLSLevel
    ) -> TLSLevel:
        if self.policy is None or self.policy.mode is Mode.NONE:
            return level
        # RFC 8461 §4.2: TLS with a certificate valid for the MX name (WebPKI).
        if not tls.tls:
            problem, result = NO_TLS, "starttls-not-supported"
        elif not tls.verified:
            problem, result = NOT_TRUSTED, "sts-webpki-invalid"
        else:
            return level
        if self.policy.mode is Mode.ENFORCE:
            raise SMTPError(451, (4, 7, 1), problem, reason=tls.error, misc={RESULT_TYPE: result})
        _log.info(
            "MTA-STS would refuse this connection (testing mode)",
            domain=mx.domain,
            mx=mx.host,
            problem=problem,
            reason=tls.error,
        )
        return level


@policy("mtasts")
def build_mtasts(node: Node, container: Container) -> MTASTS:
    """`mtasts [{ cache fs|ram; fs_dir DIR }]`."""
    if node.args:
        raise node.error("mtasts: no arguments allowed")
    cfg = Directives(node, container)
    kind = cfg.enum("cache", ["fs", "ram"], "fs")
    directory = cfg.string("fs_dir", DEFAULT_DIR)
    cfg.finish()
    flags = container.debug_flags
    return MTASTS(
        container.resolver,
        PolicyCache(container.state_path(directory) if kind == "fs" else None),
        port=flags.mtasts_port or 443,
        cafile=flags.mtasts_ca,
    )
