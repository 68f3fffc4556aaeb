"""`test.tlsrpt`: an endpoint that records TLS attempts in the server's shared store.

Until `target.remote` records real attempts, this is how an e2e test makes
a running server count some: each line `DOMAIN RESULT [MX]` sent to it is
recorded (on the event loop, as the target will) through
`kittiwake.tlsrpt.store.shared(container)`, and answered `ok`. Only
`launcher.py` imports it.
"""

from __future__ import annotations

import asyncio

from fakes import EchoEndpoint

from kittiwake.module import register
from kittiwake.mx_auth.base import PolicyReport
from kittiwake.tlsrpt import TLSAttempt
from kittiwake.tlsrpt.store import shared


@register("test.tlsrpt")
class TLSReportProbe(EchoEndpoint):
    """Line protocol: `DOMAIN RESULT [MX]`; `sts` as a fourth word adds an MTA-STS policy."""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        store = shared(self.container)
        try:
            while line := await reader.readline():
                words = line.decode().split()
                policies = ()
                if len(words) > 3 and words[3] == "sts":
                    policies = (
                        PolicyReport(
                            "sts", words[0], ("version: STSv1", "mode: enforce"), (words[2],)
                        ),
                    )
                store.record(
                    TLSAttempt(
                        words[0],
                        words[1],
                        policies,
                        sending_ip="127.0.0.1",
                        receiving_mx=words[2] if len(words) > 2 else "",
                    )
                )
                writer.write(b"ok\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
