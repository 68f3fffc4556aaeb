"""Hiding secrets from what kittiwake prints (docs/cli.md, `config show`).

A password can sit in a configuration directive, often through
`{env:NAME}` so that the file itself holds none; `kittiwake config show`
prints the configuration with every value substituted, and its output
ends up in bug reports and chat. Modules therefore mark the directives
that hold a secret (`Directives.hide`), and the printed text carries
`HIDDEN` in the secret's place. The same helpers keep passwords out of
log lines and error messages that show a URL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["HIDDEN", "dsn_argument", "url"]

#: What is printed instead of a secret; reads back as a (wrong) value, so
#: the text stays a configuration that `config check` can read.
HIDDEN = "***"


def url(text: str) -> str:
    """`text` with the password of its `user:password@` part hidden, if it has one."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:  # not a URL at all: nothing recognisable to hide
        return text
    if password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:{HIDDEN}@{host}").geturl()


#: `password=VALUE` in a key/value DSN (PostgreSQL's conninfo allows spaces
#: around `=` and a quoted value).
_DSN_PASSWORD = re.compile(r"(?i)\b(password|pass|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def dsn_argument(arg: str) -> str:
    """One argument of a database DSN with its passwords hidden: each
    `password=...` pair, and the password of a URL (`postgres://u:p@host/db`)."""
    arg = _DSN_PASSWORD.sub(lambda m: f"{m[1]}{m[2]}{HIDDEN}", arg)
    return " ".join(url(word) if "://" in word else word for word in arg.split(" "))
