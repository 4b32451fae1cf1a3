"""The HTTP-01 redirect pre-check against real loopback servers.

A fake DNS server answers for the customer's names and certok's responder name; one web server
plays the customer's nginx (the challenge path per probe token behaves as each test needs),
others play certok's HTTP-01 responder over http and https. The customer's "port 80" is the
customer server's ephemeral port (http_port), and loopback is allowed, as in every test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from certok.prechecks.addresses import AddressPolicy
from certok.prechecks.http01 import (
    HttpCheckResult,
    canonical_prefix,
    check_http_redirect,
    check_http_redirects,
    nginx_block,
)
from certok.prechecks.resolver import make_resolver
from certok.prechecks.safe_http import FetchLimits, SafeFetcher
from tests.functional.httpfake_dns import FakeAddressNameserver
from tests.functional.httpfake_guard import NetworkGuard, loopback_only
from tests.functional.httpfake_web import (
    FakeWebServer,
    nginx_challenge_redirect,
    redirect,
    respond,
    stall,
)

pytestmark = pytest.mark.timeout(30)
T = TypeVar("T")

ZONE = "customer.test"
WWW = f"www.{ZONE}"
CERTOK = "certok.acme.test"
CHALLENGE = "/.well-known/acme-challenge/"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(autouse=True)
def guard() -> Iterator[NetworkGuard]:
    with loopback_only() as network:
        yield network
    assert network.blocked == [], "something tried to leave loopback"


@pytest.fixture(scope="module")
def customer() -> Iterator[FakeWebServer]:
    with FakeWebServer() as server:
        yield server


@pytest.fixture(scope="module")
def responder() -> Iterator[FakeWebServer]:
    with FakeWebServer() as server:
        yield server


@pytest.fixture(scope="module")
def tls_responder() -> Iterator[FakeWebServer]:
    with FakeWebServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def dns_server() -> Iterator[FakeAddressNameserver]:
    with FakeAddressNameserver(
        zones=[ZONE, "acme.test"],
        addresses={
            WWW: ["127.0.0.1"],
            f"other.{ZONE}": ["127.0.0.1"],
            f"elsewhere.{ZONE}": ["127.0.0.1"],
            f"internal.{ZONE}": ["10.0.0.1"],
            CERTOK: ["127.0.0.1"],
        },
    ) as server:
        yield server


@pytest.fixture(scope="module")
def prefix(responder: FakeWebServer) -> str:
    return f"http://{CERTOK}:{responder.port}/v1/dv/"


@pytest.fixture(scope="module")
def fetcher(
    dns_server: FakeAddressNameserver,
    customer: FakeWebServer,
    responder: FakeWebServer,
    tls_responder: FakeWebServer,
) -> SafeFetcher:
    return make_fetcher(dns_server, customer, responder, tls_responder)


def make_fetcher(
    dns_server: FakeAddressNameserver, *servers: FakeWebServer, **limits: Any
) -> SafeFetcher:
    return SafeFetcher(
        lambda: make_resolver([f"127.0.0.1:{dns_server.port}"], 1.0),
        AddressPolicy(allow_loopback=True),
        FetchLimits(allowed_ports=frozenset({80, 443, *(s.port for s in servers)}), **limits),
    )


def check(
    customer: FakeWebServer,
    fetcher: SafeFetcher,
    prefix: str,
    token: str,
    *,
    domain: str = WWW,
    expected_body: str | None = None,
) -> HttpCheckResult:
    return run(
        check_http_redirect(
            domain,
            prefix,
            token,
            fetcher,
            expected_body=expected_body,
            http_port=customer.port,
        )
    )


def challenge_url(customer: FakeWebServer, token: str, domain: str = WWW) -> str:
    return f"http://{domain}:{customer.port}{CHALLENGE}{token}"


# --- in place -------------------------------------------------------------------------------------


def test_a_redirect_to_the_responder_is_valid_without_fetching_it(
    customer: FakeWebServer, responder: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}good"] = nginx_challenge_redirect(prefix)
    before = responder.connections

    result = check(customer, fetcher, prefix, "good")

    assert result.valid, result.detail
    assert result.domain == WWW
    assert result.final_url == f"{prefix}{WWW}/good"
    assert (
        result.detail
        == f"{challenge_url(customer, 'good')} redirects to {prefix}{WWW}/good: in place"
    )
    assert result.cost_ms >= 0
    # Where the chain leads is the customer's part; the responder itself is not fetched.
    assert responder.connections == before


def test_the_expected_prefix_is_compared_in_canonical_form(
    customer: FakeWebServer, responder: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}canonical"] = nginx_challenge_redirect(prefix)
    shouted = f"HTTP://{CERTOK.upper()}:{responder.port}/v1/dv/"
    result = check(customer, fetcher, shouted, "canonical")
    assert result.valid, result.detail
    assert canonical_prefix("https://Certok.Example.NET:443/v1/dv/") == (
        "https://certok.example.net/v1/dv/"
    )
    assert canonical_prefix("http://[::1]:8080/v1/dv/") == "http://[::1]:8080/v1/dv/"


def test_a_chain_of_redirects_to_the_responder_is_valid(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}chain"] = redirect("/moved/chain", 301)
    customer.routes["/moved/chain"] = redirect(f"{prefix}{WWW}/chain", 307)
    result = check(customer, fetcher, prefix, "chain")
    assert result.valid, result.detail
    assert f"via http://{WWW}:{customer.port}/moved/chain" in result.detail


def test_the_responder_answering_the_expected_body_is_valid(
    customer: FakeWebServer, responder: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}body"] = nginx_challenge_redirect(prefix)
    responder.routes[f"/v1/dv/{WWW}/body"] = respond(200, b"body.thumbprint")
    result = check(customer, fetcher, prefix, "body", expected_body="body.thumbprint")
    assert result.valid, result.detail
    assert "answers the challenge" in result.detail
    assert responder.requests[-1].path == f"/v1/dv/{WWW}/body"
    assert responder.requests[-1].host == f"{CERTOK}:{responder.port}"


def test_the_production_shape_redirect_to_https_is_followed_without_verifying_tls(
    customer: FakeWebServer, tls_responder: FakeWebServer, fetcher: SafeFetcher
) -> None:
    https_prefix = f"https://{CERTOK}:{tls_responder.port}/v1/dv/"
    customer.routes[f"{CHALLENGE}tls"] = nginx_challenge_redirect(https_prefix)
    tls_responder.routes[f"/v1/dv/{WWW}/tls"] = respond(200, b"tls.thumbprint")
    result = check(customer, fetcher, https_prefix, "tls", expected_body="tls.thumbprint")
    assert result.valid, result.detail
    assert tls_responder.requests[-1].sni == CERTOK


@pytest.mark.parametrize(
    ("status", "body", "answered"),
    [
        (200, b"something else", "answered a different body"),
        (404, b"no pending challenge", "answered 404"),
        (200, b"body.thumbprint and more", "answered a different body"),
    ],
)
def test_the_responder_answering_otherwise_is_invalid(
    status: int,
    body: bytes,
    answered: str,
    customer: FakeWebServer,
    responder: FakeWebServer,
    fetcher: SafeFetcher,
    prefix: str,
) -> None:
    token = f"wrongbody{status}{len(body)}"
    customer.routes[f"{CHALLENGE}{token}"] = nginx_challenge_redirect(prefix)
    responder.routes[f"/v1/dv/{WWW}/{token}"] = respond(status, body)
    result = check(customer, fetcher, prefix, token, expected_body="body.thumbprint")
    assert not result.valid
    assert answered in result.detail
    assert "the redirect is in place" in result.detail


# --- not in place ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 200])
def test_no_redirect_says_to_add_the_nginx_block(
    status: int, customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    token = f"none{status}"
    customer.routes[f"{CHALLENGE}{token}"] = respond(status, b"<html>welcome</html>")
    result = check(customer, fetcher, prefix, token)
    assert not result.valid
    assert result.detail.startswith(
        f"no redirect ({challenge_url(customer, token)} answered {status}): add the nginx block"
    )
    assert nginx_block(prefix) in result.detail
    assert f"{prefix}$host/$1" in result.detail
    assert result.final_url == challenge_url(customer, token)


def test_an_unfollowed_redirect_status_is_named(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}seeother"] = nginx_challenge_redirect(prefix, 303)
    result = check(customer, fetcher, prefix, "seeother")
    assert not result.valid
    assert "answered 303, a redirect the CA does not follow" in result.detail


def test_a_redirect_elsewhere_is_named(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    elsewhere = f"http://elsewhere.{ZONE}:{customer.port}/acme/elsewhere"
    customer.routes[f"{CHALLENGE}elsewhere"] = redirect(elsewhere)
    customer.routes["/acme/elsewhere"] = respond(404)
    result = check(customer, fetcher, prefix, "elsewhere")
    assert not result.valid
    assert result.detail.startswith(
        f"{challenge_url(customer, 'elsewhere')} redirects to {elsewhere} (answered 404): "
        f"point it at {prefix}$host/$1"
    )
    assert result.final_url == elsewhere


def test_a_redirect_to_the_responder_without_the_token_is_invalid(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}notoken"] = redirect(f"{prefix}{WWW}/fixed-token")
    result = check(customer, fetcher, prefix, "notoken")
    assert not result.valid
    assert "does not end with the token notoken" in result.detail


def test_too_many_redirects_is_invalid(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}loop"] = redirect("/loop/0")
    for i in range(12):
        customer.routes[f"/loop/{i}"] = redirect(f"/loop/{i + 1}")
    result = check(customer, fetcher, prefix, "loop")
    assert not result.valid
    assert "too many redirects" in result.detail
    assert f"redirect straight to {prefix}$host/$1" in result.detail


def test_a_redirect_to_a_port_not_allowed_is_invalid(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}port"] = redirect(f"https://{CERTOK}:8443/v1/dv/{WWW}/port")
    result = check(customer, fetcher, prefix, "port")
    assert not result.valid
    assert "redirect to port 8443 is not allowed" in result.detail
    assert result.final_url == f"https://{CERTOK}:8443/v1/dv/{WWW}/port"


def test_a_redirect_to_an_ip_literal_is_invalid(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str, guard: NetworkGuard
) -> None:
    customer.routes[f"{CHALLENGE}literal"] = redirect("http://0xa000001/v1/dv/x/literal")
    result = check(customer, fetcher, prefix, "literal")
    assert not result.valid
    assert "names an IP address (0xa000001, which means 10.0.0.1)" in result.detail


def test_a_domain_resolving_to_a_private_address_is_invalid_without_connecting(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str, guard: NetworkGuard
) -> None:
    result = check(customer, fetcher, prefix, "private", domain=f"internal.{ZONE}")
    assert not result.valid
    assert result.detail.startswith(
        f"internal.{ZONE} resolves to 10.0.0.1, a private address (RFC 1918), which the CA "
        "cannot reach"
    )
    assert result.final_url is None
    assert guard.connects_to(customer.port) == []


def test_a_domain_that_does_not_exist(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    result = check(customer, fetcher, prefix, "nx", domain=f"missing.{ZONE}")
    assert not result.valid
    assert result.detail == (
        f"missing.{ZONE} does not exist in DNS (NXDOMAIN): publish an A or AAAA record for "
        f"missing.{ZONE} pointing at your web server"
    )


def test_a_server_that_does_not_answer_times_out(
    customer: FakeWebServer,
    responder: FakeWebServer,
    tls_responder: FakeWebServer,
    dns_server: FakeAddressNameserver,
    prefix: str,
) -> None:
    customer.routes[f"{CHALLENGE}slow"] = stall(10)
    impatient = make_fetcher(dns_server, customer, responder, tls_responder, read_timeout=0.3)
    started = time.monotonic()
    result = check(customer, impatient, prefix, "slow")
    assert not result.valid
    assert f"127.0.0.1 port {customer.port} ({WWW}) did not answer" in result.detail
    assert "within 0.3 s" in result.detail
    # Cut short at the timeout, not after the 10 s stall (a busy machine's delays aside).
    assert time.monotonic() - started < 5


def test_a_closed_port_says_to_open_it(dns_server: FakeAddressNameserver, prefix: str) -> None:
    with FakeWebServer() as gone:
        port = gone.port
    closed = make_fetcher(dns_server, gone)
    result = run(check_http_redirect(WWW, prefix, "closed", closed, http_port=port))
    assert not result.valid
    assert "connection refused" in result.detail
    assert "accepts connections on port 80" in result.detail


def test_a_wildcard_is_invalid_for_http(fetcher: SafeFetcher, prefix: str) -> None:
    result = run(check_http_redirect(f"*.{ZONE}", prefix, "wild", fetcher))
    assert not result.valid
    assert "use type=dns" in result.detail


@pytest.mark.parametrize("token", ["", "../etc/passwd", "a/b", "x" * 129, "tok en"])
def test_a_bad_probe_token_is_a_programming_error(
    token: str, fetcher: SafeFetcher, prefix: str
) -> None:
    with pytest.raises(ValueError, match="probe token"):
        run(check_http_redirect(WWW, prefix, token, fetcher))


# --- many at once ---------------------------------------------------------------------------------


def test_check_http_redirects_keeps_order_and_fetches_repeats_once(
    customer: FakeWebServer, fetcher: SafeFetcher, prefix: str
) -> None:
    customer.routes[f"{CHALLENGE}many"] = nginx_challenge_redirect(prefix)
    items: list[tuple[str, str, str, str | None]] = [
        (WWW, prefix, "many", None),
        (f"other.{ZONE}", prefix, "many", None),
        (f"internal.{ZONE}", prefix, "many", None),
        (WWW, prefix, "many", None),
    ]
    before = len([r for r in customer.requests if r.path == f"{CHALLENGE}many"])
    results = run(check_http_redirects(items, fetcher, http_port=customer.port))
    assert [r.domain for r in results] == [WWW, f"other.{ZONE}", f"internal.{ZONE}", WWW]
    assert [r.valid for r in results] == [True, True, False, True]
    assert results[1].final_url == f"{prefix}other.{ZONE}/many"
    assert results[0] is results[3]
    after = len([r for r in customer.requests if r.path == f"{CHALLENGE}many"])
    assert after - before == 2
