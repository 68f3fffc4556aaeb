"""`check.dkim`: verify the DKIM signatures of incoming mail (RFC 6376, RFC 8463).

    check.dkim {
        required_fields From Subject
        allow_body_subset no
        no_sig_action ignore
        broken_sig_action ignore
        fail_open no
        max_signatures 10
    }

Algorithm (docs/checks.md, "dkim"), at the body stage, on the header as
the client sent it and the buffered body:

1. no `DKIM-Signature` field: `dkim=none`, `550 5.7.20 No DKIM
   signatures` through `no_sig_action`;
2. the first `max_signatures` fields are verified, each giving one
   `dkim=RESULT header.d=D header.i=I [reason=...]` entry; any further
   ones share one `dkim=neutral` entry saying they were not verified;
3. a key lookup that failed for the time being gives `temperror` with
   `fail_open yes`, and otherwise makes the whole check answer
   `421 4.7.20 Temporary error during DKIM verification`;
4. no `pass` among them: `550 5.7.20 No passing DKIM signatures` through
   `broken_sig_action`.

How the work is split between the event loop, worker threads and dkimpy
(the body is streamed once for every signature, keys are looked up at
the same time) is the Strategy of `kittiwake.dkim.verify`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from kittiwake.checks.base import (
    AuthResult,
    CheckAction,
    CheckResult,
    CheckState,
    CheckStateBase,
    action_directive,
)
from kittiwake.config.directives import Directives
from kittiwake.dkim.body import BodyHasher, BodySpec, hash_body
from kittiwake.dkim.verify import Outcome, Pending, clean, dkimpy_headers, finish, prepare
from kittiwake.dns import DNSError
from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Module, register
from kittiwake.workers import run_in_worker

__all__ = ["DKIMCheck"]

NAME = "check.dkim"
IGNORE = CheckAction("ignore")
#: Signatures verified per message by default: each costs a DNS lookup
#: and a public-key operation, and a message may carry thousands.
DEFAULT_MAX_SIGNATURES = 10
#: Work small enough to do on the event loop, where a thread hop would cost
#: more than the work (a few hundred µs for a typical message): a body in
#: memory up to this size, and up to this many signatures to verify. Bigger
#: bodies, or more signatures (whose keys may be 16 kbit), go to a worker.
INLINE_BODY = 64 * 1024
INLINE_SIGNATURES = 2
MAX_MAX_SIGNATURES = 100


def _internal(message: str, reason: str) -> CheckResult:
    """A hard, temporary reject that no action changes (maddy's behaviour)."""
    error = SMTPError(451, (4, 0, 0), message, check_name=NAME, reason=reason)
    return CheckResult(reject=True, reason=error)


def _hash(body: Buffer, specs: Iterable[BodySpec]) -> BodyHasher:
    """Step 2's body pass, in a worker thread: the buffer's reader blocks."""
    with body.open() as reader:
        return hash_body(reader, specs)


def _hash_small(body: Buffer, specs: Iterable[BodySpec]) -> BodyHasher:
    """Step 2's body pass for a small body in memory: one piece, no reader."""
    data = body.memory()
    if data is None:
        return _hash(body, specs)
    hasher = BodyHasher(specs)
    hasher.update(data)
    hasher.close()
    return hasher


@register(NAME)
class DKIMCheck(Module):
    """The module: configuration and the verification of one message."""

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        self.required_fields: list[str] = cfg.string_list(
            "required_fields", default=["From", "Subject"]
        )
        self.allow_body_subset = cfg.boolean("allow_body_subset", default=False)
        self.no_sig_action = cfg.custom("no_sig_action", action_directive, IGNORE)
        self.broken_sig_action = cfg.custom("broken_sig_action", action_directive, IGNORE)
        self.fail_open = cfg.boolean("fail_open", default=False)
        self.max_signatures = cfg.integer(
            "max_signatures", DEFAULT_MAX_SIGNATURES, minimum=1, maximum=MAX_MAX_SIGNATURES
        )
        cfg.finish()
        #: `required_fields` as `h=` names are compared: lowercase bytes.
        self._required = frozenset(name.lower().encode() for name in self.required_fields)

    async def check_state(self, meta: MsgMeta) -> CheckState:
        return _State(self, meta)

    async def verify(self, meta: MsgMeta, header: Header, body: Buffer) -> CheckResult:
        """Steps 1-4 of the module docstring."""
        headers = dkimpy_headers(header)  # a snapshot for the worker threads
        small = body.in_memory and len(body) <= INLINE_BODY
        try:
            # Parsing at most max_signatures fields is short work: no thread.
            items, skipped = prepare(headers, self.max_signatures, self.allow_body_subset)
            if not items:
                return self._no_signature(meta)
            pending = [item for item in items if isinstance(item, Pending)]
            hashes, temporary = await self._keys_and_body(pending, body, small)
            if temporary and not self.fail_open:
                return CheckResult(
                    reject=True,
                    reason=SMTPError(
                        421,
                        (4, 7, 20),
                        "Temporary error during DKIM verification",
                        check_name=NAME,
                        reason=temporary,
                    ),
                )
            if hashes is not None:
                if small and len(pending) <= INLINE_SIGNATURES:
                    finish(headers, pending, hashes, self._required)
                else:
                    await run_in_worker(finish, headers, pending, hashes, self._required)
        except OSError as exc:
            self.log.error("cannot read the message body", err=exc, msg_id=meta.id)
            return _internal("Internal I/O error", repr(exc))
        except Exception as exc:  # a bug here must not pass for a verdict
            self.log.error("DKIM verification failed", err=exc, msg_id=meta.id)
            return _internal("Internal error during policy check", repr(exc))
        outcomes = [_outcome(item) for item in items]
        return self._verdict(meta, outcomes, skipped)

    def _no_signature(self, meta: MsgMeta) -> CheckResult:
        self.log.debug("no signatures present", msg_id=meta.id)
        return self.no_sig_action.apply(
            CheckResult(
                reason=SMTPError(550, (5, 7, 20), "No DKIM signatures", check_name=NAME),
                auth_results=[AuthResult("dkim", "none")],
            )
        )

    async def _keys_and_body(
        self, pending: Sequence[Pending], body: Buffer, small: bool
    ) -> tuple[BodyHasher | None, str]:
        """Every key looked up while the body is hashed; (hashes, first temporary error)."""
        if not pending:
            return None, ""
        if len(pending) == 1:  # the usual case
            names, specs = [pending[0].key_name], {pending[0].body}
        else:
            names = sorted({sig.key_name for sig in pending})
            specs = {sig.body for sig in pending}
        if small:  # a few KiB in memory: hashing costs less than a thread hop
            if len(names) == 1:  # the usual case: no task for one lookup
                answers = [await self._key(names[0])]
            else:
                answers = list(await asyncio.gather(*(self._key(name) for name in names)))
            hashes = _hash_small(body, specs)
        else:
            hashes, answers = await asyncio.gather(
                run_in_worker(_hash, body, specs),
                asyncio.gather(*(self._key(name) for name in names)),
            )
        records = dict(zip(names, answers, strict=True))
        temporary = ""
        for sig in pending:
            record = records[sig.key_name]
            if isinstance(record, bytes):
                sig.key_record = record
                continue
            result, reason = record
            sig.outcome = Outcome(result, sig.domain, sig.identity, reason)
            if result == "temperror" and not temporary:
                temporary = f"{sig.key_name}: {reason}"
        return hashes, temporary

    async def _key(self, name: str) -> bytes | tuple[str, str]:
        """The one TXT record at `name`, or (result, reason) when there is none to use."""
        try:
            answer = await self.container.resolver.query(name, "TXT")
        except DNSError as exc:
            result = "temperror" if exc.temporary else "permerror"
            return result, clean(f"key lookup failed: {exc}")
        records = [r for r in answer.records if isinstance(r, bytes)]
        if not records:
            return "permerror", "no key for signature"  # RFC 6376 §6.1.2
        if len(records) > 1:
            return "permerror", "more than one key record"
        return records[0]

    def _verdict(self, meta: MsgMeta, outcomes: list[Outcome], skipped: int) -> CheckResult:
        results = [
            AuthResult(
                "dkim",
                o.result,
                {"header.d": o.domain, "header.i": o.identity},
                reason=o.reason,
            )
            for o in outcomes
        ]
        if skipped:
            results.append(
                AuthResult(
                    "dkim",
                    "neutral",
                    reason=f"{skipped} more signatures not verified (max_signatures "
                    f"{self.max_signatures})",
                )
            )
        if self.log.debug_enabled:
            for o in outcomes:
                self.log.debug(
                    "signature",
                    msg_id=meta.id,
                    result=o.result,
                    domain=o.domain,
                    identity=o.identity,
                    reason=o.reason,
                )
        for o in outcomes:
            if o.result == "pass":
                return CheckResult(auth_results=results)
        return self.broken_sig_action.apply(
            CheckResult(
                reason=SMTPError(550, (5, 7, 20), "No passing DKIM signatures", check_name=NAME),
                auth_results=results,
            )
        )


def _outcome(item: Outcome | Pending) -> Outcome:
    if isinstance(item, Outcome):
        return item
    # Every waiting signature got a key record (then a verdict) or a lookup error.
    return item.outcome or Outcome("permerror", item.domain, item.identity, "not verified")


class _State(CheckStateBase):
    """One message: only the body stage does anything."""

    def __init__(self, check: DKIMCheck, meta: MsgMeta) -> None:
        self.check = check
        self.meta = meta

    async def check_body(self, header: Header, body: Buffer) -> CheckResult:
        return await self.check.verify(self.meta, header, body)
