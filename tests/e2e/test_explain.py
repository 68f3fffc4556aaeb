"""`kittiwake explain`: the answer for real configurations, from the real command.

Each test writes a configuration, runs `python -m kittiwake explain` as a
process and checks the whole answer: which blocks matched (with their
lines), what the aliases became, which target each final address ends in,
or which `reject` it meets. Two configurations:

- the seed's example `smtp` block (`fixtures/seed-smtp.conf`, verbatim
  except its certificate line, which names files this machine lacks; the
  listen address stays, since explain binds nothing);
- `ROUTES` below: `replace_rcpt` through a `table.file` and a
  `table.static`, a source block that rejects, a `reroute` that aliases
  again and hands to a queue, and rejections at both levels.

It also checks that nothing is written: no state directory, no Maildir.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from kw import env

SEED = Path(__file__).resolve().parent / "fixtures" / "seed-smtp.conf"
SEED_TLS = "    tls /etc/ssl/private/cert.pem /etc/ssl/private/pkey.key"


def explain(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", "explain", "-c", str(conf), *args],
        check=False,
        cwd=conf.parent,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def explain_json(conf: Path, *args: str) -> dict[str, Any]:
    done = explain(conf, "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- the seed's example -----------------------------------------------------------


def seed_conf(tmp: Path) -> Path:
    """Two lines of preamble, then the example: its line N is line N + 2 here."""
    text = SEED.read_text(encoding="utf-8")
    assert text.count(SEED_TLS) == 1
    conf = tmp / "seed.conf"
    conf.write_text(
        f"state_dir {tmp}/state\n"
        f"storage.maildir local_mailboxes {{ path {tmp}/mail }}\n"
        + text.replace(SEED_TLS, "    tls self_signed"),
        encoding="utf-8",
    )
    return conf


def test_seed_example_local_domain_and_the_rest(tmp_path: Path) -> None:
    conf = seed_conf(tmp_path)
    report = explain_json(conf, "--from", "alice@example.com", "--to", "bob@example.org")
    # The fixture's `smtp` opens on its line 6, `destination example.org` is
    # its line 27: lines 8 and 29 here.
    assert report["endpoint"] == {
        "module": "smtp",
        "addresses": ["tcp://0.0.0.0:25"],
        "file": str(conf),
        "line": 8,
        "chosen": "the first smtp endpoint; choose another with --endpoint",
    }
    pipeline = report["pipeline"]
    assert pipeline["source"]["label"] == "default_source (implicit)"
    assert pipeline["source"]["how"] == "default"
    [rcpt] = pipeline["recipients"]
    assert rcpt["reply"] is None
    [routed] = rcpt["routed"]
    dest = routed["destination"]
    assert (dest["label"], dest["line"], dest["how"]) == ("destination example.org", 29, "domain")
    assert [(t["address"], t["name"], t["kind"]) for t in routed["targets"]] == [
        ("bob@example.org", "&local_mailboxes", "storage.maildir")
    ]
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "mail").exists()


def test_seed_example_text_rejects_other_domains(tmp_path: Path) -> None:
    conf = seed_conf(tmp_path)
    done = explain(
        conf, "--from", "alice@example.com", "--to", "Bob@EXAMPLE.org", "--to", "eve@example.net"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"endpoint: smtp tcp://0.0.0.0:25 at {conf}:8 "
        "(the first smtp endpoint; choose another with --endpoint)"
    )
    assert f"  destination: destination example.org at {conf}:29 (domain rule example.org)" in lines
    assert "    Bob@example.org -> &local_mailboxes (storage.maildir)" in lines
    # The fixture's `default_destination` is its line 30; `reject` has the
    # defaults of docs/pipeline.md.
    assert (
        f"  destination: default_destination at {conf}:32 (no rule matched eve@example.net)"
        in lines
    )
    assert lines[-1] == "  result: 554 5.7.0 Message rejected due to a local policy"
    assert lines.count("  result: accepted") == 1


# -- aliases, reroute, rejects -----------------------------------------------------

ROUTES = """\
state_dir {tmp}/state
hostname mx.example.org
tls off

storage.maildir local_mailboxes {{
    path {tmp}/mail
}}
target.remote outbound {{
}}
target.queue remote_queue {{
    target &outbound
}}
table.file aliases {{
    file {tmp}/aliases
}}

smtp tcp://127.0.0.1:2525 {{
    check {{
        require_tls
    }}
    modify {{
        replace_rcpt &aliases
        replace_rcpt static {{
            entry postmaster postmaster@example.org
        }}
    }}
    source example.org {{
        reject 501 5.1.8 "Use Submission"
    }}
    default_source {{
        destination example.org {{
            deliver_to &local_mailboxes
        }}
        destination forward.example.org {{
            reroute {{
                modify {{
                    replace_rcpt static {{
                        entry dave@forward.example.org dave@remote.example.net
                    }}
                }}
                destination remote.example.net {{
                    deliver_to &remote_queue
                }}
                default_destination {{
                    reject 550 5.1.1 "No such forward"
                }}
            }}
        }}
        default_destination {{
            reject 550 5.7.1 "Relaying denied"
        }}
    }}
}}

submission tcp://127.0.0.1:2587 {{
    auth dummy
    deliver_to &remote_queue
}}
"""


def routes_conf(tmp: Path) -> Path:
    (tmp / "aliases").write_text(
        "info: alice@example.org, bob@example.org\nsales: carol\n", encoding="utf-8"
    )
    conf = tmp / "routes.conf"
    conf.write_text(ROUTES.format(tmp=tmp), encoding="utf-8")
    return conf


def targets(rcpt: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (t["address"], t["name"], t["kind"]) for routed in rcpt["routed"] for t in routed["targets"]
    ]


def test_aliases_reroute_and_rejects(tmp_path: Path) -> None:
    conf = routes_conf(tmp_path)
    rcpts = [
        "info@example.org",
        "sales@example.org",
        "postmaster",
        "dave@forward.example.org",
        "eve@forward.example.org",
        "x@nowhere.net",
    ]
    args = [arg for r in rcpts for arg in ("--to", r)]
    pipeline = explain_json(conf, "--from", "x@sender.net", *args)["pipeline"]
    assert pipeline["checks"] == ["require_tls"]
    assert pipeline["modifiers"] == ["modify.replace_rcpt &aliases", "modify.replace_rcpt static"]
    assert (pipeline["source"]["label"], pipeline["source"]["line"]) == ("default_source", 30)
    info, sales, postmaster, dave, eve, nowhere = pipeline["recipients"]

    # table.file: one alias, two mailboxes; the table's answer is shown.
    assert info["rewrites"] == [
        {
            "level": "root",
            "modifier": "modify.replace_rcpt &aliases",
            "given": "info@example.org",
            "result": ["alice@example.org", "bob@example.org"],
        }
    ]
    assert targets(info) == [
        ("alice@example.org", "&local_mailboxes", "storage.maildir"),
        ("bob@example.org", "&local_mailboxes", "storage.maildir"),
    ]
    assert [r["destination"]["line"] for r in info["routed"]] == [31, 31]
    assert info["reply"] is None
    # A local-part alias keeps the domain (docs/modify.md).
    assert targets(sales) == [("carol@example.org", "&local_mailboxes", "storage.maildir")]
    # table.static, inline: the bare postmaster gets a domain.
    assert postmaster["rewrites"][0]["modifier"] == "modify.replace_rcpt static"
    assert targets(postmaster) == [
        ("postmaster@example.org", "&local_mailboxes", "storage.maildir")
    ]

    # reroute: the nested pipeline aliases again, then the queue.
    [(address, name, kind)] = targets(dave)
    assert (address, name, kind) == ("dave@forward.example.org", f"reroute ({conf}:35)", "reroute")
    nested = dave["routed"][0]["targets"][0]["nested"]
    [inner] = nested["recipients"]
    assert inner["rewrites"][0]["result"] == ["dave@remote.example.net"]
    assert targets(inner) == [
        ("dave@remote.example.net", "&remote_queue", "target.queue → target.remote")
    ]
    assert inner["routed"][0]["destination"]["line"] == 41
    assert dave["reply"] is None

    # The nested pipeline's reject is the RCPT's reply.
    assert eve["reply"] == {
        "code": 550,
        "enhanced": "5.1.1",
        "text": "No such forward",
        "reason": "reject directive used",
    }
    assert nowhere["routed"][0]["destination"]["line"] == 49
    assert (nowhere["reply"]["code"], nowhere["reply"]["enhanced"]) == (550, "5.7.1")
    assert nowhere["reply"]["text"] == "Relaying denied"


def test_source_block_reject_meets_every_recipient(tmp_path: Path) -> None:
    conf = routes_conf(tmp_path)
    done = explain(conf, "--from", "a@example.org", "--to", "info@example.org")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"  source: source example.org at {conf}:27 (domain rule example.org)" in lines
    # The root alias still runs first; the source block's reject is per RCPT.
    assert (
        "  rewrite (root) modify.replace_rcpt &aliases: "
        "info@example.org -> alice@example.org, bob@example.org"
    ) in lines
    assert lines[-1] == "  result: 501 5.1.8 Use Submission"


def test_endpoint_by_name_and_address(tmp_path: Path) -> None:
    conf = routes_conf(tmp_path)
    by_name = explain_json(
        conf, "--endpoint", "submission", "--from", "a@example.org", "--to", "z@far.net"
    )
    assert by_name["endpoint"]["line"] == 55
    assert by_name["notes"] == [
        "submission requires authentication: without --auth the client would get "
        "530 5.7.0 Authentication required at MAIL FROM"
    ]
    assert targets(by_name["pipeline"]["recipients"][0]) == [
        ("z@far.net", "&remote_queue", "target.queue → target.remote")
    ]
    by_address = explain_json(
        conf,
        "--endpoint",
        "tcp://127.0.0.1:2587",
        "--auth",
        "a@example.org",
        "--from",
        "a@example.org",
        "--to",
        "z@far.net",
    )
    assert by_address["endpoint"]["chosen"] == "as --endpoint asked"
    assert by_address["notes"] == []
    assert by_address["client"] == {"ip": None, "helo": "", "auth": "a@example.org"}
    bad_ip = explain(conf, "--ip", "999.1.1.1", "--from", "a@b.org", "--to", "c@d.org")
    assert bad_ip.returncode == 2
    assert "invalid IP address '999.1.1.1'" in bad_ip.stderr
    unknown = explain(conf, "--endpoint", "lmtp", "--from", "a@b.org", "--to", "c@d.org")
    assert unknown.returncode == 2
    assert "--endpoint lmtp: no such endpoint" in unknown.stderr


def test_unusable_addresses_are_refused_by_the_endpoint(tmp_path: Path) -> None:
    conf = routes_conf(tmp_path)
    report = explain_json(
        conf, "--from", "a@b.org", "--to", "<bad@@example.org>", "--to", "z@nowhere.net"
    )
    bad, good = report["pipeline"]["recipients"]
    assert (bad["rcpt"], bad["routed"]) == ("<bad@@example.org>", [])
    assert (bad["reply"]["code"], bad["reply"]["enhanced"]) == (501, "5.1.3")
    assert good["reply"]["text"] == "Relaying denied"
    sender = explain_json(conf, "--from", "postmaster", "--to", "z@nowhere.net")
    assert sender["pipeline"] is None
    assert sender["refused"]["code"] == 501


# -- the example of docs/cli.md ---------------------------------------------------------

CLI_PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_documented_example_is_what_the_command_prints(tmp_path: Path) -> None:
    """docs/cli.md shows a configuration and explain's answer: they must agree."""
    page = CLI_PAGE.read_text(encoding="utf-8")
    section = page[page.index("## `kittiwake explain`") :]
    conf = section.split("```conf\n", 1)[1].split("```", 1)[0]
    shown = section.split("```text\n$ ", 1)[1].split("```", 1)[0]
    command, _, expected = shown.partition("\n    ")
    rest, _, expected = expected.partition("\n")
    words = (command.removesuffix("\\") + rest).split()
    assert words[:2] == ["kittiwake", "explain"]
    (tmp_path / "kittiwake.conf").write_text(conf, encoding="utf-8")
    (tmp_path / "kittiwake-data").mkdir()
    (tmp_path / "kittiwake-data" / "aliases").write_text("info: alice, bob\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "kittiwake", *words[1:]],
        check=False,
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
