"""Man pages and shell completion (tools/manpages.py, docs/production.md).

- The committed files are what the generator makes from today's parser and
  docs/: a new option or a changed docs page fails here until
  `python tools/manpages.py` is run again.
- Both pages render with groff's and man's warnings on, and the rendered
  kittiwake(1) names every command and option of the parser.
- The bash completion, sourced into a real bash, completes commands,
  options and option values; the zsh one does the same in a real zsh,
  with the completion system's three functions it calls stood in for.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from kw import need_tool

ROOT = Path(__file__).resolve().parents[2]
MAN1 = ROOT / "contrib" / "man" / "man1" / "kittiwake.1"
MAN5 = ROOT / "contrib" / "man" / "man5" / "kittiwake.conf.5"
BASH = ROOT / "contrib" / "completion" / "kittiwake.bash"
ZSH = ROOT / "contrib" / "completion" / "_kittiwake"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kittiwake_manpages", ROOT / "tools/manpages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _generator()


def test_generated_files_are_up_to_date() -> None:
    generated = gen.generate()
    assert set(generated) == {p.relative_to(ROOT) for p in (MAN1, MAN5, BASH, ZSH)}
    for path, text in generated.items():
        committed = (ROOT / path).read_text()
        assert committed == text, f"{path} is out of date: run python tools/manpages.py"


@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page: Path) -> None:
    groff = need_tool("groff", "groff-base")
    man = need_tool("man", "man-db")
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    result = subprocess.run(
        [man, "--warnings", "-E", "UTF-8", "-l", str(page)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert len(result.stdout.splitlines()) > 100


def test_man1_names_every_command_and_option() -> None:
    man = need_tool("man", "man-db")
    text = subprocess.run(
        [man, "-E", "UTF-8", "-l", str(MAN1)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "200"},
        timeout=60,
        check=True,
    ).stdout
    tree = gen.command_tree()
    for cmd in tree.walk():
        if cmd.path:
            assert f"   {cmd.name}\n" in text, cmd.name  # its own subsection
        for opt in cmd.options:
            for flag in opt.flags:
                assert flag in text, (cmd.name, flag)
    for section in ("SYNOPSIS", "COMMANDS", "SIGNALS", "EXIT STATUS", "ENVIRONMENT"):
        assert f"\n{section}\n" in text, section


def test_man5_has_the_language_and_the_module_index() -> None:
    man = need_tool("man", "man-db")
    text = subprocess.run(
        [man, "-E", "UTF-8", "-l", str(MAN5)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "200"},
        timeout=60,
        check=True,
    ).stdout
    for heading in ("Directives and blocks", "Snippets", "Macros", "Global directives"):
        assert f"   {heading}\n" in text, heading
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    index = (ROOT / "docs" / "index.md").read_text()
    for page in pages:
        if f"]({page})" in index:
            assert f"(docs/{page})" in text, page


def subcommands(name: str) -> list[str]:
    """The parser's subcommands of `kittiwake NAME`, in its order."""
    (cmd,) = [c for c in gen.command_tree().subcommands if c.path == (name,)]
    return [sub.path[-1] for sub in cmd.subcommands]


def bash_complete(*words: str, cwd: Path | None = None) -> list[str]:
    """What the completion offers for the last word of `kittiwake WORDS...`."""
    bash = need_tool("bash", "bash")
    line = ["kittiwake", *words]
    script = "\n".join(
        [
            f"source {BASH}",
            "COMP_WORDS=(" + " ".join(f"'{w}'" for w in line) + ")",
            f"COMP_CWORD={len(line) - 1}",
            "_kittiwake",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    result = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [w for w in result.stdout.splitlines() if w]


def test_bash_completes_commands_options_and_values(tmp_path: Path) -> None:
    assert bash_complete("qu") == ["queue"]
    assert bash_complete("config", "ch") == ["check"]
    assert bash_complete("queue", "") == subcommands("queue")
    assert bash_complete("run", "--debug.s") == ["--debug.smtpport"]
    assert bash_complete("run", "--debug.dnsoverride", "127.0.0.1:53", "--c") == ["--config"]
    assert bash_complete("dkim", "keygen", "--algo", "") == ["rsa2048", "rsa4096", "ed25519"]
    (tmp_path / "kittiwake.conf").write_text("")
    assert bash_complete("run", "-c", "kitt", cwd=tmp_path) == ["kittiwake.conf"]
    # Every command of the parser, from its first two letters.
    for cmd in gen.command_tree().walk():
        if cmd.path:
            offered = bash_complete(*cmd.path[:-1], cmd.path[-1][:2])
            assert cmd.path[-1] in offered, cmd.name


def test_bash_registers_the_function() -> None:
    bash = need_tool("bash", "bash")
    result = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", f"source {BASH}; complete -p kittiwake"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() == "complete -o default -F _kittiwake kittiwake", result


#: compsys functions _kittiwake calls, stood in for: each prints what it
#: would offer that starts with the word being completed.
ZSH_STUBS = r"""
_describe() {
    local entry
    for entry in "${(@P)${@[-1]}}"; do
        entry=${entry%%:*}
        [[ $entry == ${words[CURRENT]}* ]] && print -r -- $entry
    done
    return 0
}
compadd() {
    local w
    for w in "${@[2,-1]}"; do [[ $w == ${words[CURRENT]}* ]] && print -r -- $w; done
    return 0
}
_files() { print -r -- FILES }
_message() { print -r -- MESSAGE }
"""


def zsh_complete(*words: str) -> list[str]:
    zsh = need_tool("zsh", "zsh")
    line = ["kittiwake", *words]
    script = "\n".join(
        [
            ZSH_STUBS,
            "words=(" + " ".join(f"'{w}'" for w in line) + ")",
            f"CURRENT={len(line)}",
            f"source {ZSH}",
        ]
    )
    result = subprocess.run(
        [zsh, "-f", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.split()


def test_zsh_completes_commands_options_and_values() -> None:
    zsh = need_tool("zsh", "zsh")
    syntax = subprocess.run(
        [zsh, "-n", str(ZSH)], capture_output=True, text=True, timeout=30, check=False
    )
    assert syntax.returncode == 0, syntax.stderr
    assert ZSH.read_text().startswith("#compdef kittiwake\n")
    assert zsh_complete("qu") == ["queue"]
    assert zsh_complete("config", "") == subcommands("config")
    assert zsh_complete("run", "--debug.s") == ["--debug.smtpport"]
    assert zsh_complete("dkim", "keygen", "--algo", "e") == ["ed25519"]
    assert zsh_complete("run", "-c", "") == ["FILES"]
    assert zsh_complete("sendmail", "-") == ["FILES"]
