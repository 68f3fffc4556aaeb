"""A private Postfix instance for interoperability tests.

`Postfix` writes its own `main.cf`/`master.cf` into a fresh directory under
/tmp, runs `postfix -c DIR check` (which creates the queue subdirectories
with the owners and modes Postfix insists on) and `postfix -c DIR start`,
and always stops it again (`postfix -c DIR stop`, then SIGKILL for anything
of this instance still alive). Nothing touches the system instance:
/etc/postfix is only read (postfix-files, dynamicmaps.cf), no service is
started, every listener is on 127.0.0.1.

Why a directory of its own under /tmp rather than pytest's `tmp_path`:
Postfix's daemons run as the unprivileged `postfix` user and must reach
their directories (and kittiwake's LMTP socket) by absolute path, while
pytest's base temporary directory is 0700 root. The instance's root is
0755; `shared_dir()` makes a directory the `postfix` user can enter. The
mail log is copied to `keep_log` (normally in `tmp_path`) on stop.

Minimal ownership Postfix accepts (what `postfix check` creates or wants):
`queue_directory` root-owned with the subdirectories made by `postfix
check` itself (`postfix:root` 0700, `maildrop`/`public` group `postdrop`,
`pid` root); `data_directory` owned by `postfix`; `config_directory` and
its files root-owned and not group/world writable.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kw import free_port

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
WAIT = 20.0

# Every service a relaying instance needs; chroot (5th column) is off so the
# daemons see the real file system (kittiwake's socket, the CA file).
MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def need_postfix() -> None:
    """Fail (not skip) unless Postfix is installed the way `.ci/run` installs it."""
    for tool in (POSTFIX, POSTQUEUE, POSTSUPER):
        if not os.access(tool, os.X_OK):
            pytest.fail(
                f"{tool} is missing: install it: .ci/run installs Debian package postfix",
                pytrace=False,
            )
    try:
        grp.getgrnam("postfix")
    except KeyError:
        pytest.fail(
            "no postfix group, so Postfix is not installed properly: "
            "install it: .ci/run installs Debian package postfix",
            pytrace=False,
        )


def not_root() -> str | None:
    """Why a private Postfix cannot start here: its master must be root to
    set up the queue and switch its daemons to the postfix user."""
    if os.geteuid() != 0:
        return "starting a private Postfix needs root (its daemons run as user postfix)"
    return None


def need_sasl_plain() -> None:
    """Fail unless Postfix's SASL client can do PLAIN (Cyrus SASL's plugin)."""
    if glob.glob("/usr/lib/*/sasl2/libplain.so*") or glob.glob("/usr/lib/sasl2/libplain.so*"):
        return
    pytest.fail(
        "the Cyrus SASL PLAIN plugin is missing: install it: "
        ".ci/run installs Debian package libsasl2-modules",
        pytrace=False,
    )


def instance_pids(config_dir: Path) -> list[int]:
    """Processes of the instance whose MAIL_CONFIG is `config_dir` (the
    master passes MAIL_CONFIG on to every daemon it starts)."""
    marker = f"MAIL_CONFIG={config_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def masters(config_dir: Path) -> list[int]:
    """Running Postfix masters of the instance whose config is `config_dir`.

    The master's command line is `/usr/lib/postfix/sbin/master -w` on
    Debian, so `pgrep -f postfix/master` never matches it: the pattern
    allows the `sbin/`. Narrowed to this instance by MAIL_CONFIG, as other
    instances (a benchmark's) may run at the same time.
    """
    found = subprocess.run(
        ["pgrep", "-f", r"postfix(/sbin)?/master"], capture_output=True, text=True, check=False
    ).stdout.split()
    mine = set(instance_pids(config_dir))
    return [int(p) for p in found if int(p) in mine]


class Postfix:
    """One private Postfix: `with Postfix(settings) as pf: pf.send(...)`."""

    def __init__(self, settings: dict[str, str], *, keep_log: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kw-postfix-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.log_path = self.root / "maillog"
        self.keep_log = keep_log
        self.port = free_port()
        self.settings = settings
        self.started = False

    # -- files ----------------------------------------------------------------

    def shared_dir(self, name: str, *, setgid: bool = False) -> Path:
        """A directory under the instance root the `postfix` user can enter
        (group postfix, 0750; with `setgid`, sockets created in it get group
        postfix too, so a 0660 socket is writable by Postfix's daemons)."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        os.chown(path, 0, grp.getgrnam("postfix").gr_gid)
        path.chmod(0o2750 if setgid else 0o750)
        return path

    def write_file(self, name: str, data: bytes) -> Path:
        """A root-owned, world-readable file under the instance root."""
        path = self.root / name
        path.write_bytes(data)
        path.chmod(0o644)
        return path

    def main_cf(self) -> str:
        base = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "syslog_name": "postfix-kw",
            "myhostname": "relay.example.net",
            "mydomain": "example.net",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            # Nothing leaves loopback: whatever a test does not route fails.
            "default_transport": "error:5.7.1 no mail leaves this test instance",
            # Retry deferred mail soon (the wrong-password test waits on it).
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        base.update(self.settings)
        return "".join(f"{k} = {v}\n" for k, v in base.items())

    # -- life cycle -------------------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=WAIT, env=env, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}\n"
                f"maillog:\n{self.log}"
            )
        return done

    def start(self) -> None:
        self.config_dir.mkdir()
        self.queue_dir.mkdir()
        self.data_dir.mkdir()
        os.chown(self.data_dir, _postfix_uid(), -1)
        (self.config_dir / "main.cf").write_text(self.main_cf())
        listen = f"127.0.0.1:{self.port}"
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=listen))
        self._run(POSTFIX, "-c", str(self.config_dir), "check")  # makes the queue dirs
        self.started = True
        self._run(POSTFIX, "-c", str(self.config_dir), "start")  # master -w: ready on return
        # `master -w` forks the real master and waits for it to be ready; the
        # waiting parent may still be there for a moment after `start`
        # returns, with the same command line. Settle on one master.
        deadline = time.monotonic() + WAIT
        while len(masters(self.config_dir)) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the instance; anything of it still alive after WAIT is killed."""
        if not self.started:
            return
        self.started = False
        try:
            self._run(POSTFIX, "-c", str(self.config_dir), "stop", check=False)
            deadline = time.monotonic() + WAIT
            while instance_pids(self.config_dir) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for pid in instance_pids(self.config_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop, keep the log, remove the instance's files."""
        try:
            self.stop()
        finally:
            if self.keep_log is not None and self.log_path.exists():
                shutil.copyfile(self.log_path, self.keep_log)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postfix:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- mail -----------------------------------------------------------------

    def send(
        self,
        sender: str,
        rcpts: list[str],
        message: bytes,
        *,
        options: tuple[str, ...] = (),
    ) -> str:
        """Inject `message` (CR LF lines) over SMTP; return its queue ID."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=WAIT) as client:
            client.ehlo("client.example.net")
            code, text = client.mail(sender, list(options))
            assert code == 250, (code, text)
            for rcpt in rcpts:
                code, text = client.rcpt(rcpt)
                assert code == 250, (rcpt, code, text)
            code, text = client.data(message)
            assert code == 250, (code, text)
        found = re.search(rb"queued as ([0-9A-Za-z]+)", text)
        assert found, text
        return found.group(1).decode()

    def queue(self) -> list[dict[str, Any]]:
        """`postqueue -j`: one dict per queued message."""
        out = self._run(POSTQUEUE, "-c", str(self.config_dir), "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """`postqueue -f`: attempt deferred mail now."""
        self._run(POSTQUEUE, "-c", str(self.config_dir), "-f")

    def wait_queue(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """Poll `postqueue -j` until `done(queue)`; return that queue."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.queue()
            if done(left):
                return left
            if time.monotonic() > deadline:
                raise AssertionError(f"queue now: {left}\nmaillog:\n{self.log}")
            time.sleep(0.1)

    def wait_queue_empty(self, timeout: float = WAIT) -> None:
        self.wait_queue(lambda left: not left, timeout)

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log)
            if found:
                return found.group(0)
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in maillog:\n{self.log}")
            time.sleep(0.05)


def _postfix_uid() -> int:
    return pwd.getpwnam("postfix").pw_uid
