"""RFC 7208 `check_host()`: pyspf, asking kittiwake's resolver, in a worker thread.

Strategy. pyspf is the one complete SPF evaluator in Python (mechanisms,
modifiers, macros, `exp=`, the lookup limits), but it is synchronous and
does its DNS through one module-level function, `spf.DNSLookup`. So:

* `evaluate` runs pyspf on a check worker thread (`kittiwake.workers`),
  never on the event loop;
* `spf.DNSLookup` is replaced once, when this module is imported, by
  `_lookup`. pyspf calls it from whichever thread evaluates; it finds that
  evaluation in a thread-local (`_current`), hands the question to the
  evaluation's resolver on the event loop and waits, at most until the
  evaluation's deadline. So any number of evaluations run at once, each on
  its own thread, all through the one resolver and its cache
  (docs/dns.md). Outside an evaluation the hook refuses to look anything
  up: pyspf's own dnspython glue (which calls the deprecated
  `dns.resolver.query`) can never run;
* the whole evaluation is bounded (`TIME_LIMIT`, RFC 7208 §4.6.4); past it
  the result is `temperror`.

Hostile records. pyspf keeps the RFC 7208 §4.6.4 limits (10 mechanisms
that look up DNS, 2 void lookups, 10 MX or PTR names), but its record
parser is quadratic in the length of a term: one 60 kB term costs a
minute of CPU. `_lookup` therefore screens TXT answers before pyspf sees
them: an SPF record longer than `MAX_RECORD`, with a term longer than
`MAX_TERM` (no valid term needs more than a domain name and a mechanism),
or with a byte that is not printable ASCII (RFC 7208 §4.6.1, §7.1) is a
permerror; any other TXT record longer than `MAX_TEXT` can only serve as
an `exp=` explanation and is replaced by empty text, which RFC 7208 §6.2
lets us ignore. With these limits the worst eleven records cost pyspf
about a tenth of a second.

Corrections to pyspf: a DNS error while validating a PTR name skips that
name, and an error on the PTR lookup itself makes `ptr` not match
(`%{p}` is then `unknown`, §7.3), instead of failing the whole evaluation
with temperror (both RFC 7208 §5.5); a name that macros made longer than
253 characters loses labels on the left until it fits (§7.3; pyspf cuts
one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Protocol

from kittiwake.dns import Answer, DNSError
from kittiwake.workers import run_in_worker

with warnings.catch_warnings():
    # pyspf's source has regular expressions in plain strings, which newer
    # Pythons warn about when they compile it (no .pyc yet).
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    import spf

__all__ = [
    "MAX_RECORD",
    "MAX_TERM",
    "MAX_TEXT",
    "RESULTS",
    "TIME_LIMIT",
    "Lookup",
    "SPFOutcome",
    "evaluate",
]

#: The bound on one evaluation, in seconds (RFC 7208 §4.6.4: at least 20).
TIME_LIMIT = 20.0
#: The longest SPF record accepted, in bytes; longer ones are a permerror.
MAX_RECORD = 4096
#: The longest term of an SPF record: a domain name (253) with a mechanism
#: name and CIDR lengths around it fits easily.
MAX_TERM = 300
#: The longest other TXT record passed on (as `exp=` text).
MAX_TEXT = 512
#: Longest problem or explanation text kept for logs and the A-R field.
MAX_NOTE = 200

#: What `check_host()` can return (RFC 7208 §2.6).
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

_SPF_RECORD = re.compile(rb"v=spf1(?: |$)", re.IGNORECASE)  # RFC 7208 §4.5
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_ASKED = frozenset({"A", "AAAA", "MX", "TXT", "PTR"})
_PREFIXES = ("SPF Temporary Error: ", "SPF Permanent Error: ")


class Lookup(Protocol):
    """What an evaluation asks: `kittiwake.dns.Resolver` (tests bring their own)."""

    async def query(self, name: str, rdtype: str) -> Answer: ...


@dataclass(frozen=True, slots=True)
class SPFOutcome:
    """The result of `check_host()` and what explains it.

    `problem`: why a temperror or permerror happened. `explanation`: for a
    fail, the domain's `exp=` text (RFC 7208 §6.2), empty when it has none.
    `mechanism`: the term of the top-level record that decided, if one did.
    The texts come from DNS: they are cut to `MAX_NOTE` characters and
    anything but printable ASCII is replaced by `?`.
    """

    result: str
    problem: str = ""
    explanation: str = ""
    mechanism: str = ""
    #: How long the result holds: until the first DNS answer it rests on
    #: goes stale (`time.monotonic()`; infinity when it used none).
    fresh_until: float = float("inf")


@dataclass(slots=True)
class _Evaluation:
    resolver: Lookup
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()
    time_limit: float
    #: When the first answer this evaluation used goes stale (time.monotonic()).
    fresh_until: float = float("inf")


class _OutOfTime(spf.TempError):  # type: ignore[misc]
    """The evaluation's deadline passed: never skipped like other DNS errors."""


_current = threading.local()


def _lookup(
    name: str, qtype: str, strict: object = True, timeout: object = None
) -> list[tuple[tuple[str, str], object]]:
    """pyspf's DNS hook: `[((name, type), value), ...]` as its dnspython glue gives.

    A and AAAA give text addresses, MX `(preference, host)`, TXT a tuple of
    byte strings (one here: the resolver joins a record's strings, RFC 7208
    §3.3), PTR a host name. No such name or record is an empty list; a
    failure to get an answer raises `spf.TempError`.
    """
    evaluation: _Evaluation | None = getattr(_current, "evaluation", None)
    if evaluation is None:
        raise spf.TempError("DNS lookup outside an SPF evaluation")
    if qtype not in _ASKED:  # type SPF (99): RFC 7208 §3.1 no longer uses it
        return []
    remaining = evaluation.deadline - time.monotonic()
    if remaining <= 0:
        raise _OutOfTime("SPF evaluation took too long")
    future = asyncio.run_coroutine_threadsafe(
        evaluation.resolver.query(_fit(name), qtype), evaluation.loop
    )
    try:
        answer = future.result(remaining)
    except concurrent.futures.TimeoutError:
        # Not cancelled: other evaluations may be sharing this lookup, and
        # it ends by the resolver's own timeout.
        raise _OutOfTime("SPF evaluation took too long") from None
    except DNSError as exc:
        if exc.temporary:
            raise spf.TempError(f"DNS error: {exc}") from None
        return []  # not a name DNS could have: as if it did not exist
    except ValueError:
        return []
    evaluation.fresh_until = min(evaluation.fresh_until, answer.expires)
    key = (name, qtype)
    if qtype == "TXT":
        return [(key, (_screen(r),)) for r in answer.records if isinstance(r, bytes)]
    return [(key, r) for r in answer.records]


def _fit(name: str) -> str:
    """RFC 7208 §7.3: a name over 253 characters loses labels on the left until it fits.

    pyspf cuts one label at most, and a longer name could not be asked at all.
    """
    while len(name) > 253 and "." in name:
        name = name.partition(".")[2]
    return name


def _screen(record: bytes) -> bytes:
    """Refuse SPF records pyspf would take too long to read (module docstring)."""
    if _SPF_RECORD.match(record):
        if _NOT_PRINTABLE.search(record):
            # RFC 7208 §4.6.1 and §7.1: terms are printable ASCII split by spaces.
            raise spf.PermError("SPF record with a byte that is not printable ASCII")
        if len(record) > MAX_RECORD:
            raise spf.PermError(f"SPF record of {len(record)} bytes (at most {MAX_RECORD})")
        longest = max(len(term) for term in record.split(b" "))
        if longest > MAX_TERM:
            raise spf.PermError(f"SPF record term of {longest} bytes (at most {MAX_TERM})")
        return record
    return record if len(record) <= MAX_TEXT else b""


class _Query(spf.query):  # type: ignore[misc]
    """pyspf's query, with RFC 7208 §5.5's handling of DNS errors in `ptr`."""

    def validated_ptrs(self) -> list[str]:
        try:
            names: list[str] = self.dns_ptr(self.i)
        except _OutOfTime:
            raise
        except spf.TempError:
            return []  # §5.5: "this mechanism fails to match"
        valid = []
        for host in names[: spf.MAX_PTR]:  # §4.6.4: the first 10 only
            try:
                if self.cidrmatch(self.dns_a(host, self.A), self.cidrmax):
                    valid.append(host)
            except _OutOfTime:
                raise
            except spf.TempError:
                continue  # §5.5: "that domain name is skipped"
        return valid


def _note(text: object) -> str:
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return cleaned[:MAX_NOTE]


def _checkable(domain: str) -> bool:
    """RFC 7208 §4.3: a malformed or single-label domain gives `none` without DNS."""
    name = domain.removesuffix(".")
    labels = name.split(".")
    return (
        len(labels) > 1
        and len(name) <= 253
        and not name.startswith("[")
        and all(0 < len(label) <= 63 for label in labels)
    )


def _check_host(
    evaluation: _Evaluation, ip: str, sender: str, helo: str, receiver: str
) -> SPFOutcome:
    """The worker thread's part: pyspf with this thread's lookups routed to `evaluation`."""
    _current.evaluation = evaluation
    try:
        query = _Query(i=ip, s=sender, h=helo, receiver=receiver, querytime=evaluation.time_limit)
        if sender.count("@") > 1:
            # pyspf cuts at the first "@"; the domain follows the last one.
            local, _, domain = sender.rpartition("@")
            query.l, query.o, query.d = local or "postmaster", domain, domain
        if not _checkable(query.d):
            return SPFOutcome("none")
        query.set_default_explanation("")
        result, _code, text = query.check()
    finally:
        _current.evaluation = None
    if result not in RESULTS:
        raise RuntimeError(f"pyspf returned {result!r}")
    mechanism = _note(query.mechanism or "")
    fresh = evaluation.fresh_until
    if result in ("temperror", "permerror"):
        for prefix in _PREFIXES:
            text = text.removeprefix(prefix)
        return SPFOutcome(result, problem=_note(text), mechanism=mechanism, fresh_until=fresh)
    explanation = _note(text) if result == "fail" else ""
    return SPFOutcome(result, explanation=explanation, mechanism=mechanism, fresh_until=fresh)


async def evaluate(
    resolver: Lookup,
    ip: str,
    sender: str,
    helo: str,
    *,
    receiver: str = "unknown",
    time_limit: float = TIME_LIMIT,
) -> SPFOutcome:
    """`check_host(ip, domain of sender, sender)` (RFC 7208 §4), on a worker thread.

    `sender` is the MAIL FROM address with its domain in A-labels, or empty
    for the null sender, which pyspf replaces by `postmaster@HELO` (RFC 7208
    §2.4). `receiver` is the `%{r}` macro of explanations. Exceptions other
    than SPF's own results (a bug) propagate.
    """
    loop = asyncio.get_running_loop()
    evaluation = _Evaluation(resolver, loop, time.monotonic() + time_limit, time_limit)
    job = run_in_worker(_check_host, evaluation, ip, sender, helo, receiver)
    try:
        # The thread stops at its own deadline, at its next lookup; this
        # also covers time spent waiting for a free thread.
        return await asyncio.wait_for(job, time_limit + 1.0)
    except TimeoutError:
        return SPFOutcome("temperror", problem="SPF evaluation took too long")


spf.DNSLookup = _lookup
