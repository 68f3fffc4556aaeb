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
    """`text` with its passwords hidden: the one in `user:password@`, and
    `password=` (or `pass=`, `pwd=`) in the query string.

    A password with an unencoded `/`, `?`, `#` or `@` in it is not a
    well-formed URL, but it is still somebody's password: then everything
    between `://` and the last `@` after the user name is hidden.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    try:
        parts = urlsplit(text)
        well_formed = parts.password is not None and "@" in parts.netloc
    except ValueError:
        well_formed = False
    if well_formed:
        host = parts.netloc.rsplit("@", 1)[1]
        rest = parts._replace(netloc=f"{parts.username or ''}:{HIDDEN}@{host}").geturl()
        rest = rest.partition("://")[2]
    elif "@" in rest:
        userinfo, _, after = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if colon and "/" not in user:
            rest = f"{user}:{HIDDEN}@{after}"
    return scheme + sep + _QUERY_PASSWORD.sub(lambda m: m[1] + HIDDEN, rest)


#: A password among a URL's query parameters (redis-py takes `?password=`).
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|pass|pwd)=)[^&#]*")


#: `password=VALUE` in a key/value DSN (PostgreSQL's conninfo allows spaces
#: around `=` and a quoted value), or among a file URI's options, which `&`
#: or `;` end.
_DSN_PASSWORD = re.compile(r"(?i)\b(password|pass|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;]+)")


def dsn_argument(arg: str) -> str:
    """One argument of a database DSN with its passwords hidden: each
    `password=...` pair, and the password of a URL (`postgres://u:p@host/db`)."""
    arg = _DSN_PASSWORD.sub(lambda m: f"{m[1]}{m[2]}{HIDDEN}", arg)
    return " ".join(url(word) if "://" in word else word for word in arg.split(" "))
