"""Making a DKIM-Signature field (RFC 6376 §3.5, §3.7, §5; RFC 8463).

Strategy. The body hash comes from `kittiwake.dkim.body`, streamed from
the buffer like verification's. The header hash input (the signed fields,
selected bottom-up and canonicalized, then the new field itself with an
empty `b=`) is `kittiwake.dkim.header.signed_header_data`, the code
verification uses (and byte for byte dkimpy's); `cryptography` signs it
(RSA PKCS#1 v1.5 with SHA-256, or Ed25519 over the SHA-256 hash, RFC 8463
§3). kittiwake writes the tags itself, so it controls exactly what goes
out: `v a c d s t [x] i h bh b` in that order, no `l=` and no `q=`, names
in `h=` in their configured spelling, the field folded before 78
columns, and `b=` last on its own lines, so that refolding its value
cannot change what was signed.

Runs in a worker thread: reading the buffer blocks, and an RSA-4096
signature costs milliseconds of CPU.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from kittiwake.dkim.body import BodySpec, Canon, hash_body
from kittiwake.dkim.header import signed_header_data
from kittiwake.dkim.keys import SigningKey
from kittiwake.message.header import Header

__all__ = ["SignRequest", "fields_to_sign", "signature_value"]

#: Columns a folded line of the field stays within (RFC 5322 §2.1.1 wants 78).
_WIDTH = 76


@dataclass(frozen=True, slots=True)
class SignRequest:
    """Everything a signature needs besides the message."""

    domain: str  # d=, already in the form the message allows (A-labels unless SMTPUTF8)
    selector: str
    key: SigningKey
    header_canon: Canon
    body_canon: Canon
    fields: tuple[str, ...]  # h=, in order, repeated for oversigning
    expiry: float = 0.0  # seconds after t= for x=; 0: no x=


def fields_to_sign(header: Header, oversign: Sequence[str], sign: Sequence[str]) -> list[str]:
    """`h=`: each oversigned name (count + 1) times, then each signed name count times.

    A name listed twice (any case, in either list) counts once, where it
    first appears (docs/modify.md, "Signed fields"). Signing a name once
    more than it occurs means a field of that name added later breaks the
    signature (RFC 6376 §8.15).
    """
    seen: set[str] = set()
    out: list[str] = []
    for names, extra in ((oversign, 1), (sign, 0)):
        for name in names:
            key = name.lower()
            if key in seen:
                continue
            seen.add(key)
            out.extend([name] * (header.count(name) + extra))
    return out


def _fold(tags: Sequence[tuple[str, str]]) -> str:
    """`tag=value;` items on lines of at most `_WIDTH` columns.

    A line breaks between items, or inside `h=` between two names (RFC
    6376 §3.5 allows folding white space around each colon there).
    """
    tokens: list[tuple[str, bool]] = []  # (text, follows the previous one without a space)
    for name, value in tags:
        if name != "h":
            tokens.append((f"{name}={value};", False))
            continue
        names = value.split(":")
        for i, field in enumerate(names):
            end = ":" if i < len(names) - 1 else ";"
            tokens.append((("h=" if i == 0 else "") + field + end, i > 0))
    lines: list[str] = []
    line = ""
    column = len("DKIM-Signature: ")
    for text, glued in tokens:
        space = "" if glued or not line else " "
        if line and column + len(space) + len(text) > _WIDTH:
            lines.append(line)
            line, column = text, 1 + len(text)
        else:
            line += space + text
            column += len(space) + len(text)
    lines.append(line)
    return "\r\n\t".join(lines)


def signature_value(
    headers: Sequence[Sequence[bytes]], body: BinaryIO, request: SignRequest
) -> str:
    """The value of the new DKIM-Signature field (after `DKIM-Signature: `).

    `headers` is the message's header as `verify.dkimpy_headers` gives it,
    `body` a reader of the body (blocking: call from a worker thread).
    """
    spec = BodySpec(request.body_canon)
    body_hash = hash_body(body, [spec]).digest(spec)
    now = int(time.time())
    tags = [
        ("v", "1"),
        ("a", request.key.algorithm),
        ("c", f"{request.header_canon}/{request.body_canon}"),
        ("d", request.domain),
        ("s", request.selector),
        ("t", str(now)),
    ]
    if request.expiry > 0:
        tags.append(("x", str(now + int(request.expiry))))
    tags += [
        ("i", f"@{request.domain}"),
        ("h", ":".join(request.fields)),
        ("bh", base64.b64encode(body_hash).decode("ascii")),
    ]
    unsigned = _fold(tags) + "\r\n\tb="
    data = signed_header_data(
        headers,
        [name.lower().encode() for name in request.fields],
        (b"DKIM-Signature", b" " + unsigned.encode("utf-8") + b"\r\n"),
        relaxed=request.header_canon == "relaxed",
    )
    signature = base64.b64encode(request.key.sign(data)).decode("ascii")
    folded = "\r\n\t".join(signature[i : i + 72] for i in range(0, len(signature), 72))
    return unsigned + folded
