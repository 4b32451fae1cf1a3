"""Small web servers on 127.0.0.1 for the fetcher's tests: routes that redirect, answer, stall.

Each server runs stdlib ``http.server`` in a daemon thread on an ephemeral port, optionally
behind TLS (a throwaway certificate; the fetcher does not verify it). It records what reached
it: accepted connections, each request's path, Host header and TLS SNI, and the most requests
it handled at once, so a test can prove what the fetcher did (or did not) connect to.
"""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.rig.tls import write_server_tls

Route = Callable[["_Handler"], None]


@dataclass(frozen=True)
class SeenRequest:
    path: str
    host: str | None
    user_agent: str | None
    sni: str | None


# --- routes ------------------------------------------------------------------------------------


def redirect(location: str, status: int = 302) -> Route:
    def route(handler: _Handler) -> None:
        handler.send_raw(
            f"HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode("utf-8", "surrogateescape")
        )

    return route


def nginx_challenge_redirect(prefix: str, status: int = 302) -> Route:
    """What the customer's nginx block does: ``return 302 <prefix>$host/$1``.

    nginx's ``$host`` is the Host header without its port, lowercased; ``$1`` is the token.
    """

    def route(handler: _Handler) -> None:
        host = (handler.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        token = handler.path.split("?", 1)[0].rsplit("/", 1)[-1]
        redirect(f"{prefix}{host}/{token}", status)(handler)

    return route


def respond(status: int, body: bytes = b"", *, chunked: bool = False) -> Route:
    def route(handler: _Handler) -> None:
        head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        if chunked:
            chunks = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7])
                for i in range(0, len(body), 7)
            )
            handler.send_raw(
                f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"
            )
        else:
            handler.send_raw(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    return route


def endless_body(framing: str) -> Route:
    """A 200 whose body never ends: framing is "length" (a huge Content-Length), "chunked" or
    "close" (no length, read to the end of the connection). Stops when the client goes away."""

    def route(handler: _Handler) -> None:
        head = "HTTP/1.1 200 OK\r\nConnection: close\r\n"
        if framing == "length":
            head += f"Content-Length: {10**12}\r\n"
        elif framing == "chunked":
            head += "Transfer-Encoding: chunked\r\n"
        handler.send_raw(f"{head}\r\n".encode())
        block = b"x" * 4096
        piece = b"1000\r\n" + block + b"\r\n" if framing == "chunked" else block
        while not handler.server.stopping.is_set():
            handler.send_raw(piece)
            handler.server.add_body_bytes(len(piece))

    return route


def stall(seconds: float) -> Route:
    """Accept the request, then say nothing for `seconds` (or until the server stops)."""

    def route(handler: _Handler) -> None:
        handler.server.stopping.wait(seconds)

    return route


def drip(interval: float) -> Route:
    """Send a valid response head one byte every `interval` seconds, never finishing."""

    def route(handler: _Handler) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 10_000:
            if handler.server.stopping.wait(interval):
                return
            handler.send_raw(bytes([byte]))

    return route


def slow_ok(seconds: float, body: bytes = b"ok") -> Route:
    """Take `seconds` to answer 200 (to hold requests open in concurrency tests)."""

    def route(handler: _Handler) -> None:
        handler.server.stopping.wait(seconds)
        respond(200, body)(handler)

    return route


# --- the server --------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(5)
            self.request.do_handshake()

    def do_GET(self) -> None:
        self.close_connection = True
        sni = getattr(self.request, "certok_sni", None)
        self.server.record(
            SeenRequest(self.path, self.headers.get("Host"), self.headers.get("User-Agent"), sni)
        )
        route = self.server.routes.get(self.path.split("?", 1)[0], respond(404, b"not found"))
        # The client may hang up mid-answer, as the fetcher does once it has read enough.
        with self.server.active(), contextlib.suppress(OSError):
            route(self)

    def send_raw(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.tls = tls
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[SeenRequest] = []
        self.concurrent = 0
        self.peak_concurrent = 0
        self.body_bytes_sent = 0

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = self.socket.accept()
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    def record(self, seen: SeenRequest) -> None:
        with self.lock:
            self.requests.append(seen)

    def add_body_bytes(self, count: int) -> None:
        with self.lock:
            self.body_bytes_sent += count

    def active(self) -> _Active:
        return _Active(self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up or fail TLS are part of the tests


class _Active:
    def __init__(self, server: _Server) -> None:
        self.server = server

    def __enter__(self) -> None:
        with self.server.lock:
            self.server.concurrent += 1
            self.server.peak_concurrent = max(self.server.peak_concurrent, self.server.concurrent)

    def __exit__(self, *exc_info: object) -> None:
        with self.server.lock:
            self.server.concurrent -= 1


class FakeWebServer:
    """Use as a context manager; ``port`` is valid inside it. Routes may be added later."""

    def __init__(self, routes: dict[str, Route] | None = None, *, tls: bool = False) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self._tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        return self._running.server_address[1]

    @property
    def connections(self) -> int:
        return self._running.connections

    @property
    def requests(self) -> list[SeenRequest]:
        with self._running.lock:
            return list(self._running.requests)

    @property
    def peak_concurrent(self) -> int:
        return self._running.peak_concurrent

    @property
    def body_bytes_sent(self) -> int:
        return self._running.body_bytes_sent

    @property
    def _running(self) -> _Server:
        assert self._server is not None, "use the server inside its `with` block"
        return self._server

    def __enter__(self) -> FakeWebServer:
        context = None
        if self._tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="certok-httpfake-")
            files = write_server_tls(Path(self._tmp.name))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(files.certificate, files.private_key)
            context.sni_callback = _remember_sni
        self._server = _Server(self.routes, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        if self._tmp is not None:
            self._tmp.cleanup()


def _remember_sni(
    sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
) -> None:
    # The callback gets the SSLSocket being handshaken; keep the name on it for do_GET.
    sslobj.certok_sni = name  # type: ignore[union-attr]
