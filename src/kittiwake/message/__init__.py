"""The message model: what kittiwake knows about one message in transit.

* `message.meta` - `MsgMeta`, `ConnInfo`, `SMTPOptions` and message IDs:
  everything about a message besides its content (re-exported here);
* `message.header` - the header, kept byte-exact, and the reader that cuts
  it off the incoming content;
* `message.buffer` - where the body lives while the message is handled (RAM,
  a file, or RAM then a file);
* `message.mailaddr` - the address grammar of header fields (RFC 5322
  `From:`, `Sender:`), used by submission and sender checks;
* `message.maildate` - the `Date:` field grammar (RFC 5322 §3.3);
* `message.mime` - writing MIME content: CRLF line ends, transfer
  encodings, folded fields (used by `kittiwake.dsn`);
* `message.xtext` - untrusted text made one safe line, and the xtext and
  unitext encodings of RFC 3461 and RFC 6533.

Envelope addresses (MAIL FROM, RCPT TO) are `kittiwake.address`'s job.
"""

from kittiwake.message.meta import ConnInfo, MsgMeta, RcptDSN, SMTPOptions, new_msg_id

__all__ = ["ConnInfo", "MsgMeta", "RcptDSN", "SMTPOptions", "new_msg_id"]
