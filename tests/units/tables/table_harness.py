"""Build table modules the way the server does: config text -> parser -> container.

`kw_probe` is a throw-away endpoint whose only job is to reference tables:
`table X` (any table) and `mutable X` (a table that must be mutable), so
every test goes through parsing, named blocks, `&references`, inline
definitions, capability checks, `configure`, `start` and `stop`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kittiwake.config.directives import Directives
from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.errors import ConfigError
from kittiwake.module import Endpoint
from kittiwake.tables.base import MutableTable, Table

PROBE = "kw_probe"


class Probe(Endpoint):
    def configure(self, cfg: Directives) -> None:
        self.tables: list[Any] = cfg.modules("table", Table, "table")
        self.mutable: list[Any] = cfg.modules("mutable", MutableTable, "table")
        cfg.finish()

    def addresses(self) -> list[str]:
        return []


class Harness:
    """Configures and starts containers in a temporary directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.containers: list[Container] = []

    def configure(self, text: str, file: str = "t.conf") -> Probe:
        """Parse and configure a whole configuration; return its probe."""
        container = Container(parse_text(text, file), config_file=file, cwd=str(self.dir))
        container.build()
        container.prepare_dirs()
        self.containers.append(container)
        (probe,) = container.endpoints
        assert isinstance(probe, Probe)
        return probe

    async def start(self, text: str) -> Probe:
        probe = self.configure(text)
        await self.containers[-1].start()
        return probe

    async def table(self, definition: str) -> Any:
        """Start `kw_probe { table DEFINITION }` and return that one table."""
        probe = await self.start(f"{PROBE} {{\n table {definition}\n}}\n")
        (table,) = probe.tables
        return table

    def error(self, text: str) -> str:
        """The `FILE:LINE: message` of the ConfigError `text` raises in configure."""
        with pytest.raises(ConfigError) as info:
            self.configure(text)
        return str(info.value)

    async def start_error(self, text: str) -> str:
        """Like `error`, for errors found when the modules start."""
        with pytest.raises(ConfigError) as info:
            await self.start(text)
        return str(info.value)

    async def stop_all(self) -> None:
        while self.containers:
            await self.containers.pop().stop()
