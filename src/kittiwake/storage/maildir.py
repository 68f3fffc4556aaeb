"""`storage.maildir`: durable local delivery into Dovecot-compatible Maildirs.

Layout (docs/storage-maildir.md): a recipient `Local+tag@Example.ORG` is
stored in `PATH/example.org/local/` (local part PRECIS-case-folded,
sub-address dropped, domain lowercased in A-labels), one file per message
in `new/`, named `SECONDS.M<µs>P<pid>Q<n>R<random>.<host>,S=<size>,W=<vsize>`
so Dovecot can trust both sizes without reading the file.

Strategy (durability). A 250 is a promise, so nothing is visible before it
is on disk and nothing is reported done before it is:

* `body()` writes one file per mailbox into `tmp/` (`O_EXCL`, 0600), the
  body streamed from the buffer in chunks, CR LF turned into LF on the way
  (the Maildir convention) with S and W counted as the bytes go out; then
  `fsync(file)`. Every error a full or broken disk can cause happens here,
  where it can still be answered `452`/`451` and the files removed.
* `commit()` hard-links each file into `new/` under its final name (a
  `rename` where links are unsupported), unlinks the `tmp/` name, then
  fsyncs every `new/` and `tmp/` directory touched, and only then returns:
  the endpoint says 250 after that. A crash before the link leaves at most
  a stray `tmp/` file (Dovecot removes those after 36 hours); a crash after
  it, a delivered message.
* Directories we create (`auto_create`, the `.Junk` folder) have their
  parents fsynced as well, or a crash could lose a whole new mailbox with
  the message in it.

Strategy (threads). Every file-system call runs on a dedicated
`ThreadPoolExecutor`, so a slow disk never stalls the event loop. One job
writes all of a message's files: the buffer is read once and each converted
chunk goes to every recipient's file. Pool size: an fsync mostly waits for
the device, and fsyncs issued together share journal commits, so throughput
grows with the threads waiting at once until the device saturates. On the
development VM (ext4 on virtio, 2 vCPUs) a bare file+directory fsync loop
does 1,600/s with 1 thread, 4,000/s with 4, 4,800/s with 8, 5,000-5,400/s
with 16-32, no more with 64; through this module (`bench/maildir.py
--pool-sizes`, 10 KiB, 50 concurrent, fsync on) 2 threads give
820-1,020/s and 4-32 threads 870-1,190/s, where the interpreter, not the
disk, is the limit. Hence `POOL_SIZE` = 16 per block: enough waiting fsyncs
to saturate a disk slower than this one, past which 32 and 64 bought
nothing. The shared default executor (6 threads here) is not used, so
deliveries and other modules' work never queue behind each other.

The blocking file work itself (names, streaming with exact sizes, write,
fsync, link, rename, error mapping) is in `maildir_files.py`, which runs
only on the worker threads; this module is the configuration, the mailbox
names and the delivery objects that schedule that work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kittiwake import address, metrics
from kittiwake.background import stop_task
from kittiwake.config.directives import Directives
from kittiwake.errors import SMTPError
from kittiwake.message import MsgMeta
from kittiwake.message.buffer import Buffer
from kittiwake.message.header import Header
from kittiwake.module import Module, register
from kittiwake.storage.maildir_agents import AgentPool, Request
from kittiwake.storage.maildir_files import (
    _DIR_MODE,
    _FILE_MODE,
    Mailbox,
    _commit,
    _File,
    _io_error,
    _Job,
    _unlink_all,
    is_maildir,
    sweep_stale_tmp,
    write_and_publish,
)
from kittiwake.targets.base import StatusCollector
from kittiwake.workers import FilePool

__all__ = ["POOL_SIZE", "Mailbox", "MaildirDelivery", "MaildirStorage", "encode_host"]

T = TypeVar("T")

#: Worker threads per `storage.maildir` block; see the module docstring.
POOL_SIZE = 16
#: Delivery agents per storage block (and worker process) at most. On the
#: development VM (2 vCPUs, 50 sessions, one message each) 8 agents gave
#: 1,990-2,240 messages a second, 4 gave 1,850-1,880, 16 1,890-1,960 and 32
#: 1,850-1,980: past 8 the agents queue on the same directory locks and
#: cost more CPU per message (docs/storage-maildir.md, "Delivery agents").
AGENTS = 8
#: The largest body in memory handed to an agent as a copy (the default
#: `buffer auto 1M` keeps no larger one in memory).
AGENT_COPY_MAX = 1024 * 1024
#: How long a mailbox seen to exist is taken to exist (seconds), and how
#: many such mailboxes are remembered (`known_mailbox`).
KNOWN_FOR = 10.0
KNOWN_MAX = 10_000
#: How often stale tmp/ files are looked for after the sweep at start.
SWEEP_INTERVAL = 24 * 3600.0
_MAX_NAME = 255  # one file-name component, in bytes


# --- replies -----------------------------------------------------------------


def _invalid_name(reason: str) -> SMTPError:
    return SMTPError(553, (5, 1, 3), "Invalid mailbox name", reason=reason)


def _no_such_user(reason: str) -> SMTPError:
    return SMTPError(550, (5, 1, 1), "User does not exist", reason=reason)


# --- mailbox names -----------------------------------------------------------


def _check_component(part: str, what: str) -> None:
    """A name that is one safe directory component (docs/storage-maildir.md).

    A leading dot is refused too: Maildir++ keeps folders (`.Junk`) there,
    and `..` must never climb out of the tree.
    """
    if not part:
        raise _invalid_name(f"empty {what}")
    if "/" in part or "\0" in part:
        raise _invalid_name(f"{what} {part!r} contains '/' or NUL")
    if part.startswith("."):
        raise _invalid_name(f"{what} {part!r} starts with a dot")
    if len(part.encode("utf-8", "surrogatepass")) > _MAX_NAME:
        raise _invalid_name(f"{what} longer than {_MAX_NAME} bytes")


def _mailbox_local(local: str) -> str:
    """The folder form of a local part: PRECIS case-mapped (docs/storage-maildir.md).

    PRECIS has no room for a space, which an RFC 5321 quoted local part may
    hold (`"john doe"@example.org`). An ASCII local part it refuses can only
    be refused for that, so it is lowercased instead: such an address is
    valid mail, and is answered like any other mailbox, present or not.
    """
    try:
        return address.precis_casefold(local)
    except ValueError:
        if not local.isascii():
            raise
        return local.lower()


def resolve_mailbox(root: str, rcpt: str) -> Mailbox:
    """The Maildir of recipient `rcpt` under `root` (docs/storage-maildir.md).

    Pure computation, no file-system access. Raises `SMTPError`: `553 5.1.3`
    for a name that cannot be a mailbox, `550 5.1.1` for a bare `postmaster`
    (no domain: an alias must route it first).
    """
    try:
        local, domain = address.split(rcpt)
    except ValueError as exc:
        raise _invalid_name(str(exc)) from None
    if not domain:
        raise _no_such_user(f"{rcpt!r} has no domain")
    try:
        local = _mailbox_local(local)
        domain = address.to_alabel_domain(address.normalize_domain(domain))
    except ValueError as exc:  # AddressError and UnicodeError are ValueErrors
        raise _invalid_name(f"{rcpt!r}: {exc}") from None
    base, _tag = address.split_subaddress(local)
    _check_component(domain, "domain")
    _check_component(base, "local part")
    return Mailbox(os.path.join(root, domain, base), f"{local}@{domain}")


def encode_host(host: str) -> str:
    """The host part of a Maildir file name: `/` and `:` cannot appear in it."""
    return host.replace("/", "\\057").replace(":", "\\072")


def _format_address(addr: str) -> str:
    """`addr` in RFC 5322 syntax (local part quoted if needed), never with CR/LF."""
    text = addr
    with contextlib.suppress(ValueError):
        local, domain = address.split(addr)
        text = address.quote_local_part(local) + (f"@{domain}" if domain else "")
    return text.replace("\r", "").replace("\n", "")


# --- the delivery ------------------------------------------------------------


class MaildirDelivery:
    """One message's delivery into one or more mailboxes (docs/storage-maildir.md)."""

    def __init__(self, storage: MaildirStorage, meta: MsgMeta, mail_from: str) -> None:
        self._storage = storage
        self._meta = meta
        self._mail_from = mail_from
        self._files: dict[str, _File] = {}  # mailbox path -> its copy
        self._prepared: list[_File] = []
        self._job: _Job | None = None
        self._future: concurrent.futures.Future[Any] | None = None
        self._cancel = threading.Event()
        self._body_called = False
        #: Where per-recipient outcomes go (LMTP), set by body_non_atomic.
        self._status: StatusCollector | None = None

    async def add_rcpt(self, rcpt: str) -> None:
        mailbox = resolve_mailbox(self._storage.path, rcpt)
        known = self._files.get(mailbox.path)
        if known is not None:  # one copy per mailbox (docs/storage-maildir.md)
            if rcpt not in known.rcpts:
                known.rcpts.append(rcpt)
            return
        exists = self._storage.known_mailbox(mailbox.path)
        if not exists:
            exists = await self._storage.run(self._storage.find_mailbox, mailbox)
            if exists:
                self._storage.remember_mailbox(mailbox.path)
        if not exists:
            self._storage.take_creation(self._meta, mailbox)
        self._files[mailbox.path] = _File(mailbox, [rcpt], create=not exists)

    async def body(self, header: Header, body: Buffer) -> None:
        """All or nothing: every copy is in tmp/ and synced, or none exists."""
        job = self._start_body(header, body, atomic=True)
        if job is not None:
            try:
                await self._in_thread(job.run)
            finally:
                self._log_created(job)
            self._prepared = list(job.files)

    async def body_non_atomic(self, status: StatusCollector, header: Header, body: Buffer) -> None:
        """Each mailbox on its own; a failure is reported for its recipients only."""
        job = self._start_body(header, body, atomic=False)
        if job is None:
            return
        self._status = status  # commit reports each mailbox's outcome here too
        try:
            await self._in_thread(job.run)
        except Exception as exc:  # the buffer could not be read: it is everyone's
            self._storage.log.error("delivery failed", err=exc, msg_id=self._meta.id)
            for f in job.files:
                f.error = f.error or exc
        finally:
            self._log_created(job)
        for f in job.files:
            if f.error is not None:
                for rcpt in f.rcpts:
                    status.set_status(rcpt, f.error)
        self._prepared = [f for f in job.files if f.error is None]

    def _log_created(self, job: _Job) -> None:
        for path in job.new_mailboxes:
            self._storage.log.info("mailbox created", path=path, msg_id=self._meta.id)
        job.new_mailboxes.clear()

    def _start_body(self, header: Header, body: Buffer, *, atomic: bool) -> _Job | None:
        if self._body_called:
            raise RuntimeError("body was already called for this delivery")
        self._body_called = True
        if not self._files:
            return None
        # RFC 5321 §4.4: the final delivery records the envelope sender.
        return_path = _format_address(self._mail_from)
        files = list(self._files.values())
        for f in files:
            delivered_to = _format_address(f.mailbox.recipient)
            text = f"Return-Path: <{return_path}>\nDelivered-To: {delivered_to}\n"
            f.prefix = text.encode("utf-8", "replace")
        self._job = _Job(
            files=files,
            header=header.to_bytes(),
            body=body,
            host=self._storage.host,
            sync=self._storage.fsync,
            junk=self._meta.quarantine,  # final at body time (docs/flow.md, "6. Targets")
            atomic=atomic,
            cancel=self._cancel,
        )
        return self._job

    async def commit(self) -> None:
        """Publish into new/ and fsync; returns only once the messages are durable.

        After `body` (all or nothing) a copy that did not make it raises,
        though the others are delivered: the client is told `451` and its
        retry duplicates them, which loses nothing (docs/storage-maildir.md,
        "Errors"). After `body_non_atomic` each mailbox's outcome goes to
        its recipients' statuses instead, so LMTP tells each the truth.
        """
        files, self._prepared = self._prepared, []
        if not files:
            return
        storage = self._storage
        try:
            failed = await self._in_thread(_commit, files, storage.host, storage.fsync)
        finally:
            if self._job is not None:
                self._job.created.clear()
        self._report_commit(files, failed)

    async def body_and_commit(self, header: Header, body: Buffer) -> None:
        """`body` then `commit` in one trip to the threads (the message's only
        delivery, targets/base.py): the same files, fsyncs and errors."""
        job = self._start_body(header, body, atomic=True)
        if job is None:
            return
        storage = self._storage
        # A body in a file is read by the agent there; one in memory is
        # copied to it, up to AGENT_COPY_MAX (`buffer ram` may hold tens of
        # megabytes, which the threads stream instead of copying).
        if storage.agents is not None and (not body.in_memory or len(body) <= AGENT_COPY_MAX):
            await self._in_agent(storage.agents, job, body)
            return
        try:
            failed = await self._in_thread(write_and_publish, job, storage.host, storage.fsync)
        finally:
            self._log_created(job)
        self._report_commit(job.files, failed)

    async def _in_agent(self, agents: AgentPool, job: _Job, body: Buffer) -> None:
        """`body_and_commit`'s work in a delivery agent (maildir_agents.py).

        The agent runs the same `write_and_publish` on a copy of the job and
        sends back the files as it left them, or the error. (A reply saying
        the agent was cancelled goes to the pool, never here: only a caller
        that is itself cancelled sends the cancel.)
        """
        storage = self._storage
        request = Request.of(job, body.memory(), body.path)
        reply = await agents.call(request)
        job.new_mailboxes = reply.new_mailboxes
        self._log_created(job)
        if reply.error is not None:
            if isinstance(reply.error, OSError):
                raise _io_error(reply.error, f"maildir {storage.path}")
            raise reply.error
        reply.update(job.files)
        self._report_commit(job.files, reply.failed)

    def _report_commit(self, files: list[_File], failed: dict[int, OSError]) -> None:
        """Log and raise (or report per recipient) what `_commit` says failed."""
        storage = self._storage
        first: SMTPError | None = None
        for i, exc in sorted(failed.items()):
            f = files[i]
            error = _io_error(exc, f"maildir commit into {f.folder}")
            storage.log.error(
                "commit failed", reason=error.reason, msg_id=self._meta.id, rcpt=f.rcpts[0]
            )
            if self._status is not None:
                for rcpt in f.rcpts:
                    self._status.set_status(rcpt, error)
            first = first or error
        if first is not None and self._status is None:
            raise first
        stored = [r for i, f in enumerate(files) if i not in failed for r in f.rcpts]
        if stored:  # one line per message and target: who got it (docs/logging.md)
            storage.log.info("delivered", msg_id=self._meta.id, rcpts=",".join(stored))

    async def abort(self) -> None:
        """Remove every prepared tmp/ file; safe at any point, and repeatable.

        A delivery agent told to stop removes its own files: nothing to wait
        for here (maildir_agents.py).
        """
        self._cancel.set()
        self._prepared = []
        future = self._future
        if future is not None and not future.done():
            # body() was cancelled while its thread kept writing: let it stop
            # at the next chunk (it cleans up after itself) before looking.
            waiter = asyncio.wrap_future(future)
            await asyncio.wait([waiter])
            if not waiter.cancelled():
                waiter.exception()  # seen: it was body()'s to report
        job = self._job
        if job is not None and job.created:
            leftovers = list(job.created)
            job.created.clear()
            await self._storage.run(_unlink_all, leftovers)

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        future = self._storage.pool().submit(fn, *args)
        self._future = future
        return await asyncio.wrap_future(future)


# --- the module --------------------------------------------------------------


@register("storage.maildir")
class MaildirStorage(Module):
    """`storage.maildir NAME { path DIR; auto_create BOOL; fsync BOOL }`.

    A delivery target (`deliver_to &NAME`) and a table (`destination_in
    &NAME`: found iff the recipient's mailbox exists).
    """

    def configure(self, cfg: Directives) -> None:
        if self.inline_args:
            raise cfg.node.error(f"{self.module_name} takes no arguments: use its block")
        self._node = cfg.node
        path = cfg.string("path", default="maildir")
        if not path:
            raise cfg.node.error("path: must not be empty")
        # Relative paths are inside state_dir (docs/storage-maildir.md).
        self.path = os.path.abspath(self.container.state_path(path))
        self.auto_create = cfg.boolean("auto_create", default=False)
        # kittiwake's own (docs/storage-maildir.md): new mailboxes per session.
        self.auto_create_limit = cfg.integer("auto_create_limit", 20, minimum=0)
        self.fsync = cfg.boolean("fsync", default=True)
        # kittiwake's own (docs/storage-maildir.md, "Delivery agents").
        agents = cfg.integer("delivery_agents", AGENTS, minimum=0)
        cfg.finish()
        self.agents = (
            AgentPool(agents, self.log, self.instance_name or self.module_name) if agents else None
        )
        # The machine's own name, not the `hostname` directive, so two servers
        # sharing a tree never produce one name (docs/storage-maildir.md).
        self.host = encode_host(socket.gethostname())
        self._threads = FilePool(POOL_SIZE, "kittiwake-maildir")
        self._sweeper: asyncio.Task[None] | None = None
        #: Mailboxes seen to exist, until when (`time.monotonic()`).
        self._known: dict[str, float] = {}

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return self._threads.executor()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking file-system work on this block's threads."""
        return await self._threads.run(fn, *args)

    async def start(self) -> None:
        try:
            await self.run(self._prepare_root)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise self._node.error(
                f"{self.module_name}: cannot use path {self.path}: {reason}"
            ) from None
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        agents = self.agents
        if agents is not None:
            metrics.current().watch_maildir_agents(agents.name, lambda: agents.running)

    async def _sweep_forever(self) -> None:
        """Remove stale tmp/ files now (in the background) and once a day after.

        A delivery killed between writing its tmp/ file and linking it into
        new/ leaves the file behind; the Maildir convention is to remove
        such files after 36 hours (docs/storage-maildir.md).
        """
        while True:
            try:
                removed = await self.run(sweep_stale_tmp, self.path, time.time())
            except Exception as exc:
                self.log.error("sweeping stale tmp/ files failed", err=exc)
            else:
                if removed:
                    self.log.info("removed stale tmp/ files", count=removed)
            await asyncio.sleep(SWEEP_INTERVAL)

    def _prepare_root(self) -> None:
        """Create `path` (0700) and prove files can be created in it."""
        os.makedirs(self.path, mode=_DIR_MODE, exist_ok=True)
        if not os.path.isdir(self.path):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        probe = os.path.join(self.path, f".kittiwake-probe-{secrets.token_hex(8)}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        os.unlink(probe)

    async def stop(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        await stop_task(sweeper)
        # Waits for commits in flight: their clients are owed a reply.
        if self.agents is not None:
            await self.agents.stop()
        await self._threads.shutdown()

    async def start_delivery(self, meta: MsgMeta, mail_from: str) -> MaildirDelivery:
        return MaildirDelivery(self, meta, mail_from)

    def find_mailbox(self, mailbox: Mailbox) -> bool:
        """The recipient check of add_rcpt (worker thread): does it exist?

        Missing is fine with `auto_create` (False: create it when the
        message comes) and `550 5.1.1` without. Only a mailbox that is not
        there is 5.1.1; a failure to look (permissions, I/O) is temporary
        (`451 4.3.0`), never a bounce.
        """
        try:
            if is_maildir(mailbox.path):
                return True
        except OSError as exc:
            raise _io_error(exc, f"looking up {mailbox.path}") from exc
        if not self.auto_create:
            raise _no_such_user(f"no Maildir at {mailbox.path}")
        return False

    def known_mailbox(self, path: str) -> bool:
        """Whether `path` was seen to be a mailbox within `KNOWN_FOR` seconds.

        Mail for one mailbox tends to come in runs, and each look costs a
        trip to the file threads at every RCPT. A mailbox removed within
        the window costs nothing worse than a temporary failure: the
        message's file cannot be made in its `tmp/` (`451`), and the
        client's retry finds it gone.
        """
        until = self._known.get(path)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._known[path]
        return False

    def remember_mailbox(self, path: str) -> None:
        if len(self._known) >= KNOWN_MAX:
            self._known.clear()  # a flood of distinct mailboxes: start afresh
        self._known[path] = time.monotonic() + KNOWN_FOR

    def take_creation(self, meta: MsgMeta, mailbox: Mailbox) -> None:
        """Count a mailbox this client's session will have created; refuse past the cap.

        `auto_create_limit` bounds how many new mailboxes one session may
        ask for, so a client cannot fill the disk with empty mailboxes by
        naming thousands of recipients. Past it the recipient is refused
        with a temporary error: a real sender retries in a new session.
        Messages kittiwake makes itself (no session) have no cap.
        """
        conn = meta.conn
        if conn is None or not self.auto_create_limit:
            return
        used = conn.module_data.get(self, 0)
        assert isinstance(used, int)
        if used >= self.auto_create_limit:
            raise SMTPError(
                451,
                (4, 2, 0),
                "Too many new mailboxes in one session, try again later",
                reason=f"auto_create_limit {self.auto_create_limit} reached: {mailbox.path}",
            )
        conn.module_data[self] = used + 1

    async def lookup(self, key: str) -> str | None:
        """Table view: `""` iff the key's mailbox exists. Never creates one."""
        try:
            mailbox = resolve_mailbox(self.path, key)
        except SMTPError:
            return None
        try:
            found = await self.run(is_maildir, mailbox.path)
        except OSError as exc:
            raise _io_error(exc, f"looking up {mailbox.path}") from exc
        return "" if found else None
