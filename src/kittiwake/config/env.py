"""`{env:NAME}` placeholders: the last step of parsing.

Its own module because it works on a finished tree, after every import is
resolved, and is also called on its own (`substitute_env`) by code that
builds trees another way. The rules are maddy's, quirks included
(docs/config-language.md, "Environment variables"), written so that long
arguments full of `{env:` stay linear.
"""

from __future__ import annotations

from collections.abc import Mapping

from kittiwake.config.node import Node

__all__ = ["substitute_env"]

_ENV_OPEN = "{env:"


def substitute_env(nodes: list[Node], environ: Mapping[str, str]) -> None:
    """Replace `{env:NAME}` in every name and argument of a tree, in place.

    This is the last step of parsing, exposed so callers that build trees
    another way get the same treatment.
    """
    stack = [nodes]
    while stack:
        for node in stack.pop():
            if _ENV_OPEN in node.name:
                node.name = _expand_env(node.name, environ)
            args = node.args
            for i, arg in enumerate(args):
                if _ENV_OPEN in arg:
                    args[i] = _expand_env(arg, environ)
            if node.children:
                stack.append(node.children)


def _expand_env(s: str, environ: Mapping[str, str]) -> str:
    """maddy's two steps: replace known `{env:NAME}`, then delete leftovers.

    Step one is Go's strings.Replacer over `{env:KEY}` for every variable:
    left to right, non-overlapping, replacement text not re-scanned. Step
    two is the regexp `{env:([^$]+)}`, whose greedy match runs to the last
    `}` before the next `$` (the quirk docs/config-language.md describes
    under "Environment variables"). Both are written with `find` so that
    long arguments full of `{env:` stay linear.
    """
    parts: list[str] = []
    done = 0
    brace = -1
    i = s.find(_ENV_OPEN)
    while i != -1:
        body = i + len(_ENV_OPEN)
        if brace < body:
            brace = s.find("}", body)
            if brace == -1:
                break
        value = environ.get(s[body:brace])
        if value is not None:
            parts.append(s[done:i])
            parts.append(value)
            done = brace + 1
            i = s.find(_ENV_OPEN, done)
        else:
            i = s.find(_ENV_OPEN, i + 1)
    if parts:
        parts.append(s[done:])
        s = "".join(parts)

    parts = []
    done = 0
    dollar = -1
    last_brace = -1
    i = s.find(_ENV_OPEN)
    while i != -1:
        body = i + len(_ENV_OPEN)
        if dollar < body:
            dollar = s.find("$", body)
            if dollar == -1:
                dollar = len(s)
            last_brace = s.rfind("}", 0, dollar)
        if last_brace > body:  # at least one character before the `}`
            parts.append(s[done:i])
            done = last_brace + 1
            i = s.find(_ENV_OPEN, done)
        else:
            i = s.find(_ENV_OPEN, i + 1)
    if parts:
        parts.append(s[done:])
        s = "".join(parts)
    return s
