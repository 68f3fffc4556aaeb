"""Untrusted text made safe to write, and read back: one clean line, xtext, unitext.

Delivery reports (`kittiwake.dsn`) repeat what others told us - a
downstream server's reply, a client's HELO, its ORCPT and ENVID - to a
third party. `clean_line` makes such a value one line without control
characters; the encoders write it in the forms RFC 3461 §4 (xtext) and
RFC 6533 §3 (utf-8-addr-xtext and utf-8-addr-unitext, `\\x{HEX}`) define
for DSNs, so a report part can stay 7-bit.

The decoders read the same forms in ESMTP parameters (`AUTH=`, `ENVID=`,
`ORCPT=`) and refuse anything malformed with ValueError.

Pure functions: no I/O.
"""

from __future__ import annotations

import re

__all__ = [
    "clean_line",
    "decode_unitext",
    "decode_xtext",
    "encode_unitext",
    "encode_xtext",
    "escape_non_ascii",
]

# C0, DEL, C1, Unicode line and paragraph separators, bidi embeddings,
# overrides and isolates: nothing a reader should get from the network raw.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(" {2,}")


def clean_line(text: str, limit: int) -> str:
    """`text` as one safe line: no controls, single spaces, at most `limit` characters.

    CR, LF, NUL and the other controls become spaces: a raw CR or LF from
    a hostile reply would end a field and start a forged one. A lone
    surrogate (from bytes that were not UTF-8) becomes U+FFFD, so the
    result always encodes. A longer text is cut and ends with ` [...]`.
    """
    text = _CONTROLS.sub(" ", _SURROGATES.sub("\ufffd", text))
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + " [...]"
    return text


def _embedded(c: str) -> str:
    """RFC 6533 §3 EmbeddedUnicodeChar: `\\x{HEX}`, upper case, no leading zeros."""
    return f"\\x{{{ord(c):X}}}"


def escape_non_ascii(text: str) -> str:
    """Every non-ASCII character as `\\x{HEX}`, for text in a part that must stay 7-bit.

    The notation is RFC 6533's; RFC 3464 has none for free text such as a
    diagnostic, and a reader who knows the one will read the other.
    """
    if text.isascii():
        return text
    return "".join(c if c.isascii() else _embedded(c) for c in text)


def encode_unitext(text: str, *, seven_bit: bool) -> str:
    """RFC 6533 §3 utf-8-addr-unitext, or with `seven_bit` utf-8-addr-xtext.

    Printable ASCII (QCHAR) stays, but for `+`, `=` and `\\`; those,
    space, controls and, in the 7-bit form, every non-ASCII character
    become `\\x{HEX}`.
    """
    out = []
    for c in text:
        if "!" <= c <= "~" and c not in "+=\\":
            out.append(c)
        elif c.isascii() or seven_bit:
            out.append(_embedded(c))
        else:
            out.append(c)
    return "".join(out)


def encode_xtext(text: str) -> str:
    """RFC 3461 §4 xtext of the UTF-8 bytes of `text`.

    `!` to `~` stay but for `+` and `=`; every other octet is `+XX`. A
    surrogate from an undecodable byte gives that byte back.
    """
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        data = text.encode("utf-8", "replace")
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}" for b in data
    )


def decode_xtext(value: str) -> str:
    """RFC 3461 §4 xtext back to text; ValueError when malformed.

    The octets are read as UTF-8 (undecodable ones as surrogates), the
    inverse of `encode_xtext`.
    """
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            hx = value[i + 1 : i + 3]
            if len(hx) != 2 or not all(h in "0123456789ABCDEFabcdef" for h in hx):
                raise ValueError("bad xtext escape")
            out.append(int(hx, 16))
            i += 3
            continue
        if not "!" <= c <= "~" or c == "=":
            raise ValueError("bad xtext character")
        out.append(ord(c))
        i += 1
    return out.decode("utf-8", "surrogateescape")


def decode_unitext(value: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext or -unitext back to text; ValueError when malformed.

    `\\x{HEX}` escapes and, as RFC 6533 keeps them valid, xtext's `+XX`.
    """
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if value.startswith("\\x{", i):
            end = value.find("}", i)
            hx = value[i + 3 : end] if end > 0 else ""
            if not 1 <= len(hx) <= 6 or not all(h in "0123456789ABCDEFabcdef" for h in hx):
                raise ValueError("bad unitext escape")
            code = int(hx, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError("bad unitext code point")
            out.append(chr(code))
            i = end + 1
        elif c == "+":
            out.append(decode_xtext(value[i : i + 3]))
            i += 3
        elif c in "=\\" or (c.isascii() and not "!" <= c <= "~"):
            raise ValueError("bad unitext character")
        else:
            out.append(c)
            i += 1
    return "".join(out)
