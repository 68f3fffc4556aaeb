"""DKIM body canonicalization and hashing, streamed (RFC 6376 §3.4.3, §3.4.4, §3.7).

Strategy. A body is read once, in pieces, whatever its size and whatever
its line lengths: BDAT lets a client send a line of any length, so no
state here ever holds a line. Each canonicalization is a small state
machine whose memory is a few bytes:

* `simple` changes nothing but the end: trailing empty lines are dropped
  and exactly one CR LF ends the body (an empty body is one CR LF);
* `relaxed` also turns each run of spaces and tabs into one space and
  drops such a run at the end of a line. A piece is split where its end
  is still undecided: a run of white space (kept as one space) and a CR
  (which may pair with an LF in the next piece) wait, everything before
  them is settled and rewritten with two C-speed passes (a regular
  expression over runs, then a `replace` of " CR LF");
* both feed a `_Trailer`, which holds back the CR LF pairs at the end of
  what it has seen as a count (never as bytes) and a CR that may start a
  pair, so trailing empty lines cost nothing however many there are.

Only CR LF ends a line; a lone CR or LF is an ordinary byte, as in
dkimpy's `canonicalize_body` (the reference the tests compare with on
random bodies). The canonical stream fans out to one hash per distinct
(hash algorithm, `l=` limit) a signature needs; `l=` counts canonical
bytes. One `BodyHasher` serves every signature of a message, so several
signatures cost one read of the body.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import BinaryIO, Literal, NamedTuple

__all__ = ["CANONS", "BodyHasher", "BodySpec", "Canon", "empty_body_hash", "hash_body"]

Canon = Literal["simple", "relaxed"]
CANONS: tuple[Canon, ...] = ("simple", "relaxed")

#: Bytes read from the body at a time: large enough that per-piece work in
#: Python is negligible, small enough to stay in the CPU cache.
READ_SIZE = 64 * 1024

#: Runs of white space that are not already one space (one space is left alone: faster).
_WSP_RUN = re.compile(rb"\t[ \t]*| [ \t]+")
#: Find two spaces, and a space before a line end, faster than `in` does
#: (`bytes.find` is slow for a needle that starts with a byte as common as
#: the space).
_DOUBLE_SPACE = re.compile(rb"  ").search
_SPACE_CRLF = re.compile(rb" \r\n").search
#: Held-back CR LF pairs are written out in blocks of this many pairs.
_CRLF_BLOCK = b"\r\n" * 32768


class BodySpec(NamedTuple):
    """One body hash a signature needs: its canonicalization, hash and `l=` limit.

    A named tuple: it is a dictionary key on every verification, and a
    tuple hashes in C where a frozen dataclass runs Python code.
    """

    canon: Canon
    algorithm: str = "sha256"
    limit: int | None = None


class _Sink:
    """A hash of the canonical stream, cut at `limit` bytes; counts every byte."""

    __slots__ = ("hasher", "length", "limit")

    def __init__(self, algorithm: str, limit: int | None) -> None:
        # The named constructor: `hashlib.new` looks the name up each time.
        self.hasher = hashlib.sha256() if algorithm == "sha256" else hashlib.new(algorithm)
        self.limit = limit
        self.length = 0  # canonical bytes seen, also past the limit

    def update(self, data: bytes | memoryview) -> None:
        if self.limit is None:
            self.hasher.update(data)
        else:
            room = self.limit - self.length
            if room > 0:
                self.hasher.update(data[:room] if room < len(data) else data)
        self.length += len(data)


def _trailing_pairs(data: bytes) -> int:
    """How many CR LF pairs `data` ends with, in C-speed steps.

    The end made only of CR and LF bytes is cut off first; within it the
    pairs run back to the last doubled byte (CR CR or LF LF).
    """
    if not data.endswith(b"\r\n"):
        return 0
    tail = data[-64:]  # most bodies end in a line or two: no copy of the whole
    if not tail.rstrip(b"\r\n"):
        tail = data
    tail = tail[len(tail.rstrip(b"\r\n")) :]
    cut = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    if tail[cut : cut + 1] == b"\n":
        cut += 1
    return (len(tail) - cut) // 2


class _Trailer:
    """Writes the canonical stream to its sinks, holding back trailing CR LFs.

    `close` ends the body with one CR LF, except that `relaxed` leaves an
    empty body empty (RFC 6376 §3.4.4, as dkimpy and the RFC's errata do).
    """

    __slots__ = ("_emitted", "_held_cr", "_pending", "_relaxed", "_sinks")

    def __init__(self, sinks: list[_Sink], relaxed: bool) -> None:
        self._sinks = sinks
        self._relaxed = relaxed
        self._pending = 0  # CR LF pairs seen at the end, not yet written
        self._held_cr = False  # a CR at the end that may pair with an LF
        self._emitted = False

    def _emit(self, data: bytes | memoryview) -> None:
        self._emitted = True
        for sink in self._sinks:
            sink.update(data)

    def _flush_pending(self) -> None:
        pairs, self._pending = self._pending, 0
        block = len(_CRLF_BLOCK) // 2
        while pairs > 0:
            n = min(pairs, block)
            self._emit(_CRLF_BLOCK if n == block else b"\r\n" * n)
            pairs -= n

    def write(self, data: bytes) -> None:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            self._held_cr = True
            data = data[:-1]
        if not data:
            return
        pairs = _trailing_pairs(data)
        head = len(data) - 2 * pairs
        if head:
            self._flush_pending()
            # A view, not a copy of all but the last line end.
            self._emit(memoryview(data)[:head] if pairs else data)
        self._pending += pairs

    def close(self) -> None:
        if self._held_cr:  # nothing followed: an ordinary byte
            self._held_cr = False
            self._flush_pending()
            self._emit(b"\r")
        self._pending = 0
        if self._emitted or not self._relaxed:
            self._emit(b"\r\n")


class _Relaxed:
    """Relaxed white space rules in front of a `_Trailer` (module docstring).

    `_carry` is what waits at the end of the last piece: b"" or b" " (a
    run of white space, already compressed) followed by an optional CR.
    """

    __slots__ = ("_carry", "_out")

    def __init__(self, out: _Trailer) -> None:
        self._out = out
        self._carry = b""

    def write(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        end = len(data)
        cr = data.endswith(b"\r")
        if cr:
            end -= 1
        body = data[:end] if cr else data
        settled = body.rstrip(b" \t")
        self._carry = (b" " if len(settled) < len(body) else b"") + (b"\r" if cr else b"")
        if settled:
            # Most text has neither tabs, double spaces nor spaces before a
            # line end: scans in C spare the regular expression a walk over
            # every byte.
            if b"\t" in settled or _DOUBLE_SPACE(settled):
                settled = _WSP_RUN.sub(b" ", settled)
            if _SPACE_CRLF(settled):
                settled = settled.replace(b" \r\n", b"\r\n")
            self._out.write(settled)

    def close(self) -> None:
        # White space with no line end after it stays one space, and a final
        # CR is an ordinary byte (dkimpy's reading of an unterminated line).
        if self._carry:
            self._out.write(self._carry)
            self._carry = b""
        self._out.close()


class BodyHasher:
    """Every body hash a message's signatures need, from one pass over the body."""

    def __init__(self, specs: Iterable[BodySpec]) -> None:
        self._sinks: dict[BodySpec, _Sink] = {}
        self._lengths: dict[Canon, _Sink] = {}
        self._writers: list[_Trailer | _Relaxed] = []
        by_canon: dict[Canon, list[_Sink]] = {}
        for spec in specs:
            if spec in self._sinks:
                continue
            if spec.canon not in CANONS:
                raise ValueError(f"unknown body canonicalization: {spec.canon}")
            sink = _Sink(spec.algorithm, spec.limit)
            self._sinks[spec] = sink
            by_canon.setdefault(spec.canon, []).append(sink)
        for canon, sinks in by_canon.items():
            self._lengths[canon] = sinks[0]
            trailer = _Trailer(sinks, relaxed=canon == "relaxed")
            self._writers.append(_Relaxed(trailer) if canon == "relaxed" else trailer)
        self._closed = False

    def update(self, chunk: bytes) -> None:
        if chunk:
            for writer in self._writers:
                writer.write(chunk)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for writer in self._writers:
                writer.close()

    def digest(self, spec: BodySpec) -> bytes:
        """The hash for `spec` (after `close`)."""
        return self._sinks[spec].hasher.digest()

    def length(self, canon: Canon) -> int:
        """The whole canonical body's length in bytes (after `close`), for `l=` checks."""
        return self._lengths[canon].length


def hash_body(reader: BinaryIO, specs: Iterable[BodySpec]) -> BodyHasher:
    """Read `reader` to its end in `READ_SIZE` pieces; blocking (run in a worker)."""
    hasher = BodyHasher(specs)
    while chunk := reader.read(READ_SIZE):
        hasher.update(chunk)
    hasher.close()
    return hasher


def empty_body_hash(canon: Canon, algorithm: str = "sha256") -> bytes:
    """The hash of an empty body under `canon` (what dkimpy computes for an empty message)."""
    spec = BodySpec(canon, algorithm)
    hasher = BodyHasher([spec])
    hasher.close()
    return hasher.digest(spec)
