"""The API's listeners under hostile connections (issue 14): the real app behind the listeners
`certok serve` builds (`certok/http_listeners.py`), HTTP and HTTPS, real sockets on loopback, on
asyncio's loop and on uvloop (what `certok serve` runs when installed).

Timeouts are short settings of each test; waits are generous upper bounds, never windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certok import http_listeners
from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import build_api_services, build_checks
from certok.persistence import open_store
from certok.settings import Settings
from tests.rig.open_files import file_table_full
from tests.rig.tls import write_server_tls

STARTUP_SECONDS = 5.0
WAIT = 5.0  # an upper bound for what should happen within a fraction of it
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: certok.test\r\n\r\n"


def _loops() -> list[Any]:
    loops: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return loops
    return [*loops, pytest.param(uvloop.new_event_loop, id="uvloop")]


@dataclass
class Served:
    http_port: int
    https_port: int
    tls: ssl.SSLContext

    def connect(self, scheme: str = "http") -> socket.socket:
        if scheme == "https":
            raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=WAIT)
            return self.tls.wrap_socket(raw, server_hostname="127.0.0.1")
        return socket.create_connection(("127.0.0.1", self.http_port), timeout=WAIT)


@contextmanager
def serving(tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop], **settings: Any):  # type: ignore[no-untyped-def]
    tls = write_server_tls(tmp_path / "tls")
    config = Settings(
        data_dir=tmp_path / "data",
        api_port=0,
        https_port=0,
        tls_cert_file=tls.certificate,
        tls_key_file=tls.private_key,
        resolvers=["127.0.0.1:9"],
        log_level="WARNING",
        **settings,
    )
    store = open_store(config)
    checks = build_checks(config, store)
    app = create_app(
        build_api_services(config, store, checks, waiters=OrderWaiters(), wake_worker=lambda: None)
    )
    listeners = http_listeners.api_listeners(app, config)
    loop = new_loop()

    async def serve_all() -> None:
        await asyncio.gather(*(listener.serve() for listener in listeners))

    thread = threading.Thread(target=loop.run_until_complete, args=(serve_all(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not all(listener.started for listener in listeners):
            assert thread.is_alive() and time.monotonic() < deadline, "listeners did not start"
            time.sleep(0.01)
        http, https = (listener.servers[0].sockets[0].getsockname()[1] for listener in listeners)
        trust = ssl.create_default_context(cafile=str(tls.ca_bundle))
        yield Served(http, https, trust)
    finally:
        for listener in listeners:
            listener.should_exit = True
        thread.join(STARTUP_SECONDS)
        assert not thread.is_alive(), "the listeners did not stop"
        loop.close()
        checks.close()
        store.engine.dispose()


def response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one whole response (content-length framed): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed (FIN or reset); False if it still holds the connection."""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def assert_envelope(sock: socket.socket, status: int, *words: str) -> None:
    code, headers, body = response(sock)
    assert code == status, body
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"code", "msg", "data", "traceId"}
    assert answer["code"] != 0 and answer["data"] is None and answer["traceId"]
    for word in words:
        assert word in answer["msg"], answer["msg"]


def healthy(served: Served, scheme: str = "http") -> bool:
    with served.connect(scheme) as sock:
        sock.sendall(HEALTHZ)
        return response(sock)[0] == 200


# --- slow and idle connections -----------------------------------------------------------------


def opened_unless_closed(served: Served, scheme: str, first: bytes = b"") -> socket.socket | None:
    """A new connection with `first` sent on it; None if the server closed it before (on a
    busy machine a TLS handshake or a send can come after the header timeout, which closes
    the connection: what the test waits for anyway)."""
    sock: socket.socket | None = None
    try:
        sock = served.connect(scheme)
        if first:
            sock.sendall(first)
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        if sock is not None:
            sock.close()
        return None
    return sock


@pytest.mark.parametrize("new_loop", _loops())
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_slow_and_idle_connections_are_closed_after_the_header_timeout(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop], scheme: str
) -> None:
    with serving(tmp_path, new_loop, api_header_timeout_seconds=1.0) as served:
        idle = [opened_unless_closed(served, scheme) for _ in range(30)]
        # A request line and a header, never the blank line that ends it.
        slow = [
            opened_unless_closed(served, scheme, b"GET /healthz HTTP/1.1\r\nHost: certok.test\r\n")
            for _ in range(30)
        ]
        kept_alive = served.connect(scheme)
        kept_alive.sendall(HEALTHZ)
        assert response(kept_alive)[0] == 200
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, slowly
        assert healthy(served, scheme)  # meanwhile others are served
        for sock in [*idle, *slow, kept_alive]:
            if sock is None:
                continue
            sock.settimeout(WAIT)
            assert closed_by_server(sock)
            sock.close()


@pytest.mark.parametrize("new_loop", _loops())
def test_a_tls_handshake_that_never_comes_is_closed(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    with (
        serving(tmp_path, new_loop, api_header_timeout_seconds=0.3) as served,
        socket.create_connection(("127.0.0.1", served.https_port), timeout=WAIT) as raw,
    ):
        raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        assert closed_by_server(raw)


@pytest.mark.parametrize("new_loop", _loops())
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_at_the_cap_the_longest_idle_connection_makes_room(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop], scheme: str
) -> None:
    # Header timeout far away: only the cap can close these.
    with serving(
        tmp_path, new_loop, api_max_connections=10, api_header_timeout_seconds=60
    ) as served:
        held = [served.connect(scheme) for _ in range(40)]
        for _ in range(5):
            assert healthy(served, scheme)  # never locked out
        for sock in held:
            sock.settimeout(0.2)
        open_ones = [sock for sock in held if not closed_by_server(sock)]
        assert 1 <= len(open_ones) < 10
        assert open_ones == held[-len(open_ones) :]  # the oldest went first
        for sock in held:
            sock.close()


@pytest.mark.parametrize("new_loop", _loops())
def test_at_the_cap_a_tls_handshake_never_finished_makes_room(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    with serving(
        tmp_path, new_loop, api_max_connections=10, api_header_timeout_seconds=60
    ) as served:
        # TCP connections to the HTTPS port that never start their handshake.
        held = [
            socket.create_connection(("127.0.0.1", served.https_port), timeout=WAIT)
            for _ in range(40)
        ]
        for _ in range(5):
            assert healthy(served, "https")
        for sock in held:
            sock.settimeout(0.2)
        open_ones = [sock for sock in held if not closed_by_server(sock)]
        assert len(open_ones) < 10
        for sock in held:
            sock.close()


# --- running out of file descriptors -------------------------------------------------------------


@pytest.mark.parametrize("new_loop", _loops())
def test_out_of_file_descriptors_is_logged_once_and_recovered_from(
    tmp_path: Path,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="certok")
    with serving(tmp_path, new_loop, api_header_timeout_seconds=60) as served:
        idle = served.connect()
        assert healthy(served)
        newcomers = [socket.socket() for _ in range(3)]  # their descriptors, taken before
        with file_table_full():
            for sock in newcomers:
                sock.settimeout(WAIT)
                sock.connect(("127.0.0.1", served.http_port))
                sock.sendall(HEALTHZ)
            # The server cannot accept: it closes its idle connection to make room ...
            idle.settimeout(WAIT)
            assert closed_by_server(idle)
            # ... and serves the first newcomer with it, while the table is still full.
            assert response(newcomers[0])[0] == 200
        # Room again: everyone is served, and the listener never stopped.
        for sock in newcomers[1:]:
            assert response(sock)[0] == 200
        assert healthy(served)
        for sock in [idle, *newcomers]:
            sock.close()
    out = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    back = [r for r in caplog.records if "accepting connections again" in r.getMessage()]
    # Once for the shortage, not once per try (it retried every 0.1 s meanwhile).
    assert (len(out), len(back)) == (1, 1)


# --- requests the parser refuses ---------------------------------------------------------------


@pytest.mark.parametrize("new_loop", _loops())
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests_that_cannot_be_served_get_the_envelope_and_are_closed(
    tmp_path: Path,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    scheme: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A long header timeout: none of these may wait for it.
    with serving(tmp_path, new_loop, api_header_timeout_seconds=60) as served:
        cases = [
            (
                b"GET /v1/cert/dv?domains=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                414,
                "request line",
            ),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431, "headers"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: c\r\n" * 5000 + b"\r\n", 431, "headers"),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
                400,
                "not an HTTP request",
            ),
            (b"\x00\xff garbage \r\n\r\n", 400, "not an HTTP request"),
            (b"get / HTTP/1.1\r\n\r\n", 400, "not an HTTP request"),
            (b"GET /\n", 400, "HTTP/0.9"),
            (b"GET /v1/cert/dv\r\n", 400, "HTTP/0.9"),
            (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not an HTTP request"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, "header value"),
            # A malformed body after a complete head: the app's answer (405) must not follow.
            (
                b"POST /v1/cert/dv HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
                "chunk size",
            ),
        ]
        for request, status, words in cases:
            with served.connect(scheme) as sock:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError, ssl.SSLError):
                    sock.sendall(request)
                assert_envelope(sock, status, words)
                assert closed_by_server(sock)
        assert healthy(served, scheme)
        # Answered, but its client never closes: stopping the server does not wait for it.
        lingering = served.connect(scheme)
        lingering.sendall(cases[-1][0])
        assert_envelope(lingering, 400, "chunk size")
    lingering.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("new_loop", _loops())
def test_a_request_line_sent_slowly_past_the_limit_is_414(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    with (
        serving(tmp_path, new_loop, api_max_request_head_bytes=4096) as served,
        served.connect() as sock,
    ):
        sock.sendall(b"GET /v1/cert/dv?domains=")
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for _ in range(10):
                sock.sendall(b"a" * 1000)
        assert_envelope(sock, 414, "longer than 4096 bytes")


@pytest.mark.parametrize("new_loop", _loops())
def test_a_long_dv_url_within_the_limit_is_served(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    # 100 names of 250 characters: the longest dv request the API accepts.
    name = ".".join(["a" * 62] * 4)[:246] + ".com"
    domains = ",".join([name] * 100)
    with serving(tmp_path, new_loop) as served, served.connect() as sock:
        sock.sendall(f"GET /v1/cert/dv?domains={domains} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert_envelope(sock, 401, "httpsok-token")  # routed, and refused for the missing token
