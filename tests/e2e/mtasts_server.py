"""An HTTPS server on loopback serving MTA-STS policy files, for tests.

It answers `GET /.well-known/mta-sts.txt` for every `mta-sts.DOMAIN` in
`responses` (by the Host header), with a certificate for those names from
the test CA; anything else is 404. Each `Response` can misbehave the way
real policy hosts do: another status (a redirect), another Content-Type,
a chunked or length-less body, a slow answer. Runs in threads, so it serves
an in-process asyncio test and a `kittiwake run` process alike; point the
policy fetch here with `--debug.mtastsport PORT` and `--debug.mtastsca
CA.pem` (or `DebugFlags(mtasts_port=..., mtasts_ca=...)`), and give
`mta-sts.DOMAIN` an A record 127.0.0.1 in the fake DNS.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme

PATH = "/.well-known/mta-sts.txt"


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    """A well-formed policy file."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Response:
    body: bytes
    status: int = 200
    content_type: str | None = "text/plain; charset=utf-8"
    #: "length" (Content-Length), "chunked", or "close" (body ends with the connection).
    framing: str = "length"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class MTASTSServer:
    def __init__(self, ca: trustme.CA, domains: list[str], tmp: Path) -> None:
        self.responses: dict[str, Response] = {}
        self.requests: list[str] = []  # the Host of each request, in order
        cert = ca.issue_cert(*(f"mta-sts.{d}" for d in domains))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.ca_file = tmp / "mtasts-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").lower()
                owner.requests.append(host)
                domain = host.removeprefix("mta-sts.")
                response = owner.responses.get(domain) if self.path == PATH else None
                if response is None:
                    response = Response(b"not found\n", status=404)
                time.sleep(response.delay)
                self.send_response(response.status)
                if response.content_type is not None:
                    self.send_header("Content-Type", response.content_type)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if response.framing == "length":
                    self.send_header("Content-Length", str(len(response.body)))
                elif response.framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                if response.framing == "chunked":
                    body = response.body
                    for i in range(0, len(body), 7):
                        part = body[i : i + 7]
                        self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(response.body)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def serve(self, domain: str, response: Response | bytes) -> None:
        self.responses[domain] = response if isinstance(response, Response) else Response(response)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
