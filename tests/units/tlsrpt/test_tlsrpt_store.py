"""TLS report data: counting attempts the RFC 8460 way, the day files, the shared store."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kittiwake.config.parser import parse_text
from kittiwake.container import Container
from kittiwake.mx_auth.base import PolicyReport
from kittiwake.tlsrpt import Recorder, TLSAttempt
from kittiwake.tlsrpt import aggregate as agg
from kittiwake.tlsrpt.aggregate import DayCounts
from kittiwake.tlsrpt.report import build_report
from kittiwake.tlsrpt.store import TLSReportStore, day_path, read_day, shared

#: The policy of RFC 8460 §4.4's example report.
STS = PolicyReport(
    policy_type="sts",
    policy_domain="company-y.example",
    policy_string=(
        "version: STSv1",
        "mode: testing",
        "mx: *.mail.company-y.example",
        "max_age: 86400",
    ),
    mx_host=("*.mail.company-y.example",),
)

#: RFC 8460 §4.4's example `policies` element, without the one field kittiwake never
#: writes (additional-information, a URI of the sender's own pages), rows in our order
#: (most frequent first).
EXAMPLE_POLICY: dict[str, Any] = {
    "policy": {
        "policy-type": "sts",
        "policy-string": [
            "version: STSv1",
            "mode: testing",
            "mx: *.mail.company-y.example",
            "max_age: 86400",
        ],
        "policy-domain": "company-y.example",
        "mx-host": ["*.mail.company-y.example"],
    },
    "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
    "failure-details": [
        {
            "result-type": "starttls-not-supported",
            "sending-mta-ip": "2001:db8:abcd:0013::1",
            "receiving-mx-hostname": "mx2.mail.company-y.example",
            "receiving-ip": "203.0.113.56",
            "failed-session-count": 200,
        },
        {
            "result-type": "certificate-expired",
            "sending-mta-ip": "2001:db8:abcd:0012::1",
            "receiving-mx-hostname": "mx1.mail.company-y.example",
            "failed-session-count": 100,
        },
        {
            "result-type": "validation-failure",
            "sending-mta-ip": "198.51.100.62",
            "receiving-mx-hostname": "mx-backup.mail.company-y.example",
            "receiving-ip": "203.0.113.58",
            "failed-session-count": 3,
            "failure-reason-code": "X509_V_ERR_PROOF_OF_POSSESSION_MISSING",
        },
    ],
}


def example_attempts() -> list[TLSAttempt]:
    """The sessions behind RFC 8460 §4.4's example, one attempt per session."""
    ok = TLSAttempt("company-y.example", "success", (STS,), sending_ip="2001:db8:abcd:0012::1")
    expired = TLSAttempt(
        "company-y.example",
        "certificate-expired",
        (STS,),
        sending_ip="2001:db8:abcd:0012::1",
        receiving_mx="mx1.mail.company-y.example",
    )
    plain = TLSAttempt(
        "company-y.example",
        "starttls-not-supported",
        (STS,),
        sending_ip="2001:db8:abcd:0013::1",
        receiving_mx="mx2.mail.company-y.example",
        receiving_ip="203.0.113.56",
    )
    invalid = TLSAttempt(
        "company-y.example",
        "validation-failure",
        (STS,),
        sending_ip="198.51.100.62",
        receiving_mx="mx-backup.mail.company-y.example.",  # a final dot is dropped
        receiving_ip="203.0.113.58",
        detail="X509_V_ERR_PROOF_OF_POSSESSION_MISSING",
    )
    return [ok] * 5326 + [expired] * 100 + [plain] * 200 + [invalid] * 3


def test_the_rfc_example_report_is_reproduced() -> None:
    day = DayCounts()
    for attempt in example_attempts():
        day.add(attempt)
    assert list(day.domains) == ["company-y.example"]
    report = build_report(
        dt.date(2016, 4, 1),
        "company-y.example",
        day.domains["company-y.example"],
        organization="Company-X",
        contact="sts-reporting@company-x.example",
    )
    assert report == {
        "organization-name": "Company-X",
        "date-range": {
            "start-datetime": "2016-04-01T00:00:00Z",
            "end-datetime": "2016-04-01T23:59:59Z",
        },
        "contact-info": "sts-reporting@company-x.example",
        "report-id": "2016-04-01T00:00:00Z_company-y.example@Company-X",
        "policies": [EXAMPLE_POLICY],
    }
    # The key order of RFC 8460 §4.3 (and of its example) is kept in the JSON text.
    assert list(report) == [
        "organization-name",
        "date-range",
        "contact-info",
        "report-id",
        "policies",
    ]


def test_attempts_without_a_policy_are_no_policy_found() -> None:
    day = DayCounts()
    day.add(TLSAttempt("Plain.Example.", "success", ()))
    day.add(
        TLSAttempt("plain.example", "starttls-not-supported", (), receiving_mx="MX.Plain.Example")
    )
    [entry] = day.domains["plain.example"].to_json()["policies"]
    assert entry == {
        "policy": {"policy-type": "no-policy-found", "policy-domain": "plain.example"},
        "summary": {"total-successful-session-count": 1, "total-failure-session-count": 1},
        "failure-details": [
            {
                "result-type": "starttls-not-supported",
                "receiving-mx-hostname": "mx.plain.example",
                "failed-session-count": 1,
            }
        ],
    }


def test_an_attempt_counts_under_each_of_its_policies() -> None:
    tlsa = PolicyReport("tlsa", "both.example", ("3 1 1 AB12",))
    sts = PolicyReport(
        "sts", "both.example", ("version: STSv1", "mode: enforce"), ("mx.both.example",)
    )
    day = DayCounts()
    day.add(TLSAttempt("both.example", "success", (tlsa, sts)))
    day.add(TLSAttempt("both.example", "tlsa-invalid", (tlsa, sts), receiving_mx="mx.both.example"))
    policies = day.domains["both.example"].to_json()["policies"]
    assert [p["policy"]["policy-type"] for p in policies] == ["sts", "tlsa"]
    for p in policies:
        assert p["summary"] == {
            "total-successful-session-count": 1,
            "total-failure-session-count": 1,
        }
        assert p["failure-details"][0]["result-type"] == "tlsa-invalid"


def test_an_unknown_result_type_is_a_validation_failure_named_in_the_reason() -> None:
    day = DayCounts()
    day.add(TLSAttempt("d.example", "something-new", ()))
    [row] = day.domains["d.example"].to_json()["policies"][0]["failure-details"]
    assert row == {
        "result-type": "validation-failure",
        "failure-reason-code": "something-new",
        "failed-session-count": 1,
    }


def failing(n: int, domain: str = "many.example") -> TLSAttempt:
    return TLSAttempt(
        domain, "certificate-not-trusted", (), receiving_ip=f"192.0.2.{n % 256}", helo=f"h{n}"
    )


def test_failure_detail_rows_are_capped_per_domain_and_day() -> None:
    day = DayCounts()
    for n in range(agg.MAX_DETAILS):
        day.add(failing(n))
    domain = day.domains["many.example"]
    assert domain.truncated == 0
    day.add(failing(agg.MAX_DETAILS))  # one row past the cap: counted, not itemised
    day.add(failing(agg.MAX_DETAILS))
    day.add(failing(0))  # an existing row still grows
    entry = domain.to_json()
    [policy] = entry["policies"]
    assert len(policy["failure-details"]) == agg.MAX_DETAILS
    assert policy["summary"]["total-failure-session-count"] == agg.MAX_DETAILS + 3
    assert sum(r["failed-session-count"] for r in policy["failure-details"]) == agg.MAX_DETAILS + 1
    assert entry["failure-details-truncated"] == 2


def test_policies_per_domain_and_string_lengths_are_capped() -> None:
    day = DayCounts()
    for n in range(agg.MAX_POLICIES + 2):
        report = PolicyReport("sts", "p.example", (f"max_age: {n}", "x" * 10_000))
        day.add(TLSAttempt("p.example", "success", (report,)))
    domain = day.domains["p.example"]
    assert len(domain.policies) == agg.MAX_POLICIES
    assert domain.dropped == 2
    for key in domain.policies:
        assert len(key[2][1]) == agg.MAX_POLICY_LINE
    day.add(TLSAttempt("p.example", "validation-failure", (), receiving_mx="m"))
    assert domain.dropped == 3  # a further policy, even "no policy", is past the cap
    day.add(TLSAttempt("q.example", "validation-failure", (), detail="e" * 5000, helo="h" * 999))
    row = next(
        iter(day.domains["q.example"].policies[("no-policy-found", "q.example", (), ())].details)
    )
    assert len(row[5]) == agg.MAX_REASON and len(row[4]) == agg.MAX_NAME


def test_domains_per_day_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agg, "MAX_DOMAINS", 3)
    day = DayCounts()
    for n in range(5):
        day.add(TLSAttempt(f"d{n}.example", "success", ()))
    assert sorted(day.domains) == ["d0.example", "d1.example", "d2.example"]
    assert day.dropped == 2


def test_the_day_file_format_round_trips_and_merges_by_adding() -> None:
    day = DayCounts()
    for attempt in example_attempts()[5000:]:
        day.add(attempt)
    again = DayCounts.from_json(json.loads(json.dumps(day.to_json("2016-04-01"))))
    assert again.to_json("2016-04-01") == day.to_json("2016-04-01")
    again.merge(day)
    [policy] = again.domains["company-y.example"].to_json()["policies"]
    assert policy["summary"] == {
        "total-successful-session-count": 652,
        "total-failure-session-count": 606,
    }
    assert [r["failed-session-count"] for r in policy["failure-details"]] == [400, 200, 6]


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"format": "other"},
        {"format": agg.FORMAT, "domains": []},
        {"format": agg.FORMAT, "domains": {"a": {"policies": [{"policy": {}}]}}},
        {"format": agg.FORMAT, "attempts-dropped": -1, "domains": {}},
    ],
)
def test_what_is_not_a_day_file_is_refused(data: Any) -> None:
    with pytest.raises(ValueError):
        DayCounts.from_json(data)


# -- the store -----------------------------------------------------------------------


class Clock:
    def __init__(self, when: str) -> None:
        self.now = dt.datetime.fromisoformat(when).timestamp()

    def __call__(self) -> float:
        return self.now


def summary(path: str, domain: str) -> dict[str, int]:
    day = read_day(path)
    assert day is not None
    result: dict[str, int] = day.domains[domain].to_json()["policies"][0]["summary"]
    return result


def test_the_store_writes_one_file_per_utc_day(tmp_path: Path) -> None:
    clock = Clock("2026-12-06T23:59:59+00:00")
    store = TLSReportStore(str(tmp_path / "r"), interval=3600, clock=clock)
    recorder: Recorder = store  # the contract target.remote uses
    recorder.record(TLSAttempt("a.example", "success", ()))
    clock.now += 1  # midnight UTC
    recorder.record(TLSAttempt("a.example", "starttls-not-supported", ()))
    store.flush()
    first = day_path(str(tmp_path / "r"), dt.date(2026, 12, 6))
    second = day_path(str(tmp_path / "r"), dt.date(2026, 12, 7))
    assert summary(first, "a.example") == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 0,
    }
    assert summary(second, "a.example")["total-failure-session-count"] == 1
    assert os.stat(second).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path / "r")) == ["2026-12-06.json", "2026-12-07.json"]
    store.close()


def test_a_restart_the_same_day_adds_to_the_file(tmp_path: Path) -> None:
    clock = Clock("2026-12-07T10:00:00+00:00")
    for _ in range(2):
        store = TLSReportStore(str(tmp_path), interval=3600, clock=clock)
        for _ in range(3):
            store.record(TLSAttempt("a.example", "success", ()))
        store.close()  # writes what is left
    path = day_path(str(tmp_path), dt.date(2026, 12, 7))
    assert summary(path, "a.example")["total-successful-session-count"] == 6


def test_flushes_add_only_what_is_new(tmp_path: Path) -> None:
    clock = Clock("2026-12-07T10:00:00+00:00")
    store = TLSReportStore(str(tmp_path), interval=3600, clock=clock)
    path = day_path(str(tmp_path), dt.date(2026, 12, 7))
    store.record(TLSAttempt("a.example", "success", ()))
    store.flush()
    store.flush()  # nothing new: same content
    store.record(TLSAttempt("a.example", "success", ()))
    store.flush()
    assert summary(path, "a.example")["total-successful-session-count"] == 2
    store.close()


def test_the_writer_thread_writes_every_interval(tmp_path: Path) -> None:
    store = TLSReportStore(str(tmp_path), interval=0.05)
    store.record(TLSAttempt("a.example", "success", ()))
    today = dt.datetime.now(dt.UTC).date()
    path = day_path(str(tmp_path), today)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the writer thread wrote nothing"
        time.sleep(0.02)
    store.close()
    assert summary(path, "a.example")["total-successful-session-count"] == 1


def test_record_never_raises_and_counts_what_it_loses(tmp_path: Path) -> None:
    store = TLSReportStore(str(tmp_path), interval=3600)
    broken = TLSAttempt(None, "success", ())  # type: ignore[arg-type]
    store.record(broken)
    assert store.lost == 1
    store.close()
    store.record(TLSAttempt("a.example", "success", ()))  # after close: not counted
    assert store.lost == 2
    assert os.listdir(tmp_path) == []  # nothing counted, nothing written


def test_a_failed_write_is_kept_and_tried_again(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the directory should be")
    clock = Clock("2026-12-07T10:00:00+00:00")
    store = TLSReportStore(str(blocker / "r"), interval=3600, clock=clock)
    store.record(TLSAttempt("a.example", "success", ()))
    with pytest.raises(OSError):
        store.flush()
    blocker.unlink()
    store.close()
    path = day_path(str(blocker / "r"), dt.date(2026, 12, 7))
    assert summary(path, "a.example")["total-successful-session-count"] == 1


def test_an_unreadable_day_file_is_set_aside(tmp_path: Path) -> None:
    clock = Clock("2026-12-07T10:00:00+00:00")
    path = day_path(str(tmp_path), dt.date(2026, 12, 7))
    Path(path).write_text("{not json")
    store = TLSReportStore(str(tmp_path), interval=3600, clock=clock)
    store.record(TLSAttempt("a.example", "success", ()))
    store.close()
    assert summary(path, "a.example")["total-successful-session-count"] == 1
    [aside] = [n for n in os.listdir(tmp_path) if ".bad-" in n]
    assert (tmp_path / aside).read_text() == "{not json"


async def test_the_shared_store_is_closed_when_the_container_stops(tmp_path: Path) -> None:
    nodes = parse_text(f"state_dir {tmp_path}\n", "t.conf")
    container = Container(nodes, config_file="t.conf")
    container.parse_globals()
    store = shared(container)
    assert shared(container) is store
    assert store.directory == str(tmp_path / "tls_reports")
    await container.start()
    store.record(TLSAttempt("a.example", "success", ()))
    await container.stop()
    today = dt.datetime.now(dt.UTC).date()
    path = day_path(store.directory, today)
    assert summary(path, "a.example")["total-successful-session-count"] == 1
    store.record(TLSAttempt("a.example", "success", ()))
    assert store.lost == 1  # closed with the container
    await asyncio.sleep(0)


async def test_on_stop_closers_run_after_the_modules_last_first(tmp_path: Path) -> None:
    """What the shared store relies on: closed once no module can record any more."""
    nodes = parse_text(f"state_dir {tmp_path}\n", "t.conf")
    container = Container(nodes, config_file="t.conf")
    ran: list[str] = []

    def closer(name: str, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            ran.append(name)
            if fail:
                raise RuntimeError(name)

        return close

    container.on_stop(closer("first"))
    container.on_stop(closer("second", fail=True))
    await container.start()
    await container.stop()
    assert ran == ["second", "first"]  # a failing closer does not stop the others
    await container.stop()
    assert ran == ["second", "first"]  # once only
