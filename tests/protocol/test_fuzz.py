"""Hypothesis: whatever a client sends, the core answers; it never breaks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kittiwake.protocol import Settings

from .helpers import run

TOKENS = [
    b"EHLO x\r\n",
    b"HELO y\r\n",
    b"LHLO z\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<c@d>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 3\r\n",
    b"BDAT 2 LAST\r\n",
    b"BDAT x\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY a\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN =\r\n",
    b"*\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"..\r\n",
    b"\r",
    b"\n",
    b".",
    b"abc",
    b"\x00\xff",
    b"MAIL FROM:<\xc3\xa9@b>\r\n",
]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(TOKENS) | st.binary(max_size=40), max_size=40),
    step=st.integers(min_value=0, max_value=9),
    lmtp=st.booleans(),
)
def test_any_stream_is_answered_and_splitting_does_not_matter(
    parts: list[bytes], step: int, lmtp: bool
) -> None:
    data = b"".join(parts)
    s = Settings(
        lmtp=lmtp,
        max_line_length=64,
        max_message_size=100,
        max_recipients=3,
        tls_available=True,
        auth_mechanisms=("PLAIN", "LOGIN"),
        insecure_auth=True,
    )
    whole = run(data, s)
    pieces = run(data, s, step=step)
    assert whole.out == pieces.out
    assert whole.messages == pieces.messages
    for m in whole.messages:
        # DATA content is stored with CR LF line ends only (BDAT is binary);
        # no message passes the size limit.
        if not m.via_bdat:
            assert m.body.count(b"\n") == m.body.count(b"\r\n")
        assert len(m.body) <= 100
