"""A receiving SMTP server on any loopback address, for `target.remote` tests.

`MXSink(host, port)` listens on `host:port` (127.0.0.2, 127.0.0.3, ...: the
whole 127/8 is loopback on Linux) in threads, speaks enough ESMTP for a
sending MTA (EHLO, STARTTLS, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and keeps
what it saw: every connection (`connections`), the SNI name of every TLS
handshake (`server_names`), and every message with its envelope, its MAIL
parameters and whether it came over TLS (`messages`).

Options make it behave as a test needs: `tls` (an `ssl.SSLContext`) offers
STARTTLS; `requiretls` advertises REQUIRETLS; `rcpt_replies` answers
chosen recipients with a fixed reply line instead of 250; `mail_reply`
answers every MAIL FROM so; `pipelining` advertises PIPELINING (RFC 2920).
For each MAIL FROM the sink counts whether the next command had already
come with it (`pipelined`) or not (`unpipelined`). Nothing of
kittiwake is used here: it is the other side of the wire.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field

WAIT = 20.0


@dataclass
class Received:
    mail_from: str
    mail_params: list[str]
    rcpts: list[str]
    data: bytes
    tls: bool
    connection: int  # the index of the connection it came over


@dataclass
class MXSink:
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    requiretls: bool = False
    smtputf8: bool = True
    #: The reply to the end of the content instead of 250 (the message is dropped).
    data_reply: str | None = None
    #: Offer STARTTLS, answer it 220, then send garbage instead of a handshake.
    broken_tls: bool = False
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    name: str = "mx.test"
    pipelining: bool = False
    #: The reply to every MAIL FROM instead of 250.
    mail_reply: str | None = None

    def __post_init__(self) -> None:
        self.connections = 0
        self.peers: list[str] = []  # the client address of each connection
        self.quits = 0  # connections the client ended with QUIT
        self.pipelined = 0  # MAIL FROMs whose next command came in the same read
        self.unpipelined = 0
        self.messages: list[Received] = []
        #: The SNI name of each TLS handshake ("" when the client sent none).
        self.server_names: list[str] = []
        self.lock = threading.Lock()
        self._open: set[socket.socket] = set()
        sink = self
        if self.tls is not None:
            self.tls.sni_callback = self._sni

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                sink._session(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        self.server = Server((self.host, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.connections = 0
            self.peers = []
            self.quits = 0
            self.pipelined = 0
            self.unpipelined = 0
            self.messages = []
            self.server_names = []
        self.rcpt_replies = {}
        self.requiretls = False
        self.smtputf8 = True
        self.data_reply = None
        self.pipelining = False
        self.mail_reply = None

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
        with self.lock:
            self.server_names.append(name or "")

    def wait_messages(self, count: int, timeout: float = WAIT) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = list(self.messages)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def drop_connections(self) -> None:
        """Cut every connection in progress (the listener stays)."""
        with self.lock:
            open_now = list(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.drop_connections()

    # -- one session -------------------------------------------------------

    def _session(self, sock: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            index = self.connections
            self._open.add(sock)
            self.peers.append(str(sock.getpeername()[0]))
        conn: socket.socket | ssl.SSLSocket = sock
        conn.settimeout(WAIT)
        reader = _Lines(conn)

        def send(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        send(f"220 {self.name} ESMTP test sink")
        tls = False
        mail: tuple[str, list[str]] | None = None
        rcpts: list[str] = []
        try:
            while True:
                raw = reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb = line.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    mail, rcpts = None, []
                    caps = ["8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 10000000"]
                    if self.pipelining:
                        caps.append("PIPELINING")
                    if self.smtputf8:
                        caps.append("SMTPUTF8")
                    if (self.tls is not None or self.broken_tls) and not tls:
                        caps.append("STARTTLS")
                    if self.requiretls and tls:
                        caps.append("REQUIRETLS")
                    lines = [self.name, *caps]
                    for i, text in enumerate(lines):
                        send(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
                elif verb == "STARTTLS" and self.broken_tls:
                    send("220 2.0.0 Ready to start TLS")
                    # After the client's ClientHello: bytes with the reply
                    # would be taken for an injection, not a handshake.
                    time.sleep(0.3)
                    conn.sendall(b"this is not a TLS server hello\r\n")
                    return
                elif verb == "STARTTLS" and self.tls is not None and not tls:
                    send("220 2.0.0 Ready to start TLS")
                    try:
                        conn = self.tls.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        return  # the client refused our certificate
                    reader = _Lines(conn)
                    tls = True
                    mail, rcpts = None, []
                elif verb == "MAIL":
                    rest = line[10:] if line[:10].upper() == "MAIL FROM:" else ""
                    path, _, params = rest.partition(" ")
                    mail, rcpts = (path.strip("<>"), params.split()), []
                    with self.lock:
                        if reader.buffered():
                            self.pipelined += 1
                        else:
                            self.unpipelined += 1
                    if self.mail_reply is not None:
                        mail = None
                        send(self.mail_reply)
                    else:
                        send("250 2.1.0 OK")
                elif verb == "RCPT":
                    rest = line[8:] if line[:8].upper() == "RCPT TO:" else ""
                    rcpt = rest.split(" ", 1)[0].strip("<>")
                    reply = self.rcpt_replies.get(rcpt)
                    if mail is None:
                        send("503 5.5.1 MAIL first")
                    elif reply is not None:
                        send(reply)
                    else:
                        rcpts.append(rcpt)
                        send("250 2.1.5 OK")
                elif verb == "DATA":
                    if mail is None or not rcpts:
                        send("503 5.5.1 No recipients")
                        continue
                    send("354 Go ahead")
                    data = b""
                    while True:
                        chunk = reader.readline()
                        if not chunk:
                            return
                        if chunk == b".\r\n":
                            break
                        data += chunk[1:] if chunk.startswith(b".") else chunk
                    if self.data_reply is not None:
                        mail, rcpts = None, []
                        send(self.data_reply)
                        continue
                    with self.lock:
                        self.messages.append(
                            Received(mail[0], mail[1], list(rcpts), data, tls, index)
                        )
                    mail, rcpts = None, []
                    send("250 2.0.0 OK: queued")
                elif verb == "RSET":
                    mail, rcpts = None, []
                    send("250 2.0.0 OK")
                elif verb == "NOOP":
                    send("250 2.0.0 OK")
                elif verb == "QUIT":
                    with self.lock:
                        self.quits += 1
                    send("221 2.0.0 Bye")
                    return
                else:
                    send("502 5.5.2 Command not recognized")
        except (OSError, ssl.SSLError):
            return
        finally:
            with self.lock:
                self._open.discard(sock)
            conn.close()


class _Lines:
    """Lines from a socket, with what came beyond the line kept and visible
    (`buffered`): how the sink tells a pipelined command from a waiting one."""

    def __init__(self, conn: socket.socket | ssl.SSLSocket) -> None:
        self.conn = conn
        self.data = b""

    def readline(self) -> bytes:
        while b"\n" not in self.data:
            chunk = self.conn.recv(65536)
            if not chunk:
                line, self.data = self.data, b""
                return line
            self.data += chunk
        line, _, self.data = self.data.partition(b"\n")
        return line + b"\n"

    def buffered(self) -> bool:
        return bool(self.data)
