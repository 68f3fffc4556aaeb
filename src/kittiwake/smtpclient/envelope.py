"""The envelope as another server must read it: paths and ESMTP parameters.

Pure functions (docs/target-smtp.md, "What is passed on"):

* `wire_path`: an internal-form address (local part unquoted, domain in
  U-labels) in RFC 5321 syntax. With SMTPUTF8 it goes as it is; without,
  the domain becomes A-labels (RFC 5890) and a non-ASCII local part cannot
  be written at all (RFC 6531 §3.2 forbids it): `ValueError`.
* `mail_params` / `rcpt_params`: SIZE, BODY, SMTPUTF8, REQUIRETLS and the
  RFC 3461 DSN parameters, each only where the server advertised its
  extension. xtext (RFC 3461 §4) and utf-8-addr-xtext (RFC 6533 §3),
  from `message/xtext.py`, encode what may not appear raw.
"""

from __future__ import annotations

from kittiwake import address
from kittiwake.message import MsgMeta, RcptDSN
from kittiwake.message.xtext import encode_unitext, encode_xtext
from kittiwake.protocol.client import Capabilities

__all__ = ["mail_params", "rcpt_params", "wire_path"]


def wire_path(addr: str, *, smtputf8: bool) -> str:
    """The path content for MAIL/RCPT (`""` stays the null path)."""
    if not addr:
        return ""
    local, domain = address.split(addr)
    if not smtputf8:
        if not local.isascii():
            raise ValueError(f"non-ASCII local part in {addr!r} without SMTPUTF8")
        if domain and not domain.startswith("["):
            domain = address.to_alabel_domain(domain)
    wire = address.quote_local_part(local)
    return f"{wire}@{domain}" if domain else wire


def mail_params(meta: MsgMeta, caps: Capabilities, *, smtputf8: bool) -> list[str]:
    """The MAIL FROM parameters this server may be given for this message."""
    opts = meta.smtp
    params: list[str] = []
    if opts.size is not None and caps.size is not None:
        params.append(f"SIZE={opts.size}")
    if opts.body == "8BITMIME" and caps.eightbitmime:
        params.append("BODY=8BITMIME")
    if smtputf8:
        params.append("SMTPUTF8")
    if opts.requiretls:
        params.append("REQUIRETLS")
    if caps.dsn:
        if opts.dsn_ret:
            params.append(f"RET={opts.dsn_ret}")
        if opts.dsn_envid:
            params.append(f"ENVID={encode_xtext(opts.dsn_envid)}")
    return params


def rcpt_params(dsn: RcptDSN, caps: Capabilities) -> list[str]:
    """NOTIFY and ORCPT (RFC 3461 §4.1, §4.2), when the server offers DSN."""
    if not caps.dsn:
        return []
    params: list[str] = []
    if dsn.notify:
        params.append("NOTIFY=" + ",".join(dsn.notify))
    if dsn.orcpt is not None:
        kind, original = dsn.orcpt
        if original.isascii() and kind.lower() != "utf-8":
            params.append(f"ORCPT={kind};{encode_xtext(original)}")
        else:
            # RFC 6533 §3: a non-ASCII original address travels as type utf-8,
            # in the ASCII-only form every server can take.
            params.append(f"ORCPT=utf-8;{encode_unitext(original, seven_bit=True)}")
    return params
