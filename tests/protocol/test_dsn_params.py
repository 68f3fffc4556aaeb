"""RFC 3461 parameters: what the core keeps of RET, ENVID, NOTIFY and ORCPT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kittiwake.message import RcptDSN
from kittiwake.message.xtext import decode_unitext, decode_xtext, encode_xtext
from kittiwake.protocol.parse import ParseError, parse_mail, parse_rcpt


def test_mail_keeps_ret_and_decoded_envid() -> None:
    _, params = parse_mail("FROM:<a@b> RET=hdrs ENVID=id+2B1+3D2", 0)
    assert (params.ret, params.envid) == ("HDRS", "id+1=2")
    _, params = parse_mail("FROM:<a@b>", 0)
    assert (params.ret, params.envid) == (None, None)


def test_rcpt_keeps_notify_in_a_fixed_order_and_the_decoded_orcpt() -> None:
    mailbox, dsn = parse_rcpt("TO:<c@d> NOTIFY=delay,Success ORCPT=RFC822;C+2Bx@D")
    assert mailbox == "c@d"
    assert dsn == RcptDSN(("SUCCESS", "DELAY"), ("rfc822", "C+x@D"))
    assert parse_rcpt("TO:<c@d>") == ("c@d", None)
    _, utf8 = parse_rcpt("TO:<c@d> ORCPT=utf-8;J\\x{F6}rg\\x{1F600}@d")
    assert utf8 is not None and utf8.orcpt == ("utf-8", "Jörg\U0001f600@d")


@pytest.mark.parametrize(
    "value", ["\\x{D800}", "\\x{110000}", "\\x{}", "\\x{1234567}", "\\x{E9", "a b", "a=b", "+0"]
)
def test_bad_unitext_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        decode_unitext(value)


def test_default_notify_means_failure_and_delay() -> None:
    """RFC 3461 §4.1: without NOTIFY, failures (and delays) are reported."""
    default = RcptDSN()
    assert [default.wants(k) for k in ("SUCCESS", "FAILURE", "DELAY")] == [False, True, True]
    never = RcptDSN(("NEVER",))
    assert not any(never.wants(k) for k in ("SUCCESS", "FAILURE", "DELAY"))
    assert RcptDSN(("SUCCESS",)).wants("SUCCESS") and not RcptDSN(("SUCCESS",)).wants("FAILURE")


@given(st.text())
def test_xtext_round_trips_and_stays_one_word(text: str) -> None:
    encoded = encode_xtext(text)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert decode_xtext(encoded) == text


def test_a_control_character_in_envid_is_refused() -> None:
    with pytest.raises(ParseError) as info:
        parse_mail("FROM:<a@b> ENVID=a+0Ab", 0)
    assert str(info.value.reply) == "501 5.5.4 Malformed ENVID parameter value"
