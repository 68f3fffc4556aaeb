"""DKIM tag lists and the signed header data (RFC 6376 §3.2, §3.4.1, §3.4.2, §3.7).

Strategy. Verifying a signature hashes a few header fields, canonicalized,
then the DKIM-Signature field itself with its `b=` value removed; signing
hashes the same data for the field it is about to add. dkimpy does this
generically (a regular expression per field and per operation, and a
`b=` remover whose pattern backtracks on every base64 character: about
60 µs for one RSA-2048 signature, more than the RSA verification). This
module does the same work in a few C-level passes per field: only the
selected fields are canonicalized, white space is rewritten only where
there is some to rewrite, and `b=` is found with a pattern that scans
its value as one character class.

Every result is byte for byte what dkimpy computes, quirks included,
because both verifiers must agree on what was signed (tests/units/dkim
compares the two on random input):

* fields are chosen bottom-up, each name of `h=` taking the next field of
  that name above the one it took last (RFC 6376 §5.4.2); with `simple`
  a name matches only when it equals the field's name up to case, with
  `relaxed` trailing white space in the name does not count;
* `relaxed` lowercases the name, removes each CR LF and each bare LF,
  turns runs of spaces and tabs into one space and strips the value's
  ends (`bytes.strip`, which also takes CR, LF, VT and FF);
* `b=` is removed from the DKIM-Signature field wherever a `;` or white
  space, `b`, optional white space and `=` start a run of base64 and
  white space: the run up to its last base64 character goes, and a final
  line end of the field with it; the field is hashed without its
  trailing white space and line end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import dkim.util

__all__ = ["parse_tags", "remove_b_value", "signed_header_data"]

#: Where a `b=` tag's value starts: `;` or white space, `b`, white space, `=`.
_B_TAG = re.compile(rb"[;\s]b\s*=")
#: The run of base64 and white space after it (one character class: no backtracking).
_B64_RUN = re.compile(rb"[\sA-Za-z0-9+/=]*")
#: Runs of spaces and tabs that relaxed canonicalization turns into one space.
_WSP_RUN = re.compile(rb"[\t ]+")


def parse_tags(tag_list: bytes) -> dict[bytes, bytes]:
    """A `tag=value; ...` list (RFC 6376 §3.2) as a dict; unfolding is left to the caller.

    Each tag name must start with a letter and appear once. Raises
    dkimpy's `InvalidTagSpec` or `DuplicateTag` with the same arguments
    dkimpy's `parse_tag_value` gives, so reasons read the same.
    """
    tags: dict[bytes, bytes] = {}
    specs = tag_list.strip().split(b";")
    if not specs[-1]:
        specs.pop()  # a trailing semicolon is allowed
    for spec in specs:
        name, eq, value = spec.partition(b"=")
        if not eq:
            raise dkim.util.InvalidTagSpec(spec)
        name = name.strip()
        if not name[:1].isalpha():
            raise dkim.util.InvalidTagSpec(spec)
        if name in tags:
            raise dkim.util.DuplicateTag(name)
        tags[name] = value.strip()
    return tags


def remove_b_value(value: bytes) -> bytes:
    """The DKIM-Signature field value with its `b=` value removed (RFC 6376 §3.7)."""
    start = 0
    parts: list[bytes] = []
    search = _B_TAG.search
    while (found := search(value, start)) is not None:
        keep = found.end()
        run = _B64_RUN.match(value, keep)
        assert run is not None  # a `*` pattern always matches
        stop = run.end()
        cut = keep + len(run.group().rstrip())
        rest = value[cut:]
        if stop == len(value) and rest in (b"\r\n", b"\n"):
            cut = stop  # the field's final line end goes with the value
        parts.append(value[start:keep])
        start = cut
    if not parts:
        return value
    parts.append(value[start:])
    return b"".join(parts)


def _relaxed_value(value: bytes) -> bytes:
    """RFC 6376 §3.4.2 for a field value, without the final CR LF."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip()


def signed_header_data(
    headers: Sequence[Sequence[bytes]],
    include: Sequence[bytes],
    sig_field: tuple[bytes, bytes],
    relaxed: bool,
) -> bytes:
    """What the header hash covers: the `include` fields, then the signature field.

    `headers` are `(name, value)` pairs (the value is everything after the
    colon, line ends included), top to bottom; `include` lists lowercase
    names, one per field to take (a name with no field left adds nothing).
    """
    # Names are compared in their canonical form.
    names = [h[0].lower().rstrip() if relaxed else h[0].lower() for h in headers]
    out: list[bytes] = []
    below: dict[bytes, int] = {}
    for name in include:
        i = below.get(name, len(headers))
        while i > 0:
            i -= 1
            if names[i] == name:
                field = headers[i]
                if relaxed:
                    out += (names[i], b":", _relaxed_value(field[1]), b"\r\n")
                else:
                    out += (field[0], b":", field[1])
                break
        below[name] = i
    sig_name, sig_value = sig_field[0], remove_b_value(sig_field[1])
    if relaxed:
        out += (sig_name.lower().rstrip(), b":", _relaxed_value(sig_value))
    else:
        out += (sig_name, b":", sig_value.rstrip())
    return b"".join(out)
