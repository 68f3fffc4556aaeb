"""MX ordering (RFC 5321 §5.1, RFC 7505) and TLS result names, without DNS."""

from __future__ import annotations

import random

from kittiwake.remote.connect import verify_result
from kittiwake.remote.mx import is_null_mx, order_mx


def test_lowest_preference_first() -> None:
    records = [(20, "c.example"), (5, "a.example"), (10, "b.example")]
    assert order_mx(records) == [(5, "a.example"), (10, "b.example"), (20, "c.example")]


def test_equal_preferences_are_shuffled_but_stay_in_their_rank() -> None:
    records = [(10, f"h{i}.example") for i in range(6)] + [(5, "first.example")]
    orders = set()
    for seed in range(20):
        got = order_mx(records, random.Random(seed))
        assert got[0] == (5, "first.example")
        assert sorted(got[1:]) == sorted(r for r in records if r[0] == 10)
        orders.add(tuple(got))
    assert len(orders) > 1  # not always the same order


def test_names_normalised_and_duplicates_keep_the_best_preference() -> None:
    records = [(30, "MX.Example."), (10, "mx.example"), (20, "other.example")]
    assert order_mx(records) == [(10, "mx.example"), (20, "other.example")]


def test_null_mx() -> None:
    assert is_null_mx([(0, "")])
    assert is_null_mx([(0, ".")])
    assert not is_null_mx([])
    assert not is_null_mx([(0, ""), (10, "mx.example")])  # not RFC 7505's form
    assert order_mx([(0, ""), (10, "mx.example")]) == [(10, "mx.example")]


def test_certificate_failures_named_as_tls_reports_do() -> None:
    assert verify_result(62) == "certificate-host-mismatch"
    assert verify_result(10) == "certificate-expired"
    assert verify_result(20) == "certificate-not-trusted"
    assert verify_result(18) == "certificate-not-trusted"
    assert verify_result(None) == "validation-failure"
    assert verify_result(7) == "validation-failure"  # a bad signature: no better name
