"""aiosmtpd with a handler that accepts every message and throws it away.

The Python baseline for kittiwake's `deliver_to dummy`: the same protocol
work, nothing stored. Run by `bench/smtp.py` as
`python bench/peers/aiosmtpd_discard.py --port PORT`.
"""

from __future__ import annotations

import sys

from _serve import parse_args, serve
from aiosmtpd.smtp import SMTP, Envelope, Session


class Discard:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK: discarded"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    return serve(Discard(), args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
