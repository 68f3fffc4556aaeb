"""The one place an exception becomes something a client may be told.

Every catch site of a session (the command dispatch, MAIL, RCPT, the
content, delivery, per-recipient LMTP statuses) hands what it caught to
`client_error` and answers with what comes back, so the rule is written
once (docs/server.md, "Errors"):

* an `SMTPError` is the reply whoever raised it chose (a check, a target,
  the pipeline, a limit);
* anything else is a bug or an unexpected failure (a disk, a library): it
  is logged in full at error level, and the client is told `451 4.3.0
  Internal server error`, temporary so that it retries and no mail is lost,
  and without the internal text, which is none of the network's business.

maddy calls this `wrapErr`; aiosmtpd has no such funnel and answers
unexpected errors in several ways depending on where they happen.
"""

from __future__ import annotations

from kittiwake.errors import SMTPError
from kittiwake.log import Logger

#: What a client is told about an error that was not meant for it.
INTERNAL_ERROR = SMTPError(451, (4, 3, 0), "Internal server error")


def client_error(exc: BaseException, log: Logger, event: str, **fields: object) -> SMTPError:
    """The error to answer `exc` with; unexpected ones are logged as `event`."""
    if isinstance(exc, SMTPError):
        return exc
    log.error(event, err=exc, **fields)
    return INTERNAL_ERROR
