"""`ConnectionGate.counts`: whether the per-IP cap applies, kept per address.

The answer is remembered per client address (parsing one costs more than
the rest of letting a connection in); the memory is bounded, and past its
bound it starts afresh without changing any answer.
"""

from __future__ import annotations

import ipaddress

from kittiwake.server import session_config
from kittiwake.server.session_config import ConnectionGate

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_exempt_networks_and_the_forms_of_an_address() -> None:
    gate = ConnectionGate(max_per_ip=3, exempt=LOOPBACK)
    assert not gate.counts("127.0.0.1")
    assert not gate.counts("::ffff:127.0.0.5")  # a dual-stack socket's form
    assert not gate.counts("::1")
    assert gate.counts("192.0.2.7")
    assert gate.counts("2001:db8::7")
    assert not gate.counts("127.0.0.1")  # the same answer again, remembered
    assert gate.counts("192.0.2.7")


def test_no_cap_counts_nobody() -> None:
    gate = ConnectionGate(max_per_ip=0, exempt=LOOPBACK)
    assert not gate.counts("192.0.2.7")


def test_the_memory_is_bounded_and_answers_stay_right() -> None:
    gate = ConnectionGate(max_per_ip=3, exempt=(ipaddress.ip_network("10.0.0.0/8"),))
    bound = session_config._MEMO_SIZE
    # At the bound: every address kept.
    for i in range(bound):
        assert gate.counts(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") is False
    assert len(gate._counted) == bound
    # Past it: started afresh, still right.
    assert gate.counts("192.0.2.1") is True
    assert len(gate._counted) == 1
    assert gate.counts("10.0.0.1") is False
    assert gate.counts("192.0.2.1") is True
    assert len(gate._counted) == 2
