"""Routing: source and destination selection, rejects, splitting across targets,
modifiers, original recipients (docs/pipeline.md, docs/modify.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipefakes import EVENTS, FAKES, buffer, deliver, err, header, meta, pipe

from kittiwake.errors import SMTPError

SOURCES = """
  source example.org {
    deliver_to test by_domain
  }
  source boss@example.org Postmaster {
    deliver_to test by_address
  }
  source \u00e9.example.com {
    deliver_to test idn
  }
  source_in &senders {
    deliver_to test by_table
  }
  default_source {
    deliver_to test default
  }
"""
SENDER_TABLE = 'table.static senders {\n  entry listed@example.net yes\n  entry "" yes\n}\n'


@pytest.mark.parametrize(
    ("sender", "target"),
    [
        ("someone@example.org", "by_domain"),
        ("SomeOne@EXAMPLE.ORG", "by_domain"),  # clean form lowercases the domain only
        ("boss@example.org", "by_address"),
        ("BOSS@example.org", "by_address"),  # rules compare case-insensitively
        ("x@sub.example.org", "default"),  # exact domain only
        ("x@xn--9ca.example.com", "idn"),  # A-label sender, U-label rule
        ("x@E\u0301.example.com", "idn"),  # NFC-insensitive
        ("x@\u00c9.EXAMPLE.com", "idn"),
        ("postmaster", "by_address"),
        ("POSTMASTER", "by_address"),
        ("listed@example.net", "by_table"),
        ("", "by_table"),  # the null sender's key is "" and the table has it
        ("other@example.net", "default"),
    ],
)
async def test_source_selection(sender: str, target: str, tmp_path: Path) -> None:
    pipeline = pipe(SOURCES, tmp_path, before=SENDER_TABLE)
    await deliver(pipeline, sender, ["rcpt@example.com"])
    delivered = {name for name, fake in FAKES.items() if getattr(fake, "committed", None)}
    assert delivered == {target}
    assert FAKES[target].committed[0].mail_from == sender


async def test_null_sender_without_table_entry_uses_default(tmp_path: Path) -> None:
    pipeline = pipe(SOURCES, tmp_path, before="table.static senders { entry a b }\n")
    await deliver(pipeline, "", ["rcpt@example.com"])
    assert FAKES["default"].committed


async def test_failing_source_table_is_skipped(tmp_path: Path) -> None:
    pipeline = pipe(
        "  source_in &broken { deliver_to test never }\n"
        "  source_in &senders { deliver_to test listed }\n"
        "  deliver_to test default\n",
        tmp_path,
        before=SENDER_TABLE + "table.test_broken broken { }\n",
    )
    await deliver(pipeline, "listed@example.net", ["r@example.com"])
    assert FAKES["listed"].committed and not FAKES["never"].started


async def test_unnormalisable_sender_after_rewriting(tmp_path: Path) -> None:
    pipeline = pipe(
        "  modify {\n    test m {\n      sender a@example.org broken\n    }\n  }\n  reject",
        tmp_path,
    )
    with pytest.raises(SMTPError) as info:
        await pipeline.start(meta(), "a@example.org")
    assert (info.value.code, info.value.enhanced) == (501, (5, 1, 7))
    assert info.value.message == "Unable to normalize the sender address"


DESTINATIONS = """
  destination example.org {
    deliver_to test by_domain
  }
  destination boss@example.org postmaster {
    deliver_to test by_address
  }
  destination \u00e9.example.com {
    deliver_to test idn
  }
  destination_in &broken {
    deliver_to test never
  }
  destination_in &rcpts {
    deliver_to test by_table
  }
  default_destination {
    deliver_to test default
  }
"""
RCPT_TABLES = (
    "table.static rcpts {\n  entry listed@example.net yes\n}\ntable.test_broken broken { }\n"
)


@pytest.mark.parametrize(
    ("rcpt", "target"),
    [
        ("x@example.org", "by_domain"),
        ("X@EXAMPLE.ORG", "by_domain"),
        ("boss@example.org", "by_address"),
        ("Boss@Example.Org", "by_address"),
        ("x@sub.example.org", "default"),
        ("x@xn--9ca.example.com", "idn"),
        ("X@E\u0301.EXAMPLE.com", "idn"),
        ("postmaster", "by_address"),
        ("PostMaster", "by_address"),
        ("postmaster@example.org", "by_domain"),  # not the bare postmaster rule
        ("listed@example.net", "by_table"),
        ("Listed@Example.NET", "by_table"),
        ("x@example.net", "default"),
    ],
)
async def test_destination_selection(rcpt: str, target: str, tmp_path: Path) -> None:
    pipeline = pipe(DESTINATIONS, tmp_path, before=RCPT_TABLES)
    await deliver(pipeline, "s@example.org", [rcpt])
    delivered = {name for name, fake in FAKES.items() if getattr(fake, "committed", None)}
    assert delivered == {target}
    # Targets get the address as the pipeline got it (clean form), not the key.
    assert FAKES[target].committed[0].rcpts == [rcpt]


async def test_unnormalisable_recipient_after_rewriting(tmp_path: Path) -> None:
    pipeline = pipe(
        "  modify {\n    test m {\n      rcpt a@example.org junk\n    }\n  }\n  deliver_to test t",
        tmp_path,
    )
    delivery = await pipeline.start(meta(), "s@example.org")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("a@example.org")
    assert (info.value.code, info.value.enhanced) == (553, (5, 1, 2))
    assert info.value.message == "Unable to normalize the recipient address"
    assert info.value.misc["effective_rcpt"] == "junk"


# --- reject -------------------------------------------------------------------------


async def test_source_level_reject_is_per_recipient(tmp_path: Path) -> None:
    """A reject in a source block answers RCPT, never MAIL (docs/pipeline.md)."""
    pipeline = pipe(
        '  source example.org {\n    reject 501 5.1.8 "Use Submission"\n  }\n'
        "  default_source {\n    deliver_to test t\n  }\n",
        tmp_path,
    )
    delivery = await pipeline.start(meta(), "user@example.org")  # MAIL succeeds
    for _ in range(2):
        with pytest.raises(SMTPError) as info:
            await delivery.add_rcpt("r@example.com")
        assert str(info.value) == "501 5.1.8 Use Submission"
    await delivery.abort()


async def test_reject_error_is_a_fresh_copy_per_rcpt(tmp_path: Path) -> None:
    pipeline = pipe(
        "  destination a.org { reject 450 }\n  default_destination { deliver_to test t }",
        tmp_path,
    )
    configured = pipeline.routing.default.rules["a.org"].reject
    delivery = await pipeline.start(meta(), "s@example.org")
    errors = []
    for rcpt in ("x@a.org", "y@a.org"):
        with pytest.raises(SMTPError) as info:
            await delivery.add_rcpt(rcpt)
        errors.append(info.value)
    assert str(errors[0]) == "450 4.7.0 Message rejected due to a local policy"
    assert errors[0].misc == {"effective_rcpt": "x@a.org"}
    assert errors[1].misc == {"effective_rcpt": "y@a.org"}
    assert configured is not None and configured.misc == {}
    assert errors[0] is not configured
    await delivery.add_rcpt("ok@b.org")  # other recipients are unaffected
    await delivery.body(header(), await buffer())
    await delivery.commit()
    assert FAKES["t"].committed[0].rcpts == ["ok@b.org"]


# --- splitting across targets ------------------------------------------------------------


async def test_message_split_across_targets(tmp_path: Path) -> None:
    pipeline = pipe(
        "  destination local.org { deliver_to &mbox }\n"
        "  default_destination { deliver_to &queue }\n",
        tmp_path,
        before="target.test mbox { }\ntarget.test queue { }\n",
    )
    await deliver(pipeline, "s@example.org", ["a@local.org", "b@remote.net", "c@local.org"])
    mbox, queue = FAKES["mbox"], FAKES["queue"]
    assert len(mbox.started) == 1 and len(queue.started) == 1
    assert mbox.committed[0].rcpts == ["a@local.org", "c@local.org"]
    assert queue.committed[0].rcpts == ["b@remote.net"]
    assert mbox.committed[0].header == queue.committed[0].header
    assert mbox.committed[0].data == queue.committed[0].data == b"foobar\r\n"


async def test_shared_named_target_gets_one_delivery(tmp_path: Path) -> None:
    pipeline = pipe(
        "  destination a.org { deliver_to &shared }\n"
        "  destination b.org { deliver_to &shared }\n"
        "  destination c.org { deliver_to test inline }\n"
        "  destination d.org { deliver_to test inline }\n"
        "  default_destination { reject }\n",
        tmp_path,
        before="target.test shared { }\n",
    )
    c_target = pipeline.routing.default.rules["c.org"].targets[0]
    d_target = pipeline.routing.default.rules["d.org"].targets[0]
    await deliver(pipeline, "s@example.org", ["x@a.org", "y@b.org", "z@c.org", "w@d.org"])
    shared = FAKES["shared"]
    assert len(shared.started) == 1
    assert shared.committed[0].rcpts == ["x@a.org", "y@b.org"]
    # Two inline definitions are two objects, so two deliveries.
    assert c_target is not d_target
    assert c_target.started[0].rcpts == ["z@c.org"]  # type: ignore[attr-defined]
    assert d_target.started[0].rcpts == ["w@d.org"]  # type: ignore[attr-defined]


async def test_several_deliver_to_in_one_block(tmp_path: Path) -> None:
    pipeline = pipe("  deliver_to test one\n  deliver_to test two\n", tmp_path)
    await deliver(pipeline, "s@example.org", ["a@x.org", "b@x.org"])
    assert FAKES["one"].committed[0].rcpts == ["a@x.org", "b@x.org"]
    assert FAKES["two"].committed[0].rcpts == ["a@x.org", "b@x.org"]


async def test_commit_in_delivery_start_order(tmp_path: Path) -> None:
    pipeline = pipe(
        "  destination b.org { deliver_to test second }\n"
        "  default_destination { deliver_to test first }\n",
        tmp_path,
    )
    await deliver(pipeline, "s@example.org", ["x@a.org", "y@b.org", "z@a.org"])
    assert [e for e in EVENTS if e.endswith(("commit", "body", "start s@example.org"))] == [
        "first start s@example.org",
        "second start s@example.org",
        "first body",
        "second body",
        "first commit",
        "second commit",
    ]


# --- modifiers -----------------------------------------------------------------------------

MODIFIED = """
  modify {
    test root {
      sender orig@example.org root@example.org
      rcpt list@example.org a@local.org b@remote.net
    }
  }
  source root@example.org {
    modify {
      test src {
        sender root@example.org final@example.org
        rcpt a@local.org a1@local.org a2@local.org
      }
    }
    destination local.org {
      modify {
        test dst {
          sender final@example.org ignored@example.org
          rcpt a2@local.org box@local.org
        }
      }
      deliver_to &mbox
    }
    default_destination {
      deliver_to &queue
    }
  }
  default_source {
    reject
  }
"""


async def test_modifiers_rewrite_and_expand(tmp_path: Path) -> None:
    pipeline = pipe(MODIFIED, tmp_path, before="target.test mbox { }\ntarget.test queue { }\n")
    m = meta("orig@example.org")
    delivery = await deliver(pipeline, "orig@example.org", ["list@example.org"], m=m)
    mbox, queue = FAKES["mbox"].committed[0], FAKES["queue"].committed[0]
    # The source block was chosen with the root-rewritten sender; targets get
    # the source-rewritten one; the destination-level change is ignored.
    assert mbox.mail_from == queue.mail_from == "final@example.org"
    assert delivery.source_addr == "final@example.org"
    assert mbox.rcpts == ["a1@local.org", "box@local.org"]
    assert queue.rcpts == ["b@remote.net"]
    assert m.original_rcpts == {
        "a1@local.org": "list@example.org",
        "box@local.org": "list@example.org",
        "b@remote.net": "list@example.org",
    }
    # Every state created once, closed once.
    for name in ("root", "src", "dst"):
        assert (FAKES[name].created, FAKES[name].closed) == (1, 1)


async def test_modifier_call_order(tmp_path: Path) -> None:
    pipeline = pipe(MODIFIED, tmp_path, before="target.test mbox { }\ntarget.test queue { }\n")
    await deliver(pipeline, "orig@example.org", ["list@example.org"], m=meta("orig@example.org"))
    mods = [e for e in EVENTS if e.split()[0] in ("root", "src", "dst")]
    assert mods == [
        "root sender orig@example.org",
        "src sender root@example.org",
        "root rcpt list@example.org",
        "src rcpt a@local.org",
        "src rcpt b@remote.net",
        "dst sender final@example.org",  # once, when the block is first used
        "dst rcpt a1@local.org",
        "dst rcpt a2@local.org",
        "root body",
        "src body",
        "dst body",
    ]


async def test_unchanged_recipient_is_not_in_original_rcpts(tmp_path: Path) -> None:
    pipeline = pipe("  deliver_to test t\n", tmp_path)
    m = meta()
    await deliver(pipeline, "s@example.org", ["a@x.org"], m=m)
    assert m.original_rcpts == {}


async def test_rcpt_error_after_partial_acceptance_is_not_rolled_back(tmp_path: Path) -> None:
    """A failing expanded address fails the RCPT; earlier targets keep theirs."""
    pipeline = pipe(
        "  modify {\n    test m {\n      rcpt list@x.org a@x.org b@x.org\n    }\n  }\n"
        "  deliver_to test t\n",
        tmp_path,
    )
    delivery = await pipeline.start(meta(), "s@example.org")
    FAKES["t"].rcpt_err["b@x.org"] = err(550, (5, 1, 1), "No such user")
    with pytest.raises(SMTPError) as info:
        await delivery.add_rcpt("list@x.org")
    assert info.value.misc["effective_rcpt"] == "b@x.org"
    assert FAKES["t"].started[0].rcpts == ["a@x.org"]
    await delivery.abort()
