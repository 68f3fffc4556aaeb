"""Streaming body canonicalization against dkimpy's own `canonicalize_body`.

dkimpy canonicalizes a whole body held in memory; `kittiwake.dkim.body`
does it in pieces with a few bytes of state. The two must agree on every
body and every way of cutting it into pieces: random bodies over the
bytes that matter (space, tab, CR, LF, text), every cut of short bodies,
trailing empty lines, lone CR and LF, the empty body and `l=` limits.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import time

import pytest
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.dkim.body import (
    CANONS,
    BodyHasher,
    BodySpec,
    Canon,
    empty_body_hash,
    hash_body,
)

REFERENCE = {"simple": Simple.canonicalize_body, "relaxed": Relaxed.canonicalize_body}

#: Bodies made of the bytes canonicalization cares about.
bodies = st.lists(
    st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"b c", b"\x00", b"\xff"]),
    max_size=60,
).map(b"".join)


class _Capture:
    """Collects the canonical stream instead of hashing it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def update(self, data: bytes) -> None:
        self.data += data

    def digest(self) -> bytes:
        return bytes(self.data)


def canonical(body: bytes, canon: Canon, cuts: list[int] | None = None) -> bytes:
    """What `BodyHasher` streams for `body` fed in pieces cut at `cuts`."""
    spec = BodySpec(canon)
    hasher = BodyHasher([spec])
    capture = _Capture()
    hasher._sinks[spec].hasher = capture  # type: ignore[assignment]
    bounds = [0, *sorted(cuts or []), len(body)]
    for start, end in itertools.pairwise(bounds):
        hasher.update(body[start:end])
    hasher.close()
    return capture.digest()


@pytest.mark.parametrize("canon", CANONS)
@settings(max_examples=400, deadline=None)
@given(body=bodies, data=st.data())
def test_random_bodies_in_random_pieces(canon: Canon, body: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    assert canonical(body, canon, cuts) == REFERENCE[canon](body)


@pytest.mark.parametrize("canon", CANONS)
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"\r\n\r\n\r\n",
        b"a",
        b"a\r\n",
        b"a\r\n\r\n\r\n",
        b" \t \r\n\t\r\n",
        b"a \t\r\n b\t \r\n\r\n  \r\n",
        b"a\r",
        b"a\n",
        b"\r",
        b"\n",
        b"a \r\r\n",
        b"a \n\r\n",
        b"a\r \r\n",
        b"a\r  \r\n\r\n",
        b"  ",
        b"a\r\n  ",
        b"x\r\n\r\n \r\nb",
    ],
)
def test_every_cut_of_tricky_bodies(canon: Canon, body: bytes) -> None:
    expected = REFERENCE[canon](body)
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert canonical(body, canon, [i, j]) == expected, (i, j)
    # one byte at a time
    assert canonical(body, canon, list(range(len(body)))) == expected


@pytest.mark.parametrize("canon", CANONS)
@settings(max_examples=200, deadline=None)
@given(body=bodies, limit=st.integers(0, 80))
def test_l_limits_count_canonical_bytes(canon: Canon, body: bytes, limit: int) -> None:
    spec = BodySpec(canon, "sha256", limit)
    whole = BodySpec(canon, "sha256")
    hasher = BodyHasher([spec, whole])
    hasher.update(body)
    hasher.close()
    reference = REFERENCE[canon](body)
    assert hasher.digest(spec) == hashlib.sha256(reference[:limit]).digest()
    assert hasher.digest(whole) == hashlib.sha256(reference).digest()
    assert hasher.length(canon) == len(reference)


def test_empty_body() -> None:
    assert empty_body_hash("simple") == hashlib.sha256(b"\r\n").digest()
    assert empty_body_hash("relaxed") == hashlib.sha256(b"").digest()


def test_one_pass_serves_every_spec() -> None:
    specs = [
        BodySpec(c, a, limit) for c in CANONS for a in ("sha256", "sha1") for limit in (None, 3)
    ]
    body = b"Hello  \t world \r\n\r\n"
    hasher = hash_body(io.BytesIO(body), [*specs, *specs])  # duplicates share a sink
    for spec in specs:
        reference = REFERENCE[spec.canon](body)
        if spec.limit is not None:
            reference = reference[: spec.limit]
        assert hasher.digest(spec) == hashlib.new(spec.algorithm, reference).digest()


@pytest.mark.parametrize("canon", CANONS)
def test_a_gigantic_line_costs_no_memory_and_linear_time(canon: Canon) -> None:
    """4 MiB without a line end, then 1 MiB of empty lines: bounded state, fast."""

    started = time.monotonic()
    hasher = BodyHasher([BodySpec(canon)])
    for _ in range(64):
        hasher.update(b"x \t" * 21845)
    for _ in range(16):
        hasher.update(b"\r\n" * 32768)
    hasher.close()
    assert time.monotonic() - started < 10
    writer = hasher._writers[0]
    carry = getattr(writer, "_carry", b"")
    assert len(carry) <= 2
    line = (b"x \t" * 21845) * 64
    expected = REFERENCE[canon](line + b"\r\n" * (32768 * 16))
    assert hasher.digest(BodySpec(canon)) == hashlib.sha256(expected).digest()
