"""ZeroSSL's EAB credentials API, fetched over certok's own CA transport.

A real HTTP server on loopback stands in for api.zerossl.com; its host name resolves only
through the resolve function handed to ``form_poster`` (as certok's configured resolvers
would), never through the system resolver.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from certok.issuance import AcmeProblem, ProblemKind, fetch_zerossl_eab
from certok.issuance.problems import GARBLED_RESPONSE, HTTP_ERROR, TRANSPORT_ERROR
from certok.issuance.zerossl import ZEROSSL_EAB_REFUSED, form_poster

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
HOST = "zerossl-api.test"


class FakeZeroSsl:
    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body: bytes = b"{}"
        self.requests: list[tuple[str, str, bytes, str]] = []


@pytest.fixture
def zerossl() -> Iterator[tuple[FakeZeroSsl, int]]:
    fake = FakeZeroSsl()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            fake.requests.append(
                (self.command, self.path, self.rfile.read(length), self.headers["Host"])
            )
            self.send_response(fake.status)
            for name, value in fake.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def fetch(port: int, email: str = "ops@example.com") -> tuple[str, str]:
    resolved: list[str] = []

    def resolve(host: str) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"] if host == HOST else []

    result = fetch_zerossl_eab(
        email,
        api_url=f"http://{HOST}:{port}/acme/eab-credentials-email",
        http_post=form_poster(resolve, timeout=5),
        clock=lambda: NOW,
    )
    assert resolved == [HOST]
    return result


def test_success_posts_the_email_form_through_the_configured_resolver(zerossl) -> None:
    fake, port = zerossl
    fake.body = json.dumps({"success": True, "eab_kid": "kid-abc", "eab_hmac_key": "hmac-xyz"})
    fake.body = fake.body.encode()
    assert fetch(port) == ("kid-abc", "hmac-xyz")
    [(method, path, body, host)] = fake.requests
    assert (method, path, host) == ("POST", "/acme/eab-credentials-email", f"{HOST}:{port}")
    assert parse_qs(body.decode()) == {"email": ["ops@example.com"]}


def test_success_false_with_http_200_is_rejected(zerossl) -> None:
    fake, port = zerossl
    fake.body = b'{"success": false, "error": {"code": 2900, "type": "invalid_email"}}'
    with pytest.raises(AcmeProblem) as caught:
        fetch(port, "not-an-email")
    problem = caught.value
    assert (problem.kind, problem.type) == (ProblemKind.REJECTED, ZEROSSL_EAB_REFUSED)
    assert "invalid_email" in problem.detail and "2900" in problem.detail
    assert "zerossl_email" in problem.detail


def test_server_error_is_retryable(zerossl) -> None:
    fake, port = zerossl
    fake.status, fake.body = 502, b"bad gateway"
    with pytest.raises(AcmeProblem) as caught:
        fetch(port)
    assert (caught.value.kind, caught.value.type) == (ProblemKind.RETRYABLE, HTTP_ERROR)
    assert caught.value.http_status == 502


def test_rate_limit_keeps_retry_after(zerossl) -> None:
    fake, port = zerossl
    fake.status, fake.headers, fake.body = 429, {"Retry-After": "86400"}, b"slow down"
    with pytest.raises(AcmeProblem) as caught:
        fetch(port)
    assert caught.value.kind is ProblemKind.RATE_LIMITED
    assert caught.value.retry_after == NOW + dt.timedelta(days=1)


@pytest.mark.parametrize(
    "body",
    [b"<html>maintenance</html>", b'["not", "an", "object"]', b'{"success": true, "eab_kid": "k"}'],
)
def test_garbled_answer_is_retryable(zerossl, body: bytes) -> None:
    fake, port = zerossl
    fake.body = body
    with pytest.raises(AcmeProblem) as caught:
        fetch(port)
    assert (caught.value.kind, caught.value.type) == (ProblemKind.RETRYABLE, GARBLED_RESPONSE)


def test_transport_failure_is_retryable(zerossl) -> None:
    _, port = zerossl
    with pytest.raises(AcmeProblem) as caught:
        fetch(port + 1 if port < 65535 else port - 1)  # nothing listens there
    assert (caught.value.kind, caught.value.type) == (ProblemKind.RETRYABLE, TRANSPORT_ERROR)
    assert "could not reach" in caught.value.detail
