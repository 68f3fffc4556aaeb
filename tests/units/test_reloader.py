"""cli/reloader.py in process: the drain bound, refusals, stopping (docs/reload.md).

The end-to-end behaviour is in tests/e2e/test_reload.py; here the
container runs in the test's own event loop, so the drain bound can be
made short.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import kittiwake.modules  # noqa: F401  (registers the built-in modules)
from kittiwake.cli import reloader
from kittiwake.cli.common import load_config
from kittiwake.container import Container
from kittiwake.control import ControlServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(path: Path, port: int, route: str = "deliver_to &mb") -> None:
    path.write_text(
        f"""state_dir {path.parent}/state
hostname mx.example.com
storage.maildir mb {{
    path {path.parent}/mail
    auto_create yes
}}
smtp tcp://127.0.0.1:{port} {{
    tls off
    {route}
}}
"""
    )


async def running(path: Path) -> tuple[Container, reloader.Reloader, list[str]]:
    container = Container(load_config(str(path)), config_file=str(path))
    container.build()
    container.prepare_dirs()
    await container.start()
    announced: list[str] = []
    control = ControlServer(container.control, container.runtime_path("control.sock"))
    return container, reloader.Reloader(container, control, announced.extend), announced


async def test_sessions_still_open_after_the_drain_bound_are_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reloader, "DRAIN_TIMEOUT", 0.3)
    path = tmp_path / "k.conf"
    port = free_port()
    write(path, port)
    old, reloads, _ = await running(path)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await reader.readline()).startswith(b"220 ")
        outcome = await reloads.reload("test")
        assert outcome.status == "reloaded"
        assert outcome.kept == [f"127.0.0.1:{port}"]
        assert reloads.current is not old
        # Idle on the old configuration: told once the bound has passed.
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"421 4.3.2 ")
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        await reloads.stop()


async def test_a_refused_reload_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "k.conf"
    port = free_port()
    write(path, port)
    old, reloads, announced = await running(path)
    try:
        write(path, port, route="deliver_to &nowhere")
        outcome = await reloads.reload("test")
        assert outcome.status == "config_error"
        assert outcome.error.startswith(f"{path}:")
        assert "nowhere" in outcome.error
        assert reloads.current is old
        assert announced == []
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

        added = free_port()
        path.write_text(
            path.read_text().replace("&nowhere", "&mb")
            + f"smtp tcp://127.0.0.1:{added} {{\n    tls off\n    deliver_to &mb\n}}\n"
        )
        outcome = await reloads.reload("test")
        assert (outcome.status, outcome.added) == ("reloaded", [f"127.0.0.1:{added}"])
        assert announced == [f"tcp://127.0.0.1:{added}"]
    finally:
        await reloads.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


async def test_no_reload_once_the_server_is_stopping(tmp_path: Path) -> None:
    path = tmp_path / "k.conf"
    write(path, free_port())
    _, reloads, _ = await running(path)
    await reloads.stop()
    outcome = await reloads.reload("test")
    assert (outcome.status, outcome.error) == ("failed", "the server is stopping")


async def test_the_heap_is_settled_once_the_old_configuration_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kittiwake/heap.py after a reload: what the old configuration left is
    collected and the new one kept out of collections, once the old one has
    stopped (not before: it is still alive while it drains)."""
    settled: list[bool] = []
    monkeypatch.setattr(reloader.heap, "settle", lambda: settled.append(True))
    path = tmp_path / "k.conf"
    write(path, free_port())
    _, reloads, _ = await running(path)
    try:
        assert (await reloads.reload("test")).status == "reloaded"
        assert settled == []  # the old configuration is draining
        for _ in range(100):
            if settled:
                break
            await asyncio.sleep(0.05)
        assert settled == [True]
    finally:
        await reloads.stop()
