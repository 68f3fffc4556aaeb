"""`Reply.render`: a one-line ASCII reply keeps its bytes after the first
render; anything else is rendered each time, as the session asks."""

from __future__ import annotations

import dataclasses

from kittiwake.protocol import Reply
from kittiwake.protocol import replies as R


def test_a_constant_reply_is_rendered_once_and_the_same_for_utf8() -> None:
    reply = Reply(250, (2, 0, 0), "OK: queued")
    first = reply.render()
    assert first == b"250 2.0.0 OK: queued\r\n"
    assert reply.render(True) is first  # kept, and the same bytes with SMTPUTF8
    assert R.START_DATA.render() == b"354 Go ahead. End your data with <CR><LF>.<CR><LF>\r\n"


def test_what_is_kept_is_not_compared_shown_or_copied() -> None:
    reply = Reply(250, (2, 0, 0), "OK")
    reply.render()
    assert reply == Reply(250, (2, 0, 0), "OK") and hash(reply) == hash(Reply(250, (2, 0, 0), "OK"))
    assert "wire" not in repr(reply)
    other = dataclasses.replace(reply, text="Other")
    assert other.render() == b"250 2.0.0 Other\r\n"


def test_non_ascii_text_follows_smtputf8_every_time() -> None:
    reply = Reply(250, (2, 1, 5), "<jos\u00e9@example.org> OK")
    for _ in range(2):
        assert reply.render() == b"250 2.1.5 <jos?@example.org> OK\r\n"
        assert reply.render(True) == "250 2.1.5 <jos\u00e9@example.org> OK\r\n".encode()


def test_multi_line_and_unprintable_replies_are_not_kept() -> None:
    ehlo = R.ehlo("client.example", ["PIPELINING", "8BITMIME"])
    expected = b"250-Hello client.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    assert ehlo.render() == expected and ehlo.render() == expected
    unsafe = Reply(550, (5, 0, 0), "bad\r\nline")
    assert unsafe.render() == b"550 5.0.0 bad  line\r\n"
