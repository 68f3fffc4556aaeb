"""Talking to other servers: the asyncio SMTP/LMTP client (docs/client.md).

* `smtpclient.client` - `SMTPClient`: one connection (dial, TLS, EHLO,
  AUTH, commands with timeouts, the content streamed from a buffer) around
  the sans-IO core `kittiwake.protocol.client`;
* `smtpclient.endpoint` - `tcp://`, `tls://` and `unix://` addresses;
* `smtpclient.envelope` - paths and ESMTP parameters as the other server
  must read them (SMTPUTF8 or A-labels, DSN, xtext);
* `smtpclient.sasl` - PLAIN, LOGIN and EXTERNAL as a client;
* `smtpclient.errors` - every failure as an `SMTPError`.

`target.smtp` and `target.lmtp` (`targets/smtp.py`) are built on it.
"""

from kittiwake.smtpclient.client import ClientSettings, SMTPClient
from kittiwake.smtpclient.endpoint import Endpoint, parse_endpoint
from kittiwake.smtpclient.sasl import Mechanism

__all__ = ["ClientSettings", "Endpoint", "Mechanism", "SMTPClient", "parse_endpoint"]
