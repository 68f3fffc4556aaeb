"""`kittiwake config show [-d]`: the effective configuration reads back as itself.

A configuration written with every indirection the language has (macros,
a snippet, an imported file, `{env:...}`) is shown; the text has none of
them left, `config check` accepts it, and showing it again gives the same
text (the round trip). With `-d` every default a module used is added,
marked `# default`; that text is accepted too, and shown again (now as
explicit directives) it is the same text without the marks. The embedded
default configuration makes the same round trip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kw import env

CONF = """\
$(domain) = example.org
$(local_domains) = $(domain) example.com
state_dir {tmp}/state
hostname mx.$(domain)
tls off

(local_delivery) {{
    destination postmaster $(local_domains) {{
        deliver_to &local_mailboxes
    }}
}}

import extra

smtp tcp://127.0.0.1:{{env:SHOW_PORT}} {{
    import local_delivery
    default_destination {{
        reject 550 5.1.1 "User doesn't exist"
    }}
}}
"""

EXTRA = """\
storage.maildir local_mailboxes {
    path mail
    auto_create yes
}
"""

#: The effective configuration: what CONF means, spelled out.
SHOWN = """\
state_dir {tmp}/state
hostname mx.example.org
tls off

storage.maildir local_mailboxes {{
    path mail
    auto_create yes
}}

smtp tcp://127.0.0.1:2525 {{
    destination postmaster example.org example.com {{
        deliver_to &local_mailboxes
    }}
    default_destination {{
        reject 550 5.1.1 "User doesn't exist"
    }}
}}
"""


def kittiwake(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", *args],
        check=False,
        cwd=cwd,
        env=env(SHOW_PORT="2525", SHOW_SECRET=SECRET),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def show(path: Path, *flags: str) -> str:
    done = kittiwake("config", "show", "-c", str(path), *flags, cwd=path.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout


def check(path: Path) -> None:
    done = kittiwake("config", "check", "-c", str(path), cwd=path.parent)
    assert (done.returncode, done.stdout) == (0, f"{path}: configuration OK\n"), done.stderr


def test_show_expands_everything_and_reads_back(tmp_path: Path) -> None:
    (tmp_path / "extra").write_text(EXTRA, encoding="utf-8")
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(CONF.format(tmp=tmp_path), encoding="utf-8")
    shown = show(conf)
    assert shown == SHOWN.format(tmp=tmp_path)
    again = tmp_path / "shown.conf"
    again.write_text(shown, encoding="utf-8")
    check(again)
    assert show(again) == shown
    assert not (tmp_path / "state").exists()  # showing writes nothing


def test_defaults_are_marked_and_read_back(tmp_path: Path) -> None:
    (tmp_path / "extra").write_text(EXTRA, encoding="utf-8")
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(CONF.format(tmp=tmp_path), encoding="utf-8")
    full = show(conf, "-d")
    lines = full.splitlines()
    # Globals the file leaves out come first; module defaults end their block.
    assert lines[0] == f"runtime_dir {tmp_path}/state/run  # default"
    assert "    fsync yes  # default" in lines
    assert "    auto_create yes" in lines  # written in the file: not a default
    for line in (
        "    read_timeout 10m  # default",
        "    max_message_size 32M  # default",
        "    defer_sender_reject yes  # default",
        "    min_data_rate 500B  # default",
        "    dmarc yes  # default",  # the pipeline's, on unless written
    ):
        assert line in lines
    written = tmp_path / "full.conf"
    written.write_text(full, encoding="utf-8")
    check(written)
    assert show(written, "-d") == full.replace("  # default", "")


def test_embedded_default_round_trip(tmp_path: Path) -> None:
    done = kittiwake("config", "show", "-d", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "default.conf"
    written.write_text(done.stdout, encoding="utf-8")
    check(written)
    assert show(written, "-d") == done.stdout.replace("  # default", "")


SECRET = "hunter2"

#: Every directive that can hold a password, the secret mostly from the
#: environment as an operator keeps it out of the file.
SECRETS = """\
state_dir {tmp}/state
hostname mx.example.org
tls off

state.redis shared {{
    endpoint redis://app:{{env:SHOW_SECRET}}@127.0.0.1:6379/0
}}

state.redis ha {{
    sentinel mymaster 127.0.0.1:26379
    password {{env:SHOW_SECRET}}
    sentinel_password {{env:SHOW_SECRET}}
}}

table.sql_table users {{
    driver sqlite3
    dsn "file:{tmp}/users.db password={{env:SHOW_SECRET}}"
    table_name passwords
}}

auth.pass_table local_authdb {{
    table &users
}}

smtp tcp://127.0.0.1:2525 {{
    limits {{
        state &shared
        all rate 10 1s
    }}
    deliver_to smtp tcp://127.0.0.1:2526 {{
        auth plain relay-user {{env:SHOW_SECRET}}
    }}
}}

submission tcp://127.0.0.1:2587 {{
    auth &local_authdb
    limits {{
        state &ha
        all rate 10 1s
    }}
    deliver_to dummy
}}
"""


def test_passwords_are_hidden_unless_asked_for(tmp_path: Path) -> None:
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(SECRETS.format(tmp=tmp_path), encoding="utf-8")
    shown = show(conf)
    assert SECRET not in shown
    lines = shown.splitlines()
    for line in (
        "    endpoint redis://app:***@127.0.0.1:6379/0",
        "    password ***",
        "    sentinel_password ***",
        f'    dsn "file:{tmp_path}/users.db password=***"',
        "        auth plain relay-user ***",  # an inline definition's block too
    ):
        assert line in lines
    # Still a configuration (with wrong passwords): check reads it.
    hidden = tmp_path / "hidden.conf"
    hidden.write_text(shown, encoding="utf-8")
    check(hidden)

    everything = show(conf, "--show-secrets")
    assert everything.count(SECRET) == 5
    assert everything == shown.replace("***", SECRET)
    again = tmp_path / "everything.conf"
    again.write_text(everything, encoding="utf-8")
    assert show(again, "--show-secrets") == everything


def test_password_hashes_in_a_static_table_are_hidden(tmp_path: Path) -> None:
    """A `table.static` that `auth.pass_table` reads holds password hashes:
    an offline guesser needs nothing more, so they are hidden like passwords,
    referenced or inline."""
    conf = tmp_path / "kittiwake.conf"
    conf.write_text(
        f"""state_dir {tmp_path}/state
hostname mx.example.org
tls off

table.static users {{
    entry alice bcrypt:$2b$10$abcdefghijklmnopqrstuv
}}

auth.pass_table local_authdb {{
    table &users
}}

submission tcp://127.0.0.1:2587 {{
    auth &local_authdb
    deliver_to dummy
}}

submission tcp://127.0.0.1:2588 {{
    auth pass_table static {{
        entry bob bcrypt:$2b$10$zyxwvutsrqponmlkjihgfe
    }}
    deliver_to dummy
}}
""",
        encoding="utf-8",
    )
    shown = show(conf)
    assert "bcrypt:" not in shown
    assert "    entry alice ***" in shown.splitlines()
    assert "        entry bob ***" in shown.splitlines()
    assert show(conf, "--show-secrets").count("bcrypt:$2b$10$") == 2


def test_show_reports_config_errors_like_check(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("state_dir x\nsmtpd tcp://127.0.0.1:0 {\n}\n", encoding="utf-8")
    done = kittiwake("config", "show", "-c", str(conf), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"{conf}:2: unknown module or global directive: smtpd\n"
    assert done.stdout == ""
