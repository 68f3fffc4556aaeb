"""The host store's frames (state/wire.py): what a worker and its supervisor exchange.

Each request survives the round trip field for field, keys with any
characters in them included (user names come from the network); answers
become the `Grant`, `Locks` and counts the callers expect; anything that
is not the protocol is a `WireError`, never a wrong decision.
"""

from __future__ import annotations

import json
import struct

import pytest

from kittiwake.state.base import Failure, Grant, Held, Locks, Rate, Slot
from kittiwake.state.wire import (
    MAX_FRAME,
    Acquire,
    CountFailure,
    Frames,
    Locked,
    Release,
    Remember,
    RemoteError,
    Request,
    WireError,
    decode_counts,
    decode_grant,
    decode_locks,
    decode_request,
    encode_counts,
    encode_error,
    encode_grant,
    encode_locks,
    encode_request,
    frame,
)

#: Keys as they come from clients: separators, a NUL, a lone surrogate
#: (a name decoded with surrogateescape), a quote, non-ASCII.
ODD_KEYS = ["", "a:b", "x\x00y", "bad\udcff", 'quo"te\n', "éxample.org", "a b"]


def body(data: bytes) -> bytes:
    """A frame's body, its length checked."""
    (length,) = struct.unpack("!I", data[:4])
    assert length == len(data) - 4
    return data[4:]


@pytest.mark.parametrize(
    "request_",
    [
        Acquire([Rate("limits/x/all.rate.0", "", 20, 60.0), Slot("conn/smtp/ip", "192.0.2.1", 5)]),
        Acquire([]),
        Release([Held("conn/smtp/total", ""), Held("limits/x/ip.concurrency.0", "::1")]),
        Locked([("auth/s/ip", "192.0.2.1"), ("auth/s/username", "me")], ("auth/s/known", "a me")),
        CountFailure([Failure("auth/s/ip", "192.0.2.1", 600.0, 10, 900.0)], b"\x00\xff" * 4),
        Remember(("auth/s/known", "192.0.2.1 me"), 2592000.0),
    ],
    ids=["acquire", "acquire-nothing", "release", "locked", "count_failure", "remember"],
)
def test_every_request_comes_back_as_it_was_sent(request_: Request) -> None:
    assert decode_request(body(encode_request(request_))) == request_


@pytest.mark.parametrize("key", ODD_KEYS)
def test_any_key_travels(key: str) -> None:
    sent = Acquire([Slot(f"c:{key}", key, 1)])
    data = encode_request(sent)
    assert data[4:].isascii()  # every character escaped: one encoding, no surprises
    assert decode_request(body(data)) == sent


def test_fractions_of_seconds_are_kept_exactly() -> None:
    sent = Acquire([Rate("r", "k", 3, 0.1 + 0.2)])
    back = decode_request(body(encode_request(sent)))
    assert isinstance(back, Acquire) and back.wanted[0] == sent.wanted[0]


def test_a_grant_names_the_slots_before_the_refused_request() -> None:
    wanted: list[Rate | Slot] = [Slot("a", "", 5), Rate("r", "", 1, 60.0), Slot("b", "", 1)]
    grant = decode_grant(body(encode_grant(Grant([wanted[0]], 2, 0.25))), wanted)
    assert (grant.held, grant.refused, grant.wait) == ([wanted[0]], 2, 0.25)
    everything = decode_grant(body(encode_grant(Grant(refused=-1))), wanted)
    assert everything.held == [wanted[0], wanted[2]] and everything.refused == -1
    assert decode_grant(body(encode_grant(Grant(refused=0, wait=9.5))), wanted).held == []


def test_locks_and_counts() -> None:
    locks = Locks((120.0, 0.0), True)
    assert decode_locks(body(encode_locks(locks)), 2) == locks
    assert decode_counts(body(encode_counts([3, 0])), 2) == [3, 0]


def test_an_error_answer_is_raised() -> None:
    with pytest.raises(RemoteError, match="KeyError"):
        decode_grant(body(encode_error("KeyError")), [Slot("a", "", 1)])


@pytest.mark.parametrize(
    "message",
    [
        [],
        ["nope", []],
        ["acquire"],
        ["acquire", [["x", "c", "k", 1]]],
        ["acquire", [["s", "c", "k", "1"]]],
        ["acquire", [["s", "c", "k", True]]],  # a boolean is not a number here
        ["acquire", [["r", "c", 7, 1, 1.0]]],
        ["release", [["c"]]],
        ["locked", [], "c"],
        ["count_failure", [["c", "k", 1.0, 2]], "00"],
        ["count_failure", [], "not hex"],
        ["remember", ["c", "k"], "soon"],
        {"acquire": []},
    ],
)
def test_what_is_not_a_request_is_refused(message: object) -> None:
    with pytest.raises(WireError):
        decode_request(json.dumps(message).encode())


def test_answers_that_do_not_fit_the_question_are_refused() -> None:
    wanted: list[Rate | Slot] = [Slot("a", "", 1)]
    for bad in ([1, 0.0], [-2, 0.0], [0], ["0", 0.0]):
        with pytest.raises(WireError):
            decode_grant(json.dumps(bad).encode(), wanted)
    with pytest.raises(WireError):
        decode_locks(body(encode_locks(Locks((1.0,), False))), 2)
    with pytest.raises(WireError):
        decode_counts(body(encode_counts([1])), 2)
    with pytest.raises(WireError):
        decode_counts(b"{not json", 1)


def test_a_frame_too_large_is_refused_both_ways() -> None:
    with pytest.raises(WireError):
        frame("x" * MAX_FRAME)
    with pytest.raises(WireError):
        Frames().feed(struct.pack("!I", MAX_FRAME + 1))


def test_frames_are_cut_whole_however_the_bytes_come() -> None:
    first, second, third = encode_counts([1]), encode_counts([2, 3]), encode_locks(Locks((), False))
    data = first + second + third
    frames = Frames()
    got = [body for i in range(len(data)) for body in frames.feed(data[i : i + 1])]  # a byte each
    assert got == [first[4:], second[4:], third[4:]] and not frames.partial
    assert frames.feed(data) == got  # all at once
    assert frames.feed(first[:-1]) == [] and frames.partial  # a frame not whole yet
    assert frames.feed(first[-1:] + second[:3]) == [first[4:]]
    assert frames.feed(second[3:]) == [second[4:]] and not frames.partial
