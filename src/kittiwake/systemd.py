"""Tell systemd what the server is doing: the `sd_notify` protocol, by hand.

Strategy: a unit with `Type=notify` (contrib/systemd/kittiwake.service)
sets `NOTIFY_SOCKET` to a Unix datagram socket; each state change is one
datagram of newline-separated `KEY=VALUE` assignments (sd_notify(3)). The
name is a path, or an abstract socket name written with a leading `@`
(sent as a NUL byte). Without `NOTIFY_SOCKET` (not started by systemd, or
another `Type=`) every call does nothing, so the server behaves the same
everywhere. A notification that cannot be sent is dropped: a missing
service manager must never stop mail.

What `kittiwake run` sends (cli/run.py):

- `notify_ready()` once every endpoint is bound and the control socket is
  open, right after the readiness lines on stdout;
- `notify_stopping()` when SIGTERM or SIGINT starts the graceful stop;
- around a configuration reload, `notify_reloading()` when the reload
  starts (before the new configuration is read), then `notify_ready()`
  when it is over, whether the new configuration was taken or refused
  (the old one still serves): systemd holds the unit in "reloading" until
  that READY=1 (docs/production.md, "Reload").
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "notify_ready", "notify_reloading", "notify_status", "notify_stopping"]


def _address() -> str | None:
    """Where to send, as `socket.sendto` takes it; None when systemd is not listening."""
    name = os.environ.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        # An abstract socket: the name starts with a NUL byte, not with "@".
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    # Unset, empty, or a form kittiwake does not speak (systemd 254's
    # `vsock:CID:PORT`, for virtual machines): nobody to tell.
    return None


def notify(*assignments: str) -> bool:
    """Send one datagram of `KEY=VALUE` lines; True if it was sent.

    `assignments` must not contain newlines themselves (each is one line).
    """
    address = _address()
    if address is None or not assignments:
        return False
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def notify_ready(status: str = "") -> bool:
    """READY=1: startup (or a reload) is finished; `status` is shown by `systemctl status`."""
    return notify("READY=1", *_status(status))


def notify_reloading(status: str = "reloading configuration") -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC time, as systemd 253+ requires of it.

    Follow it with `notify_ready()` once the reload is over.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))


def notify_stopping(status: str = "stopping") -> bool:
    """STOPPING=1: the graceful stop has begun."""
    return notify("STOPPING=1", *_status(status))


def notify_status(status: str) -> bool:
    """A free-form STATUS= line, without any state change."""
    return notify(*_status(status))


def _status(text: str) -> list[str]:
    # One line only: a newline would start another assignment.
    line = " ".join(text.split())
    return [f"STATUS={line}"] if line else []
