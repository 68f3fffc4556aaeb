"""maddy's modules that kittiwake does not have, and what to use instead.

A maddy configuration mostly reads as it is (docs/from-maddy.md). What does
not is a handful of modules: the IMAP side (`imap`, `storage.imapsql`),
metrics, LDAP, spam filters. Before the container builds anything, the
whole tree is searched for them, so `config check` on a maddy file names
every one at once, each with the paragraph of docs/from-maddy.md that
replaces it, instead of stopping at the first "unknown module".

A name counts only while kittiwake has no module of that name: once one
lands, its advice goes quiet by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from kittiwake.config.node import Node
from kittiwake.errors import ConfigError

__all__ = ["ADVICE", "advice_for", "maddy_only"]

PAGE = "docs/from-maddy.md"

_STORAGE = f"kittiwake stores mail in Maildir (storage.maildir); see {PAGE}#storage"
_IMAP = f"kittiwake has no IMAP server, Dovecot serves the Maildir; see {PAGE}#imap"
_AUTH = f"let Dovecot check passwords (auth.dovecot_sasl); see {PAGE}#authentication"
_CHECKS = f"kittiwake has no such check; see {PAGE}#checks"

#: maddy module -> what to do about it (docs/from-maddy.md).
ADVICE: dict[str, str] = {
    "storage.imapsql": _STORAGE,
    "target.imapsql": _STORAGE,
    "storage.blob.fs": _STORAGE,
    "storage.blob.s3": _STORAGE,
    "imap": _IMAP,
    "imap_filters": f"filtering at delivery is Dovecot's job (Sieve); see {PAGE}#imap",
    "imap.filter.command": f"filtering at delivery is Dovecot's job (Sieve); see {PAGE}#imap",
    "dovecot_sasld": f"kittiwake asks Dovecot, not the other way round; see {PAGE}#authentication",
    "auth.ldap": _AUTH,
    "auth.netauth": _AUTH,
    "table.ldap": _AUTH,
    "table.netauth": _AUTH,
    "check.rspamd": _CHECKS,
    "check.milter": _CHECKS,
    "check.command": _CHECKS,
    "table.sql_query": f"kittiwake has no sql_query table; see {PAGE}#tables",
    "mx_auth.sts_preload": f"the MTA-STS preload list is not used; see {PAGE}#delivery",
}
#: Families of modules: any name under the prefix.
_FAMILIES = {
    "libdns.": f"kittiwake's ACME loader has no DNS-01 providers; see {PAGE}#tls",
}

#: Directives whose first argument names a module, and its namespace.
_NAMESPACE_OF_ARG = {
    "auth": "auth",
    "storage": "storage",
    "deliver_to": "target",
    "target": "target",
    "table": "table",
    "auth_map": "table",
    "step": "table",
    "optional_step": "table",
    "replace_rcpt": "table",
    "replace_sender": "table",
    "prepare_email": "table",
    "user_to_email": "table",
    "source_in": "table",
    "destination_in": "table",
    "loader": "tls.loader",
    "dns": "libdns",
    "imap_filter": "imap.filter",
}
#: Blocks whose children are module names (`check { spf }`).
_NAMESPACE_OF_CHILDREN = {"check": "check", "checks": "check", "modify": "modify"}


def advice_for(name: str) -> str | None:
    """The advice for a maddy module name, or None when there is none."""
    if name in ADVICE:
        return ADVICE[name]
    return next((text for prefix, text in _FAMILIES.items() if name.startswith(prefix)), None)


def _candidates(name: str, namespace: str) -> list[str]:
    if name.startswith("&") or not name:
        return []
    if "." in name or not namespace:
        return [name]
    return [f"{namespace}.{name}", name]


def _uses(nodes: list[Node]) -> Iterator[tuple[Node, str, str]]:
    """(node, name, namespace) for every module name the tree mentions."""
    stack: list[tuple[Node, str, bool]] = [(n, "", True) for n in reversed(nodes)]
    while stack:
        node, children_ns, top = stack.pop()
        if top:
            yield node, node.name, ""
        elif children_ns:
            yield node, node.name, children_ns
        elif node.name in _NAMESPACE_OF_ARG and node.args:
            yield node, node.args[0], _NAMESPACE_OF_ARG[node.name]
        inner = _NAMESPACE_OF_CHILDREN.get(node.name, "")
        if top and node.name == "checks":
            inner = "check"
        elif top and node.name == "modifiers":
            inner = "modify"
        stack.extend((child, inner, False) for child in reversed(node.block))


def maddy_only(nodes: list[Node], known: Callable[[str], bool]) -> list[ConfigError]:
    """One error per use of a maddy module kittiwake lacks, in file order."""
    found: list[ConfigError] = []
    for node, name, namespace in _uses(nodes):
        candidates = _candidates(name, namespace)
        if any(known(c) for c in candidates):
            continue
        for candidate in candidates:
            text = advice_for(candidate)
            if text is not None:
                found.append(node.error(f"{candidate}: {text}"))
                break
    return sorted(found, key=lambda e: (e.file, e.line))
