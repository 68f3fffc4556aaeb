"""The host store's messages between a worker and its supervisor (docs/state.md).

Strategy: a frame is a 4-byte big-endian length, then that many bytes of
JSON (ASCII only: a user name with a lone surrogate or a NUL still
travels). Each StateStore call is one request frame naming the method,
its arguments as plain arrays:

    ["acquire", [["r", COUNTER, KEY, BURST, PERIOD] | ["s", COUNTER, KEY, LIMIT], ...]]
    ["release", [[COUNTER, KEY], ...]]
    ["locked", [[COUNTER, KEY], ...], [COUNTER, KEY]]
    ["count_failure", [[COUNTER, KEY, WINDOW, LIMIT, LOCKOUT], ...], GUESS_HEX]
    ["remember", [COUNTER, KEY], TTL]

`release` and `remember` are told, not asked: nothing answers them (the
supervisor reads a worker's frames in order, so a slot given back is free
before that worker's next question is answered). The others get one
answer frame each, in the order asked:

    acquire:        [REFUSED, WAIT]  (the slots granted are the Slot
                    requests before REFUSED, or all of them if -1)
    locked:         [[LEFT, ...], KNOWN]
    count_failure:  [COUNT, ...]
    any, on error:  {"error": TEXT}

No pickle: both ends are our processes, but a plain encoding checked
field by field keeps a bug on one side from running code on the other.
This module does no I/O: `Frames` cuts whatever bytes a read brought into
whole frames, so a busy peer's many frames cost one read, not two each.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kittiwake.state.base import Failure, Grant, Held, Locks, Rate, Slot

__all__ = [
    "MAX_FRAME",
    "Acquire",
    "CountFailure",
    "Frames",
    "Locked",
    "Release",
    "Remember",
    "RemoteError",
    "Request",
    "WireError",
    "decode_counts",
    "decode_grant",
    "decode_locks",
    "decode_request",
    "encode_counts",
    "encode_error",
    "encode_grant",
    "encode_locks",
    "encode_request",
    "frame",
]

#: The largest frame: a decision names a few counters; a megabyte is a bug.
MAX_FRAME = 1 << 20
_HEADER = struct.Struct("!I")


class WireError(Exception):
    """A frame that does not follow this protocol (a bug on the other side)."""


class RemoteError(WireError):
    """The other side could not carry out the request; its text."""


# -- requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    wanted: list[Rate | Slot]


@dataclass(frozen=True, slots=True)
class Release:
    held: list[Held]


@dataclass(frozen=True, slots=True)
class Locked:
    counters: list[tuple[str, str]]
    known: tuple[str, str]


@dataclass(frozen=True, slots=True)
class CountFailure:
    failures: list[Failure]
    guess: bytes


@dataclass(frozen=True, slots=True)
class Remember:
    known: tuple[str, str]
    ttl: float


Request = Acquire | Release | Locked | CountFailure | Remember


def encode_request(request: Request) -> bytes:
    """One request, framed."""
    body: list[Any]
    if isinstance(request, Acquire):
        body = ["acquire", [_wanted(w) for w in request.wanted]]
    elif isinstance(request, Release):
        body = ["release", [[h.counter, h.key] for h in request.held]]
    elif isinstance(request, Locked):
        body = ["locked", [list(c) for c in request.counters], list(request.known)]
    elif isinstance(request, CountFailure):
        failures = [[f.counter, f.key, f.window, f.limit, f.lockout] for f in request.failures]
        body = ["count_failure", failures, request.guess.hex()]
    else:
        body = ["remember", list(request.known), request.ttl]
    return frame(body)


def _wanted(request: Rate | Slot) -> list[Any]:
    if isinstance(request, Rate):
        return ["r", request.counter, request.key, request.burst, request.period]
    return ["s", request.counter, request.key, request.limit]


def decode_request(body: bytes) -> Request:
    """The request in a frame's body; `WireError` if it is not one."""
    message = _parse(body)
    if not isinstance(message, list) or not message:
        raise WireError("a request is a non-empty array")
    method, args = message[0], message[1:]
    if method == "acquire" and len(args) == 1:
        return Acquire([_read_wanted(w) for w in _array(args[0])])
    if method == "release" and len(args) == 1:
        return Release([Held(*_pair(h)) for h in _array(args[0])])
    if method == "locked" and len(args) == 2:
        return Locked([_pair(c) for c in _array(args[0])], _pair(args[1]))
    if method == "count_failure" and len(args) == 2:
        failures = [_read_failure(f) for f in _array(args[0])]
        try:
            guess = bytes.fromhex(_str(args[1]))
        except ValueError:
            raise WireError("the guess is not hexadecimal") from None
        return CountFailure(failures, guess)
    if method == "remember" and len(args) == 2:
        return Remember(_pair(args[0]), _number(args[1]))
    raise WireError(f"unknown request {str(method)[:40]!r} with {len(args)} arguments")


def _read_wanted(item: object) -> Rate | Slot:
    fields = _array(item)
    if len(fields) == 5 and fields[0] == "r":
        return Rate(_str(fields[1]), _str(fields[2]), _int(fields[3]), _number(fields[4]))
    if len(fields) == 4 and fields[0] == "s":
        return Slot(_str(fields[1]), _str(fields[2]), _int(fields[3]))
    raise WireError("a wanted item is a rate or a slot")


def _read_failure(item: object) -> Failure:
    fields = _array(item)
    if len(fields) != 5:
        raise WireError("a failure has five fields")
    counter, key, window, limit, lockout = fields
    return Failure(_str(counter), _str(key), _number(window), _int(limit), _number(lockout))


# -- answers -------------------------------------------------------------------------


def encode_grant(grant: Grant) -> bytes:
    return frame([grant.refused, grant.wait])


def decode_grant(body: bytes, wanted: Sequence[Rate | Slot]) -> Grant:
    """The `Grant` for `wanted` (the requests asked): the slots taken are the
    `Slot` requests before the refused one, each its own holding, as the
    in-process store hands them back."""
    answer = _answer(body)
    if len(answer) != 2:
        raise WireError("a grant has two fields")
    refused, wait = _int(answer[0]), _number(answer[1])
    if not -1 <= refused < len(wanted):
        raise WireError(f"refused request {refused} of {len(wanted)}")
    taken = wanted if refused < 0 else wanted[:refused]
    return Grant([w for w in taken if isinstance(w, Slot)], refused, wait)


def encode_locks(locks: Locks) -> bytes:
    return frame([list(locks.left), locks.known])


def decode_locks(body: bytes, asked: int) -> Locks:
    answer = _answer(body)
    if len(answer) != 2 or not isinstance(answer[1], bool):
        raise WireError("locks are [[LEFT, ...], KNOWN]")
    left = tuple(_number(n) for n in _array(answer[0]))
    if len(left) != asked:
        raise WireError(f"{len(left)} lockouts for {asked} counters")
    return Locks(left, answer[1])


def encode_counts(counts: Sequence[int]) -> bytes:
    return frame(list(counts))


def decode_counts(body: bytes, asked: int) -> list[int]:
    counts = [_int(n) for n in _answer(body)]
    if len(counts) != asked:
        raise WireError(f"{len(counts)} counts for {asked} failures")
    return counts


def encode_error(text: str) -> bytes:
    return frame({"error": text})


def _answer(body: bytes) -> list[Any]:
    message = _parse(body)
    if isinstance(message, dict):
        raise RemoteError(str(message.get("error", "error")))
    return _array(message)


# -- frames --------------------------------------------------------------------------


def frame(message: object) -> bytes:
    """`message` as JSON behind its length."""
    body = json.dumps(message, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_FRAME:
        raise WireError(f"a frame of {len(body)} bytes is too large")
    return _HEADER.pack(len(body)) + body


class Frames:
    """Cuts a byte stream into frame bodies."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The bodies of the frames `data` completes, in order; `WireError` for
        a length past `MAX_FRAME` (the stream cannot be read on after it)."""
        buffer = self._buffer
        buffer += data
        bodies: list[bytes] = []
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise WireError(f"a frame of {length} bytes is too large")
            end = start + _HEADER.size + length
            if end > len(buffer):
                break
            bodies.append(bytes(buffer[start + _HEADER.size : end]))
            start = end
        del buffer[:start]
        return bodies

    @property
    def partial(self) -> bool:
        """Bytes of a frame not yet complete are waiting (at the end of the
        stream: it ended inside a frame)."""
        return bool(self._buffer)


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None


# -- fields ----------------------------------------------------------------------------


def _array(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise WireError("expected an array")
    return value


def _pair(value: object) -> tuple[str, str]:
    fields = _array(value)
    if len(fields) != 2:
        raise WireError("expected [COUNTER, KEY]")
    return _str(fields[0]), _str(fields[1])


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise WireError("expected a string")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError("expected an integer")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError("expected a number")
    return float(value)
