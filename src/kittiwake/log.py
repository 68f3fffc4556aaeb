"""One line per event: `key=value` text or JSON.

Every module gets a named logger (`table.file/aliases`); what it logs is a
short message plus fields, so operators can grep and machines can parse.
Output targets are global (the `log` directive): stderr (without timestamps,
since a service manager adds its own), `stderr_ts`, `syslog`, files, or off.
Writes are synchronous: lines are small, and losing log lines under load is
worse than a few microseconds.

Several processes may write to one target (worker processes,
docs/workers.md: the same file, or the stderr pipe a service manager
reads). Each write is therefore whole lines in one `write(2)` call, at
most `PIPE_BUF` bytes to a pipe (the kernel keeps such a write in one
piece) and at most `FILE_CHUNK` to a file opened for appending (each
write lands at the end in one piece): lines of two processes never mix.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import json
import os
import select
import stat
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, TextIO

LEVELS = ("debug", "info", "warn", "error")
#: Largest single write to a file opened with O_APPEND.
FILE_CHUNK = 1 << 20


@dataclass
class _Sink:
    kind: str  # "stderr", "stderr_ts", "syslog", "file"
    path: str = ""
    stream: TextIO | None = None
    pending: list[str] = field(default_factory=list)
    #: (descriptor, largest write) of the last write: one fstat per target.
    limit: tuple[int, int] = (-1, 0)

    #: Whether its lines start with a timestamp (set from `kind`).
    timestamps: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.timestamps = self.kind in ("stderr_ts", "file")


@dataclass
class _Output:
    sinks: list[_Sink] = field(default_factory=lambda: [_Sink("stderr")])
    json: bool = False
    debug: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    loop: asyncio.AbstractEventLoop | None = None
    loop_thread: int = 0
    flush_scheduled: bool = False


_out = _Output()


def _format_value(v: object) -> str:
    """A value as it stands in a `key=value` line, quoted (JSON) when it must be.

    Several lines per message are formatted on the event loop, so the
    common values take the short way: numbers as they print, strings
    checked with `in`, which beats a regular expression for short text.
    """
    kind = type(v)
    if kind is int:
        return str(v)
    s = v if isinstance(v, str) else str(v)
    if not s:
        return '""'
    if " " in s or '"' in s or "=" in s or "\\" in s or not s.isprintable():
        return json.dumps(s, ensure_ascii=False)
    return s


def format_line(
    level: str, name: str, msg: str, fields: dict[str, Any], *, as_json: bool, ts: str = ""
) -> str:
    """Render one event; exposed for tests."""
    if as_json:
        record: dict[str, Any] = {}
        if ts:
            record["ts"] = ts
        record.update(level=level, module=name, msg=msg)
        for k, v in fields.items():
            record[k] = v if isinstance(v, (int, float, bool, type(None), list, dict)) else str(v)
        return json.dumps(record, ensure_ascii=False, default=str)
    parts = [ts, level] if ts else [level]
    if name:
        parts.append(name + ":")
    parts.append(msg)
    known = _formatted
    parts += [
        (known.get(field) or _kept(field))
        if type(field[1]) is str
        else f"{field[0]}={_format_value(field[1])}"
        for field in fields.items()
    ]
    return " ".join(parts)


#: Fields with a short string value as formatted (`key=value`), kept: the
#: same addresses, names and replies come back line after line, and
#: checking a value for what must be quoted costs as much as the rest of
#: its field. Bounded.
_formatted: dict[tuple[str, str], str] = {}
_KEEP = 256
_KEEP_LEN = 200


def _kept(field: tuple[str, str]) -> str:
    """`key=value` for a field, kept in `_formatted` when the value is short."""
    key, value = field
    text = f"{key}={_format_value(value)}"
    if len(value) <= _KEEP_LEN:
        if len(_formatted) >= _KEEP:
            _formatted.clear()
        _formatted[field] = text
    return text


def _emit(level: str, name: str, msg: str, fields: dict[str, Any]) -> None:
    with _out.lock:
        batch = _out.loop is not None and threading.get_ident() == _out.loop_thread
        ts = ""
        for sink in _out.sinks:
            if sink.timestamps:
                if not ts:
                    ts = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
                line = format_line(level, name, msg, fields, as_json=_out.json, ts=ts)
            else:
                line = format_line(level, name, msg, fields, as_json=_out.json)
            if sink.kind == "syslog":
                _syslog(level, line)
            elif batch:
                sink.pending.append(line)
            else:
                _write(sink, [line])
        if batch and not _out.flush_scheduled and _out.loop is not None:
            _out.flush_scheduled = True
            _out.loop.call_soon(flush)


def _write(sink: _Sink, lines: list[str]) -> None:
    stream = sink.stream if sink.stream is not None else sys.stderr
    try:
        stream.flush()  # whatever else was written to it goes first
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        fd = -1  # not a real file (a test's capture): its own write will do
    try:
        if fd < 0:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
            return
        if sink.limit[0] != fd:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            sink.limit = (fd, FILE_CHUNK if regular else select.PIPE_BUF)
        for chunk in chunks(lines, sink.limit[1]):
            write_all(fd, chunk)
    except (OSError, ValueError):
        pass  # a broken log target must never take a session down


def chunks(lines: list[str], limit: int) -> list[bytes]:
    """`lines`, each ending in a newline, packed into pieces of at most `limit`
    bytes that split only between lines (a longer line is a piece of its own)."""
    pieces: list[bytes] = []
    current = bytearray()
    for line in lines:
        data = (line + "\n").encode("utf-8", "replace")
        if current and len(current) + len(data) > limit:
            pieces.append(bytes(current))
            current.clear()
        current += data
    if current:
        pieces.append(bytes(current))
    return pieces


def write_all(fd: int, data: bytes) -> None:
    """One `write` for `data` in the usual case; the rest again after a short one."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def flush() -> None:
    """Write the lines gathered during this turn of the event loop."""
    with _out.lock:
        _out.flush_scheduled = False
        for sink in _out.sinks:
            if sink.pending:
                lines, sink.pending = sink.pending, []
                _write(sink, lines)


def attach_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Gather lines logged on `loop`'s thread and write them once per turn.

    Under load many sessions log in the same turn of the loop: one write
    instead of one per line. Nothing waits longer than the current turn.
    `None` detaches and writes what is pending.
    """
    flush()
    with _out.lock:
        _out.loop = loop
        _out.loop_thread = threading.get_ident()


def _syslog(level: str, line: str) -> None:
    import syslog

    prio = {"debug": syslog.LOG_DEBUG, "info": syslog.LOG_INFO, "warn": syslog.LOG_WARNING}
    syslog.syslog(prio.get(level, syslog.LOG_ERR), line)


class Logger:
    """A named logger. `debug` can be switched on per module."""

    __slots__ = ("_debug", "name")

    def __init__(self, name: str, debug: bool | None = None) -> None:
        self.name = name
        self._debug = debug

    @property
    def debug_enabled(self) -> bool:
        return _out.debug if self._debug is None else self._debug

    @debug_enabled.setter
    def debug_enabled(self, value: bool) -> None:
        self._debug = value

    def debug(self, msg: str, **fields: Any) -> None:
        if self.debug_enabled:
            _emit("debug", self.name, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        _emit("info", self.name, msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        _emit("warn", self.name, msg, fields)

    def error(self, msg: str, err: BaseException | None = None, **fields: Any) -> None:
        """An error; with `err`, its type, text and where it was raised.

        `where` (file:line function of the innermost frame) stays on the one
        line, so a bug report from a log names the code without a
        multi-line traceback in the middle of the key=value stream; with
        debug on, the whole traceback comes too, escaped onto that line.
        """
        if err is not None:
            extra: dict[str, Any] = {"reason": f"{type(err).__name__}: {err}"}
            where = _raised_at(err)
            if where:
                extra["where"] = where
            if self.debug_enabled and err.__traceback__ is not None:
                # Escaped like every value, so it stays on the one line.
                extra["traceback"] = "".join(traceback.format_exception(err)).rstrip()
            fields = {**extra, **fields}
        _emit("error", self.name, msg, fields)


def _raised_at(err: BaseException) -> str:
    """`file.py:LINE function` of the frame that raised `err`, "" without a traceback."""
    tb = err.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} {code.co_name}"


def get(name: str) -> Logger:
    return Logger(name)


def configure(targets: list[str], *, fmt: str = "text", debug: bool = False) -> None:
    """Point every logger at `targets` (the `log` directive's words)."""
    sinks: list[_Sink] = []
    for t in targets:
        if t == "off":
            continue
        if t in ("stderr", "stderr_ts", "syslog"):
            sinks.append(_Sink(t))
        else:
            sinks.append(_Sink("file", path=t, stream=_open(t)))
    flush()
    with _out.lock:
        _close_files(_out.sinks)
        _out.sinks = sinks
        _out.json = fmt == "json"
        _out.debug = debug


def check_targets(targets: list[str]) -> None:
    """Raise `OSError` for a log file that could not be opened, touching nothing.

    What `config check` runs instead of `configure`: a file is writable if
    it exists and may be written, or if its folder exists and may be
    written in.
    """
    for t in targets:
        if t in ("off", "stderr", "stderr_ts", "syslog"):
            continue
        folder = os.path.dirname(os.path.abspath(t))
        if os.path.exists(t):
            if os.path.isdir(t):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), t)
            if not os.access(t, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), t)
        elif not os.path.isdir(folder):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), t)
        elif not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), t)


def reopen() -> None:
    """Reopen log files (SIGHUP), so rotation tools can move them away."""
    flush()
    with _out.lock:
        for sink in _out.sinks:
            if sink.kind == "file":
                old = sink.stream
                sink.stream = _open(sink.path)
                sink.limit = (-1, 0)
                if old is not None:
                    old.close()


def _open(path: str) -> TextIO:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


def _close_files(sinks: list[_Sink]) -> None:
    for sink in sinks:
        if sink.kind == "file" and sink.stream is not None:
            sink.stream.close()
