"""The MTA-STS policy cache: expiry in wall-clock time, the fs cache on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kittiwake.mx_auth.sts_cache import CachedPolicy, PolicyCache
from kittiwake.mx_auth.sts_text import parse_policy

BODY = b"version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 3600\n"


def entry(fetched: float | None = None, body: bytes = BODY, policy_id: str = "id1") -> CachedPolicy:
    return CachedPolicy(
        policy_id, parse_policy(body), body, time.time() if fetched is None else fetched
    )


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_ram_cache_keeps_until_max_age(tmp_path: Path) -> None:
    cache = PolicyCache(None)
    assert await cache.get("example.test") is None
    await cache.put("example.test", entry())
    found = await cache.get("example.test")
    assert found is not None and found.policy_id == "id1"
    await cache.put("old.test", entry(fetched=time.time() - 3601))
    assert await cache.get("old.test") is None
    assert names(tmp_path) == []  # ram writes nothing


async def test_fs_cache_survives_a_new_cache_object(tmp_path: Path) -> None:
    directory = tmp_path / "mtasts_cache"
    await PolicyCache(str(directory)).put("example.test", entry())
    stored = json.loads((directory / "example.test").read_text())
    assert stored["id"] == "id1" and stored["policy"] == BODY.decode()
    assert names(directory) == ["example.test"]  # no temporary left
    again = await PolicyCache(str(directory)).get("example.test")
    assert again is not None and again.policy.mx == ("mx.example.test",)
    assert again.expires == stored["fetched"] + 3600


async def test_fs_cache_refuses_damaged_files_and_odd_names(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "broken.test").write_text("{not json")
    (directory / "bad-policy.test").write_text(
        json.dumps({"id": "x", "fetched": time.time(), "policy": "version: STSv9\n"})
    )
    cache = PolicyCache(str(directory))
    assert await cache.get("broken.test") is None
    assert await cache.get("bad-policy.test") is None
    # A name that is not a plain lowercase domain is kept in memory only.
    for name in ("../escape", "a/b", ".hidden", "UPPER.test"):
        await cache.put(name, entry())
        assert await cache.get(name) is not None
    assert names(directory) == ["bad-policy.test", "broken.test"]
    assert not (tmp_path / "escape").exists()
