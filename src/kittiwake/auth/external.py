"""`auth.external`: ask a helper program whether a password is right (docs/auth.md).

The helper protocol is maddy's, so helpers written for maddy work unchanged:
one process per attempt, started directly (no shell, no arguments), given
`ACCOUNT\\n` and `PASSWORD\\n` on its standard input; exit status 0 means
"accepted", 1 means "wrong user name or password", anything else (another
status, a signal, a program that cannot be started, one that does not
finish in time) means the helper could not decide, which the endpoint turns
into a temporary failure rather than telling the user their password is
wrong.

Differences from maddy, each on the safe side:

* stdin is closed once both lines are written, so a helper that reads to
  end of file finishes instead of hanging (maddy leaves it open; helpers
  that read two lines do not notice the difference);
* a helper gets `timeout` seconds (30) and is killed after that;
* user names and passwords containing CR, LF or NUL are refused without
  running the helper: the protocol is line based, and a password with a
  line break would let `right\\nanything` pass as `right`;
* the helper's stderr is logged with every occurrence of the password
  replaced, because a helper may well echo what it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.config.directives import Directives
from kittiwake.config.node import Node
from kittiwake.log import Logger
from kittiwake.module import Module, register

#: Where maddy installs its helper; the default keeps maddy setups working.
DEFAULT_HELPER = "/usr/lib/maddy/maddy-auth-helper"

#: How much of a helper's stderr is kept for the log; the rest is drained.
STDERR_KEEP = 16 * 1024
#: How much of it one log line shows.
STDERR_SHOW = 2000

_FORBIDDEN = ("\n", "\r", "\0")
_REDACTED = "<redacted>"


def redact(text: str, secret: str, *, cut: bool = False) -> str:
    """`text` with every occurrence of `secret` replaced.

    With `cut`, the text was truncated, so its end may hold the first part
    of the secret: that part is replaced too.
    """
    if not secret:
        return text
    text = text.replace(secret, _REDACTED)
    if cut:
        for k in range(min(len(secret) - 1, len(text)), 0, -1):
            if text.endswith(secret[:k]):
                return text[:-k] + _REDACTED
    return text


async def run_helper(
    path: str, account: str, password: str, *, time_limit: float, log: Logger
) -> None:
    """Run one helper attempt; return if accepted, raise an AuthError if not.

    Shared by every module that speaks the helper protocol.
    """
    data = f"{account}\n{password}\n".encode("utf-8", "surrogateescape")
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.error("cannot start the authentication helper", err=exc, helper=path)
        raise TemporaryAuthFailure("authentication helper could not be started") from None
    feeder = asyncio.create_task(_feed(proc, data))
    reader = asyncio.create_task(_collect(proc))
    try:
        try:
            async with asyncio.timeout(time_limit):
                status = await proc.wait()
        except TimeoutError:
            log.error("authentication helper timed out", helper=path, seconds=time_limit)
            raise TemporaryAuthFailure("authentication helper timed out") from None
        try:
            # The helper has exited; a grandchild it left behind may still
            # hold stderr open, so do not wait long for the end of it.
            async with asyncio.timeout(1.0):
                raw, cut = await reader
        except TimeoutError:
            raw, cut = b"", False
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for task in (feeder, reader):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if status == 0:
        log.debug("helper accepted", account=account)
        return
    if status == 1:
        log.debug("helper rejected", account=account)
        raise InvalidCredentials("rejected by the authentication helper")
    stderr = redact(raw.decode("utf-8", "replace"), password, cut=cut).strip()
    if len(stderr) > STDERR_SHOW:
        stderr = stderr[:STDERR_SHOW] + "..."
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    log.error("authentication helper failed", helper=path, status=how, stderr=stderr)
    raise TemporaryAuthFailure(f"authentication helper failed ({how})")


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    """Write the two lines and close stdin; a helper that exits early is fine."""
    stdin = proc.stdin
    if stdin is None:
        return
    with contextlib.suppress(OSError):
        stdin.write(data)
        await stdin.drain()
    with contextlib.suppress(OSError):
        stdin.close()


async def _collect(proc: asyncio.subprocess.Process) -> tuple[bytes, bool]:
    """Read stderr to its end, keeping the first STDERR_KEEP bytes."""
    stream = proc.stderr
    if stream is None:
        return b"", False
    kept = bytearray()
    cut = False
    while chunk := await stream.read(65536):
        room = STDERR_KEEP - len(kept)
        if len(chunk) > room:
            cut = True
        kept += chunk[: max(room, 0)]
    return bytes(kept), cut


@register("auth.external")
class ExternalAuth(Module):
    """`auth.external { helper PATH; perdomain no; domains D... }`."""

    #: Seconds a helper may take before it is killed (temporary failure).
    timeout: float = 30.0

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        self.perdomain = cfg.boolean("perdomain", False)
        domains = cfg.custom("domains", _domain_list, None)
        helper = cfg.string("helper", DEFAULT_HELPER)
        cfg.finish()
        if self.perdomain and domains is None:
            raise cfg.node.error(f"{self.module_name}: perdomain yes needs a domains directive")
        #: Allowed domains, case-folded; None when `domains` is absent.
        self.domains: frozenset[str] | None = domains
        # maddy runs inside its state directory, so relative paths meet there.
        self.helper = self.container.state_path(helper)
        if not os.path.isfile(self.helper):
            raise cfg.node.error(
                f"{self.module_name}: helper {self.helper} does not exist "
                "(set it with: helper PATH)"
            )
        if not os.access(self.helper, os.X_OK):
            raise cfg.node.error(f"{self.module_name}: helper {self.helper} is not executable")
        self.log.debug("using helper", helper=self.helper)

    def account_name(self, username: str) -> str | None:
        """The name given to the helper, or None when `username` is not accepted.

        `perdomain no`: the part before the `@`; a domain part must be listed
        in `domains`. `perdomain yes`: the whole `local@domain`, whose domain
        must be listed. Empty local or domain parts are never accepted
        (maddy lets `user@` through as `user`).
        """
        local, at, domain = username.partition("@")
        if self.perdomain:
            if not at or "@" in domain:
                return None
            account = username
        elif not at:
            return username or None
        else:
            account = local
        if not local or not domain or self.domains is None:
            return None
        return account if domain.casefold() in self.domains else None

    async def auth_plain(self, username: str, password: str) -> None:
        account = self.account_name(username)
        if account is None:
            self.log.debug("user name not accepted for this helper", username=username)
            raise InvalidCredentials("user name not accepted")
        if any(c in account or c in password for c in _FORBIDDEN):
            self.log.debug("line break or NUL in the credentials", username=username)
            raise InvalidCredentials("line break or NUL in the credentials")
        await run_helper(self.helper, account, password, time_limit=self.timeout, log=self.log)


def _domain_list(node: Node) -> frozenset[str]:
    if node.children is not None:
        raise ValueError("unexpected block")
    if not node.args:
        raise ValueError("expected at least one domain")
    return frozenset(d.casefold() for d in node.args)
