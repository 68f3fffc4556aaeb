"""Fixtures for pipeline tests: fake modules registered once, clean records per test."""

from __future__ import annotations

from collections.abc import Iterator

import pipefakes
import pytest


@pytest.fixture(autouse=True, scope="session")
def _fakes_registered() -> Iterator[None]:
    pipefakes.register_all()
    yield
    pipefakes.unregister_all()


@pytest.fixture(autouse=True)
def _clean_records() -> Iterator[None]:
    pipefakes.FAKES.clear()
    pipefakes.EVENTS.clear()
    yield
    pipefakes.FAKES.clear()
    pipefakes.EVENTS.clear()
