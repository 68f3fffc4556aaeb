"""A throw-away endpoint that only references delivery targets and tables.

Unit tests build a module from configuration text, as the server does; a
module only runs when something references it, so the text names this
endpoint (`deliver_to &NAME`, `table &NAME`) and the test takes the built
modules from it (`probe.targets`, `probe.tables`). `registered(NAME)`
makes it available under NAME for one test module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kittiwake.config.directives import Directives
from kittiwake.module import Endpoint, register, unregister
from kittiwake.tables.base import Table
from kittiwake.targets.base import DeliveryTarget


class TargetProbe(Endpoint):
    def configure(self, cfg: Directives) -> None:
        self.targets: list[Any] = cfg.modules("deliver_to", DeliveryTarget, "target")
        self.tables: list[Any] = cfg.modules("table", Table, "table")
        cfg.finish()

    def addresses(self) -> list[str]:
        return []


@contextmanager
def registered(name: str) -> Iterator[None]:
    register(name)(TargetProbe)
    try:
        yield
    finally:
        unregister(name)
