"""`auth.pam`: check passwords with the system's PAM stack (docs/auth.md, "auth.pam").

Each attempt is one PAM transaction, as in maddy: `pam_start` for the
service (`maddy` by default, so an existing `/etc/pam.d/maddy` keeps
working; the `service` directive is a kittiwake extension),
`pam_authenticate` then `pam_acct_mgmt`, both with `PAM_SILENT |
PAM_DISALLOW_NULL_AUTHTOK`, then `pam_end`. The conversation answers every
prompt with the password and ignores informational messages.

Result classes: `PAM_AUTH_ERR`, `PAM_USER_UNKNOWN` (either step) and
`PAM_NEW_AUTHTOK_REQD` (account step) are invalid credentials; any other
failure, `pam_start`'s included, is temporary (`454`): PAM could not
decide, and the user must not be told their password is wrong.

Threads: PAM calls block (files, NSS, LDAP, and pam_unix sleeps about two
seconds after a failure), so transactions run in worker threads. They get
a pool of their own, so a burst of failed logins sleeping in PAM cannot
starve the default pool other modules use for file work.

Binding: `pamela` (ctypes over libpam). Both it and `python-pam` call
`pam_acct_mgmt`, but with flags 0, behind a one-call API that also runs
`pam_setcred`; pamela exposes the raw entry points and reports errors with
the PAM code, so the transaction here is built from those. The result
codes are Linux-PAM's, so the module refuses to start elsewhere.

`use_helper yes` (maddy's setuid `maddy-pam-helper`) is a configuration
error: kittiwake runs PAM in-process and ships no helper. A setup that
needs one can run it through `auth.external { helper PATH }`, which speaks
the same protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from typing import Any

from kittiwake.auth.base import InvalidCredentials, TemporaryAuthFailure
from kittiwake.config.directives import Directives
from kittiwake.module import Module, register

DEFAULT_SERVICE = "maddy"

# Linux-PAM values (security/_pam_types.h).
PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_AUTH_ERR = 7
PAM_USER_UNKNOWN = 10
PAM_NEW_AUTHTOK_REQD = 12
PAM_CONV_ERR = 19
PAM_SILENT = 0x8000
PAM_DISALLOW_NULL_AUTHTOK = 0x0001
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2

_FLAGS = PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK
_INVALID = {
    "pam_authenticate": {PAM_AUTH_ERR, PAM_USER_UNKNOWN},
    "pam_acct_mgmt": {PAM_AUTH_ERR, PAM_USER_UNKNOWN, PAM_NEW_AUTHTOK_REQD},
}

#: Where Linux-PAM looks for a service's policy (the second since Linux-PAM 1.4).
POLICY_DIRS = ("/etc/pam.d", "/usr/lib/pam.d")

#: Worker threads for PAM transactions (shared by every auth.pam instance).
MAX_THREADS = 16


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one transaction ended: `step` is the PAM function that failed."""

    step: str = ""
    code: int = PAM_SUCCESS
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == PAM_SUCCESS

    @property
    def invalid(self) -> bool:
        """Invalid credentials, rather than a failure to decide."""
        return self.code in _INVALID.get(self.step, set())


class _Binding:
    """The few libpam calls used, through pamela's ctypes declarations."""

    def __init__(self) -> None:
        import pamela  # type: ignore[import-untyped]

        self._pamela: Any = pamela
        # Fail now, not during a login, if the library lacks an entry point.
        for name in ("pam_start", "PAM_AUTHENTICATE", "PAM_ACCT_MGMT", "PAM_END", "CONV_FUNC"):
            getattr(pamela, name)

    def transaction(self, service: str, username: str, password: str) -> Outcome:
        """One whole PAM transaction; blocking."""
        p = self._pamela
        secret = password.encode("utf-8", "surrogateescape")
        conv = self._conversation(secret)
        try:
            handle = p.pam_start(
                service.encode("utf-8", "surrogateescape"),
                username.encode("utf-8", "surrogateescape"),
                conv_func=conv,
            )
        except p.PAMError as exc:
            return Outcome("pam_start", int(exc.errno or -1), str(exc.message))
        step = "pam_authenticate"
        code = -1
        try:
            code = int(p.PAM_AUTHENTICATE(handle, _FLAGS))
            if code == PAM_SUCCESS:
                step = "pam_acct_mgmt"
                code = int(p.PAM_ACCT_MGMT(handle, _FLAGS))
            message = "" if code == PAM_SUCCESS else str(p.pam_strerror(handle, code))
        finally:
            end = int(p.PAM_END(handle, code))
        if code == PAM_SUCCESS and end != PAM_SUCCESS:
            return Outcome("pam_end", end, str(p.pam_strerror(p.PamHandle(), end)))
        return Outcome(step if code else "", code, message)

    def _conversation(self, secret: bytes) -> Any:
        """A conversation function answering every prompt with `secret`.

        Responses are allocated with libc (calloc, strdup) because PAM frees
        them. The caller keeps the returned object alive for the whole
        transaction: it owns the C callback.
        """
        p = self._pamela

        def conv(count: int, messages: Any, responses: Any, _data: Any) -> int:
            try:
                addr = p.CALLOC(count, ctypes.sizeof(p.PamResponse))
                if not addr:
                    return PAM_BUF_ERR
                responses[0] = ctypes.cast(addr, ctypes.POINTER(p.PamResponse))
                for i in range(count):
                    style = messages[i].contents.msg_style
                    if style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                        copy = p.STRDUP(secret)
                        if not copy:
                            return PAM_BUF_ERR
                        responses.contents[i].resp = copy
                        responses.contents[i].resp_retcode = 0
                return PAM_SUCCESS
            except Exception:  # an exception must not cross into C
                return PAM_CONV_ERR

        return p.CONV_FUNC(conv)


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """One pool for the process; threads are only started when needed."""
    return concurrent.futures.ThreadPoolExecutor(MAX_THREADS, "kittiwake-pam")


@register("auth.pam")
class PAMAuth(Module):
    """`auth.pam { debug no; use_helper no; service maddy }`."""

    def configure(self, cfg: Directives) -> None:
        self.block_only(cfg)
        use_helper = cfg.boolean("use_helper", False)
        service_node = cfg.get("service")
        self.service = cfg.string("service", DEFAULT_SERVICE)
        cfg.finish()
        where = service_node or cfg.node
        if not self.service or "/" in self.service or "\0" in self.service:
            raise where.error(f"{self.module_name}: invalid PAM service name {self.service!r}")
        if use_helper:
            raise cfg.node.error(
                f"{self.module_name}: use_helper is not supported: kittiwake runs PAM "
                "in-process and ships no maddy-pam-helper; remove use_helper, or run a "
                "helper with auth.external { helper PATH }"
            )
        if not sys.platform.startswith("linux"):
            raise cfg.node.error(f"{self.module_name}: only Linux-PAM is supported")
        try:
            self._binding = _Binding()
        except ImportError as exc:
            if exc.name != "pamela":
                raise cfg.node.error(f"{self.module_name}: PAM is not available: {exc}") from None
            # An optional dependency: say how to get it (pyproject.toml).
            raise cfg.node.error(
                f"{self.module_name}: the pamela package is not installed: "
                "pip install 'kittiwake[pam]'"
            ) from None
        except Exception as exc:  # libpam missing (OSError, AttributeError)
            raise cfg.node.error(f"{self.module_name}: PAM is not available: {exc}") from None
        if not any(os.path.exists(os.path.join(d, self.service)) for d in POLICY_DIRS):
            self.log.warn(
                "no PAM configuration for this service: PAM applies its 'other' policy",
                service=self.service,
            )

    async def auth_plain(self, username: str, password: str) -> None:
        if "\0" in username or "\0" in password:
            # C strings would end at the NUL: "alice\0x" must not become "alice".
            raise InvalidCredentials("NUL in the credentials")
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(
            _pool(), self._binding.transaction, self.service, username, password
        )
        if outcome.ok:
            self.log.debug("authenticated", username=username)
            return
        why = f"{outcome.step}: {outcome.message}"
        if outcome.invalid:
            self.log.debug("authentication failed", username=username, reason=why)
            raise InvalidCredentials(why)
        self.log.error("PAM could not decide", username=username, reason=why, code=outcome.code)
        raise TemporaryAuthFailure(why)
