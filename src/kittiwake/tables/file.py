"""`table.file`: an aliases-style text file, kept in memory and reloaded.

Strategy: lookups must never touch the disk (they run on the event loop), so
the whole file is parsed into a dict and lookups read whichever dict is
current. A background task polls the file; when it has changed and has not
been written to for a while (so an editor that is still writing is not
caught half way), it is parsed again in a worker thread and the new dict
replaces the old one in a single assignment. A file that no longer parses
keeps the previous content: a typo in the aliases file must not silently
drop every alias. A deleted file empties the table, as maddy does.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from kittiwake.background import stop_task
from kittiwake.config.directives import Directives
from kittiwake.errors import ConfigError
from kittiwake.module import Module, register

Mapping = dict[str, list[str]]

# Go's strings.TrimSpace trims Unicode white space; Python's str.strip also
# strips the ASCII separators U+001C..U+001F, which Go keeps.
_SPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and not "\x1c" <= c <= "\x1f")


class TableFileError(ValueError):
    """A syntax error in a table file, with its position."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


def parse_table_text(text: str, path: str) -> Mapping:
    """Parse the file format of maddy's `table.file` (docs/tables.md, "`file`").

    Only `\\n` ends a line (a trailing `\\r` is dropped), like Go's line
    scanner; `str.splitlines` would also split on form feeds and the like.
    """
    result: Mapping = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r")
        # Only a '#' in the very first column starts a comment.
        if line.startswith("#"):
            continue
        line = line.strip(_SPACE)
        if not line:
            continue
        key, _, rest = line.partition(":")
        key = key.strip(_SPACE)
        if not key:
            raise TableFileError(path, number, "empty address before colon")
        # No colon and "key:" both give one empty value: the key exists.
        result.setdefault(key, []).extend(item.strip(_SPACE) for item in rest.split(","))
    return result


def read_table_file(path: str) -> Mapping:
    """Read and parse `path`; blocking, so call it from a worker thread."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    return parse_table_text(text, path)


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What identifies one version of the file on disk.

    The inode and size are compared along with the mtime so that a file
    replaced by one with an older mtime (`cp -p`, `rsync -t`) still counts
    as changed.
    """

    mtime_ns: int
    size: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stamp:
        return cls(st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


@dataclass(frozen=True, slots=True)
class _Outcome:
    kind: str  # "unchanged", "settling", "missing", "loaded", "error"
    mapping: Mapping | None = None
    stamp: _Stamp | None = None
    error: BaseException | None = None


@register("table.file")
class FileTable(Module):
    """`file PATH` or `file { file PATH }`."""

    #: How often the file is checked, in seconds (maddy: 15 s).
    poll_interval: float = 15.0
    #: How long the file must have been left alone before it is re-read
    #: (maddy: half the poll interval).
    settle_time: float = 7.5

    def configure(self, cfg: Directives) -> None:
        if len(self.inline_args) > 1:
            raise cfg.node.error(
                f"{self.module_name}: expected one file path, got {len(self.inline_args)} "
                f"arguments; use several {self.module_name} tables (e.g. in a chain) "
                "for several files"
            )
        if cfg.has("debug"):
            self.log.debug_enabled = cfg.boolean("debug")
        file_node = cfg.get("file")
        cfg.finish()
        path: str
        if file_node is not None:
            if self.inline_args:
                raise file_node.error(
                    f"{self.module_name}: the file path is given both as an argument "
                    "and in the block; give it once"
                )
            if file_node.children is not None or len(file_node.args) != 1:
                raise file_node.error("file: expected exactly one path")
            path = file_node.args[0]
        elif self.inline_args:
            path = self.inline_args[0]
        else:
            raise cfg.node.error(f"{self.module_name}: a file path is required")
        if not path:
            raise cfg.node.error(f"{self.module_name}: the file path is empty")
        # maddy runs inside its state directory, so relative paths meet there.
        self.path = self.container.state_path(path)
        self._mapping: Mapping = {}
        self._stamp: _Stamp | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            st = os.stat(self.path)
            mapping = read_table_file(self.path)
        except FileNotFoundError:
            self.log.warn("ignoring non-existent file", path=self.path)
            return
        except TableFileError as exc:
            raise ConfigError(exc.message, exc.path, exc.line) from None
        except (OSError, UnicodeError) as exc:
            raise cfg.node.error(
                f"{self.module_name}: cannot read {self.path}: {_why(exc)}"
            ) from None
        self._mapping = mapping
        self._stamp = _Stamp.of(st)

    async def lookup(self, key: str) -> str | None:
        values = self._mapping.get(key)
        return values[0] if values else None

    async def lookup_multi(self, key: str) -> list[str]:
        return list(self._mapping.get(key, ()))

    # -- reloading --------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._reloader(), name=f"{self.module_name} reloader")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def reload(self, *, force: bool = False) -> None:
        """Check the file now; `force` re-reads it even if it looks unchanged."""
        outcome = await asyncio.to_thread(self._check, self._stamp, force)
        self._apply(outcome)

    async def _reloader(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the reloader must outlive any surprise
                self.log.error("reload failed", err=exc, path=self.path)

    def _check(self, known: _Stamp | None, force: bool) -> _Outcome:
        """Decide whether to re-read, and read; runs in a worker thread."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return _Outcome("missing")
        except OSError as exc:
            return _Outcome("error", error=exc)
        stamp = _Stamp.of(st)
        if not force:
            if stamp == known:
                return _Outcome("unchanged")
            if time.time() - st.st_mtime < self.settle_time:
                return _Outcome("settling")
        try:
            mapping = read_table_file(self.path)
            after = _Stamp.of(os.stat(self.path))
        except FileNotFoundError:
            return _Outcome("missing")
        except (OSError, UnicodeError, TableFileError) as exc:
            return _Outcome("error", error=exc, stamp=stamp)
        if after != stamp:
            # Written to while we read it: try again at the next poll.
            return _Outcome("settling")
        return _Outcome("loaded", mapping=mapping, stamp=stamp)

    def _apply(self, outcome: _Outcome) -> None:
        if outcome.kind == "missing":
            if self._stamp is not None or self._mapping:
                self.log.warn("file disappeared, table is now empty", path=self.path)
            self._mapping = {}
            self._stamp = None
        elif outcome.kind == "loaded":
            assert outcome.mapping is not None
            self._mapping = outcome.mapping
            self._stamp = outcome.stamp
            self.log.debug("reloaded", path=self.path, keys=len(outcome.mapping))
        elif outcome.kind == "error":
            assert outcome.error is not None
            self.log.error(
                "cannot reload, keeping the previous content",
                path=self.path,
                reason=_why(outcome.error),
            )
            # Remember the broken version so it is not re-parsed (and logged)
            # at every poll; the next change is picked up again.
            if outcome.stamp is not None:
                self._stamp = outcome.stamp


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
