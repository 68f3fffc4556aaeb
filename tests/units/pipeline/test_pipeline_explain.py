"""`pipeline/explain.py` gives the answer the pipeline acts on, and touches nothing.

Each case runs the same envelope twice through one configured pipeline:
once delivered (the fakes record which target committed), once explained.
The explained target must be the delivered one. Explaining starts no
target, runs no check, and closes every modifier state it made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pipefakes import EVENTS, FAKES, deliver, meta, pipe

from kittiwake.pipeline.explain import explain_pipeline

ROUTES = """
  check {
    test root_check
  }
  modify {
    test aliases {
      rcpt info@example.org a@example.org b@example.net
      rcpt gone@example.org nobody@nowhere.example
    }
  }
  source example.org {
    destination_in &broken {
      deliver_to test never
    }
    destination example.org {
      deliver_to test local
    }
    destination boss@example.net {
      reroute {
        modify {
          test forward {
            rcpt boss@example.net boss@remote.example
          }
        }
        deliver_to test remote
      }
    }
    default_destination {
      reject 550 5.7.1 "No relaying"
    }
  }
  source_in &senders {
    deliver_to test listed
  }
  default_source {
    reject 501 5.1.8 "Not from here"
  }
"""
BEFORE = "table.static senders {\n  entry listed@example.net yes\n}\ntable.test_broken broken { }\n"


def targets_of(explained_rcpt: object) -> list[str]:
    return [
        target.name
        for routed in explained_rcpt.routed  # type: ignore[attr-defined]
        for target in routed.targets
    ]


@pytest.mark.parametrize(
    ("sender", "rcpt", "targets"),
    [
        ("x@example.org", "y@example.org", ["target.test local"]),
        ("x@example.org", "Y@Example.ORG", ["target.test local"]),
        ("x@example.org", "boss@example.net", ["reroute (t.conf:25)"]),
        ("listed@example.net", "anyone@anywhere.example", ["target.test listed"]),
    ],
)
async def test_explained_target_is_the_delivered_one(
    sender: str, rcpt: str, targets: list[str], tmp_path: Path
) -> None:
    pipeline = pipe(ROUTES, tmp_path, before=BEFORE)
    explained = await explain_pipeline(pipeline, meta(sender), sender, [rcpt])
    assert [e for e in EVENTS if " start " in e or e.startswith("root_check")] == []
    assert all(not getattr(f, "started", []) for f in FAKES.values())
    assert FAKES["aliases"].created == FAKES["aliases"].closed == 1
    [answer] = explained.recipients
    assert answer.reply is None
    assert targets_of(answer) == targets
    assert explained.checks == ["check.test root_check"]

    EVENTS.clear()
    await deliver(pipeline, sender, [rcpt])
    delivered = {name for name, fake in FAKES.items() if getattr(fake, "committed", None)}
    nested = answer.routed[0].targets[0].nested
    if nested is not None:
        delivered_inner = targets_of(nested.recipients[0])
        assert delivered_inner == ["target.test remote"]
        assert nested.recipients[0].rewrites[0].result == ["boss@remote.example"]
        assert delivered == {"remote"}
    else:
        assert {t.rsplit(" ", 1)[1] for t in targets} == delivered


async def test_one_alias_meets_a_reject_and_the_failing_table_is_reported(
    tmp_path: Path,
) -> None:
    pipeline = pipe(ROUTES, tmp_path, before=BEFORE)
    explained = await explain_pipeline(pipeline, meta(), "x@example.org", ["info@example.org"])
    [answer] = explained.recipients
    assert [(r.modifier, r.result) for r in answer.rewrites] == [
        ("modify.test aliases", ["a@example.org", "b@example.net"])
    ]
    first, second = answer.routed
    assert (first.destination.label, first.destination.how) == ("destination example.org", "domain")
    assert first.destination.skipped == [
        "&broken: lookup of 'a@example.org' failed: database is down"
    ]
    assert second.destination.label == "default_destination"
    assert second.reject is not None and answer.reply == second.reject
    assert (answer.reply.code, answer.reply.enhanced, answer.reply.text) == (
        550,
        "5.7.1",
        "No relaying",
    )


async def test_source_reject_and_sender_table(tmp_path: Path) -> None:
    pipeline = pipe(ROUTES, tmp_path, before=BEFORE)
    other = await explain_pipeline(pipeline, meta(), "x@example.com", ["y@example.org"])
    assert other.source is not None and other.source.label == "default_source"
    assert other.recipients[0].reply is not None
    assert other.recipients[0].reply.code == 501
    listed = await explain_pipeline(pipeline, meta(), "listed@example.net", ["y@example.org"])
    assert listed.source is not None
    assert (listed.source.how, listed.source.table) == ("table", "&senders")
