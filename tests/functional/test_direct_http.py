"""DirectSender (certok/issuance/direct_http.py) against a real loopback HTTP server: what the
`acme` library and certok's error classification rely on comes out as `requests` made it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from certok.issuance.direct_http import DirectSender
from tests.kit.ports import free_port


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/here")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/slow":
            self.rfile.read(1)  # never comes: the client's read timeout fires
        payload = b'{"status": "pending", "caf\xc3\xa9": 1}'
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Replay-Nonce", "nonce-1")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_post_arrives_whole_and_the_answer_reads_like_requests(server: str) -> None:
    sender = DirectSender(requests.Session(), True)
    body = b'{"protected": "x", "payload": "", "signature": "y"}'
    response = sender.send(
        "POST",
        f"{server}/order/1?x=1",
        headers={"User-Agent": "certok-test", "Content-Type": "application/jose+json"},
        body=body,
        timeout=5,
    )
    method, path, headers, received = _Handler.seen[-1]
    assert (method, path, received) == ("POST", "/order/1?x=1", body)
    assert headers["Content-Type"] == "application/jose+json"
    assert headers["User-Agent"] == "certok-test"
    assert headers["Content-Length"] == str(len(body))
    assert (response.status_code, response.ok) == (201, True)
    assert response.headers["replay-nonce"] == "nonce-1"  # case-insensitive, as in requests
    assert response.json() == {"status": "pending", "café": 1}
    assert response.url == f"{server}/order/1?x=1"


def test_connections_are_kept_alive_and_a_closed_session_gets_new_ones(server: str) -> None:
    session = requests.Session()
    sender = DirectSender(session, True)
    for _ in range(3):
        assert sender.send("GET", f"{server}/dir", headers={}, body=None, timeout=5).ok
    ports = {h.get("Host") for _, _, h, _ in _Handler.seen}
    assert len(ports) == 1
    session.close()  # what AcmeSession.close does to every thread's session
    assert sender.send("HEAD", f"{server}/nonce", headers={}, body=None, timeout=5).ok


def test_a_redirect_is_followed(server: str) -> None:
    sender = DirectSender(requests.Session(), True)
    response = sender.send("GET", f"{server}/moved", headers={}, body=None, timeout=5)
    assert response.status_code == 200
    assert [path for _, path, _, _ in _Handler.seen] == ["/moved", "/moved", "/here"]


def test_transport_failures_are_the_requests_exceptions() -> None:
    closed_port = free_port()
    sender = DirectSender(requests.Session(), True)
    with pytest.raises(requests.exceptions.ConnectionError):
        sender.send("GET", f"http://127.0.0.1:{closed_port}/dir", headers={}, body=None, timeout=2)


def test_a_silent_server_is_a_read_timeout(server: str) -> None:
    sender = DirectSender(requests.Session(), True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        sender.send("POST", f"{server}/slow", headers={}, body=b"{}", timeout=0.5)
