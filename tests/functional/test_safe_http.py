"""The SSRF-safe fetcher against real loopback servers: a fake DNS server and small web servers.

Every test runs under a network guard (tests/functional/httpfake_guard.py) that blocks and
records any attempt to connect or send off loopback, or to use the system resolver; it must
record nothing. Refusals are proven by that, by the web servers' connection counts and by the
fetcher's reasons, never by actually sending a packet to a refused address.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine, Iterator
from contextlib import closing
from typing import Any, TypeVar

import pytest

from certok.prechecks.addresses import AddressPolicy
from certok.prechecks.resolver import make_resolver
from certok.prechecks.safe_http import (
    FetchFailed,
    FetchLimits,
    FetchRefused,
    FetchResult,
    SafeFetcher,
)
from tests.functional.httpfake_dns import FakeAddressNameserver
from tests.functional.httpfake_guard import NetworkGuard, loopback_only
from tests.functional.httpfake_web import (
    FakeWebServer,
    drip,
    endless_body,
    redirect,
    respond,
    slow_ok,
    stall,
)
from tests.kit.ports import free_port

pytestmark = pytest.mark.timeout(30)
T = TypeVar("T")

ZONE = "customer.test"
WWW = f"www.{ZONE}"
TLS_HOST = f"tls.{ZONE}"
LOOPBACK = AddressPolicy(allow_loopback=True)
# 169.254.169.254 in full-width digits, which IDNA mapping turns into the ASCII address.
FULLWIDTH_METADATA = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in "169.254.169.254")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(autouse=True)
def guard() -> Iterator[NetworkGuard]:
    with loopback_only() as network:
        yield network
    assert network.blocked == [], "something tried to leave loopback"


@pytest.fixture(scope="module")
def web() -> Iterator[FakeWebServer]:
    with FakeWebServer() as server:
        yield server


@pytest.fixture(scope="module")
def tls_web() -> Iterator[FakeWebServer]:
    with FakeWebServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def off_limits() -> Iterator[FakeWebServer]:
    """A server on a port the fetcher is not allowed to use; it must never see a connection."""
    with FakeWebServer({"/": respond(200, b"should not be reached")}) as server:
        yield server


@pytest.fixture(scope="module")
def dns_server() -> Iterator[FakeAddressNameserver]:
    with FakeAddressNameserver(
        zones=[ZONE],
        addresses={
            WWW: ["127.0.0.1"],
            TLS_HOST: ["127.0.0.1"],
            f"internal.{ZONE}": ["10.0.0.1"],
            f"metadata.{ZONE}": ["169.254.169.254"],
            f"mixed.{ZONE}": ["127.0.0.1", "10.0.0.5"],
            f"mapped.{ZONE}": ["::ffff:10.0.0.1"],
            f"nat64.{ZONE}": ["64:ff9b::a00:1"],
            f"dual.{ZONE}": ["::1", "127.0.0.1"],
            f"empty.{ZONE}": [],
        },
        rebinding={
            f"rebind-testnet.{ZONE}": [["198.51.100.7"], ["127.0.0.1"]],
            f"rebind-loopback.{ZONE}": [["127.0.0.1"], ["127.0.0.2"]],
        },
    ) as server:
        yield server


def fetcher(
    dns_server: FakeAddressNameserver,
    *ports: int,
    policy: AddressPolicy = LOOPBACK,
    max_concurrent: int = 32,
    **limits: Any,
) -> SafeFetcher:
    allowed = frozenset({80, 443, *ports})
    return SafeFetcher(
        lambda: make_resolver([f"127.0.0.1:{dns_server.port}"], 1.0),
        policy,
        FetchLimits(allowed_ports=allowed, **limits),
        max_concurrent=max_concurrent,
    )


def fetch(safe: SafeFetcher, url: str, **kwargs: Any) -> FetchResult:
    return run(safe.fetch(url, **kwargs))


def refused(safe: SafeFetcher, url: str) -> FetchRefused:
    with pytest.raises(FetchRefused) as caught:
        fetch(safe, url)
    return caught.value


def failed(safe: SafeFetcher, url: str) -> FetchFailed:
    with pytest.raises(FetchFailed) as caught:
        fetch(safe, url)
    return caught.value


def test_follows_a_redirect_chain_across_http_and_https(
    web: FakeWebServer,
    tls_web: FakeWebServer,
    dns_server: FakeAddressNameserver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy in the environment must not be used (this one does not even exist).
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    web.routes["/chain/start"] = redirect("/chain/relative", 301)
    web.routes["/chain/relative"] = redirect(f"https://{TLS_HOST}:{tls_web.port}/chain/tls", 307)
    tls_web.routes["/chain/tls"] = redirect(f"http://{WWW}:{web.port}/chain/end", 308)
    web.routes["/chain/end"] = respond(200, b"done")
    safe = fetcher(dns_server, web.port, tls_web.port)

    result = fetch(safe, f"http://{WWW}:{web.port}/chain/start")

    assert result.status == 200
    assert result.body == b"done"
    assert not result.truncated
    assert result.final_url == f"http://{WWW}:{web.port}/chain/end"
    assert [(h.url, h.address, h.status) for h in result.hops] == [
        (f"http://{WWW}:{web.port}/chain/start", "127.0.0.1", 301),
        (f"http://{WWW}:{web.port}/chain/relative", "127.0.0.1", 307),
        (f"https://{TLS_HOST}:{tls_web.port}/chain/tls", "127.0.0.1", 308),
        (f"http://{WWW}:{web.port}/chain/end", "127.0.0.1", 200),
    ]
    tls_request = next(r for r in tls_web.requests if r.path == "/chain/tls")
    # Host and SNI carry the hostname, although the connection went to the pinned address.
    assert tls_request.host == f"{TLS_HOST}:{tls_web.port}"
    assert tls_request.sni == TLS_HOST
    plain_request = next(r for r in web.requests if r.path == "/chain/start")
    assert plain_request.host == f"{WWW}:{web.port}"
    assert plain_request.user_agent is not None and "certok" in plain_request.user_agent


def test_ten_redirects_are_followed(web: FakeWebServer, dns_server: FakeAddressNameserver) -> None:
    for i in range(10):
        web.routes[f"/ten/{i}"] = redirect(f"/ten/{i + 1}")
    web.routes["/ten/10"] = respond(200, b"arrived")
    result = fetch(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/ten/0")
    assert result.body == b"arrived"
    assert len(result.hops) == 11


def test_eleven_redirects_are_refused(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    for i in range(12):
        web.routes[f"/eleven/{i}"] = redirect(f"/eleven/{i + 1}")
    problem = refused(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/eleven/0")
    assert "too many redirects" in problem.reason
    assert len(problem.hops) == 11
    assert all(hop.status == 302 for hop in problem.hops)
    # The 11th redirect's target is never requested.
    assert "/eleven/11" not in [r.path for r in web.requests]
    assert problem.url.endswith("/eleven/11")


def test_other_statuses_end_the_chain(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    # 303 and 300 are not among the redirects a CA follows (301, 302, 307, 308).
    web.routes["/see-other"] = redirect("/never", 303)
    result = fetch(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/see-other")
    assert result.status == 303
    assert len(result.hops) == 1
    assert "/never" not in [r.path for r in web.requests]


def test_redirect_to_a_port_not_allowed_is_refused_before_connecting(
    web: FakeWebServer, off_limits: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    web.routes["/to-other-port"] = redirect(f"http://{WWW}:{off_limits.port}/")
    problem = refused(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-other-port")
    assert problem.reason.startswith(f"redirect to port {off_limits.port} is not allowed (only 80")
    assert problem.stage == "url"
    assert off_limits.connections == 0


def test_a_first_url_on_a_port_not_allowed_is_refused(
    off_limits: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    problem = refused(fetcher(dns_server), f"http://{WWW}:{off_limits.port}/")
    assert problem.reason == f"port {off_limits.port} is not allowed (only 80 and 443)"
    assert off_limits.connections == 0


@pytest.mark.parametrize(
    "location",
    ["ftp://www.customer.test/x", "file:///etc/passwd", "gopher://www.customer.test:70/"],
)
def test_redirect_to_another_scheme_is_refused(
    location: str, web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    web.routes["/to-scheme"] = redirect(location)
    problem = refused(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-scheme")
    assert problem.reason == f"redirect to {location} is not allowed: only http and https URLs are"


@pytest.mark.parametrize(
    ("host", "means"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("167772161", "10.0.0.1"),
        ("0x0a000001", "10.0.0.1"),
        ("012.0.0.1", "10.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("[::ffff:10.0.0.1]", "10.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        (FULLWIDTH_METADATA, "169.254.169.254"),
        ("[fe80::1]", "fe80::1"),
    ],
)
def test_redirect_to_an_ip_literal_is_refused(
    host: str, means: str, web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    # Even with loopback allowed (so the test servers are reachable), an IP literal passes only
    # if the policy allows the address: these spellings are all refused without a connection.
    web.routes["/to-literal"] = redirect(f"http://{host}:{web.port}/x")
    problem = refused(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-literal")
    assert "names an IP address" in problem.reason
    assert means in problem.reason
    assert problem.stage == "url"


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1", "[::1]"])
def test_ip_literals_are_refused_when_loopback_is_not_allowed(
    host: str, web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    before = web.connections
    safe = fetcher(dns_server, web.port, policy=AddressPolicy())
    problem = refused(safe, f"http://{host}:{web.port}/")
    assert "names an IP address" in problem.reason
    assert "only hostnames are allowed" in problem.reason
    assert web.connections == before


def test_redirect_to_a_loopback_literal_is_followed_when_loopback_is_allowed(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    # The test-rig exception (Pebble-style redirects to 127.0.0.1) the policy opens.
    web.routes["/to-loopback-literal"] = redirect(f"http://2130706433:{web.port}/literal-end")
    web.routes["/literal-end"] = respond(200, b"literal")
    result = fetch(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-loopback-literal")
    assert result.final_url == f"http://127.0.0.1:{web.port}/literal-end"
    assert result.body == b"literal"


@pytest.mark.parametrize(
    "location",
    [
        "http://exa mple.test/",
        "http://www.customer.test\\@127.0.0.1/",
        "http://%31%32%37.0.0.1/",
        "http://1.2.3.999/",
        "http://-bad-.customer.test/",
        "http://:80/",
        "http://[::1/x",
        "//[zz]/",
        "http://www.customer.test:99999/",
        "http://www.customer.test:port/",
    ],
)
def test_redirect_to_a_malformed_host_is_refused(
    location: str, web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    web.routes["/to-bad-host"] = redirect(location)
    problem = refused(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-bad-host")
    assert problem.reason.startswith("redirect to ")
    assert problem.stage == "url"


def test_an_overlong_url_is_refused(web: FakeWebServer, dns_server: FakeAddressNameserver) -> None:
    web.routes["/to-long"] = redirect("/" + "a" * 2100)
    problem = refused(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-long")
    assert "characters is not allowed (at most 2000)" in problem.reason


def test_paths_are_sent_escaped(web: FakeWebServer, dns_server: FakeAddressNameserver) -> None:
    web.routes["/to-odd-path"] = redirect("/odd path/\u00fc?q=a b&r=%41#fragment")
    web.routes["/odd%20path/%C3%BC"] = respond(200, b"escaped")
    result = fetch(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-odd-path")
    assert result.body == b"escaped"
    assert web.requests[-1].path == "/odd%20path/%C3%BC?q=a%20b&r=%41"


# --- the address policy at every hop ------------------------------------------------------------


def test_a_name_resolving_to_a_private_address_is_refused_without_connecting(
    web: FakeWebServer, dns_server: FakeAddressNameserver, guard: NetworkGuard
) -> None:
    problem = refused(fetcher(dns_server, web.port), f"http://internal.{ZONE}:{web.port}/")
    assert problem.reason == (f"internal.{ZONE} resolves to 10.0.0.1, a private address (RFC 1918)")
    assert problem.stage == "address"
    assert problem.hops == ()
    assert guard.connects_to(web.port) == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("internal", "resolves to 10.0.0.1, a private address"),
        ("metadata", "resolves to 169.254.169.254, a link-local address"),
        ("mixed", "resolves to 10.0.0.5, a private address"),
        ("mapped", "an IPv4-mapped form of 10.0.0.1, a private address"),
        ("nat64", "resolves to 64:ff9b::a00:1, a NAT64 form of 10.0.0.1, a private address"),
    ],
)
def test_a_redirect_to_a_name_resolving_to_a_refused_address_is_refused(
    name: str,
    reason: str,
    web: FakeWebServer,
    dns_server: FakeAddressNameserver,
    guard: NetworkGuard,
) -> None:
    web.routes[f"/to-{name}"] = redirect(f"http://{name}.{ZONE}:{web.port}/secret")
    problem = refused(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/to-{name}")
    assert reason in problem.reason
    assert problem.url == f"http://{name}.{ZONE}:{web.port}/secret"
    assert [hop.status for hop in problem.hops] == [302]
    # Only the first hop connected; "/secret" was never requested from anyone.
    assert guard.connects_to(web.port) == ["127.0.0.1"]
    assert "/secret" not in [r.path for r in web.requests]


def test_loopback_is_refused_by_the_production_policy(
    web: FakeWebServer, dns_server: FakeAddressNameserver, guard: NetworkGuard
) -> None:
    before = web.connections
    safe = fetcher(dns_server, web.port, policy=AddressPolicy())
    problem = refused(safe, f"http://{WWW}:{web.port}/")
    assert problem.reason == f"{WWW} resolves to 127.0.0.1, a loopback address"
    assert web.connections == before
    assert guard.connects_to(web.port) == []


def test_private_addresses_stay_refused_when_only_loopback_is_allowed(
    dns_server: FakeAddressNameserver,
) -> None:
    problem = refused(fetcher(dns_server), f"http://internal.{ZONE}/")
    assert "private address" in problem.reason


def test_dns_rebinding_to_loopback_after_a_refused_first_answer_connects_nowhere(
    web: FakeWebServer, dns_server: FakeAddressNameserver, guard: NetworkGuard
) -> None:
    name = f"rebind-testnet.{ZONE}"
    before = web.connections
    problem = refused(fetcher(dns_server, web.port), f"http://{name}:{web.port}/")
    assert problem.reason == (
        f"{name} resolves to 198.51.100.7, a documentation address (TEST-NET-2, RFC 5737)"
    )
    # One lookup per type: the later (loopback) answer was never asked for, nor connected to.
    assert dns_server.queries_for(name).count("A") == 1
    assert web.connections == before
    assert guard.connects_to(web.port) == []


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    web: FakeWebServer, dns_server: FakeAddressNameserver, guard: NetworkGuard
) -> None:
    # The first answer is 127.0.0.1, later ones 127.0.0.2 (where nothing listens): a fetcher
    # that looked the name up again to connect would go to 127.0.0.2.
    name = f"rebind-loopback.{ZONE}"
    web.routes["/pinned"] = respond(200, b"pinned")
    result = fetch(fetcher(dns_server, web.port), f"http://{name}:{web.port}/pinned")
    assert result.body == b"pinned"
    assert [hop.address for hop in result.hops] == ["127.0.0.1"]
    assert dns_server.queries_for(name).count("A") == 1
    assert guard.connects_to(web.port) == ["127.0.0.1"]


def test_ipv6_is_tried_first_and_ipv4_after_a_refused_connection(
    web: FakeWebServer, dns_server: FakeAddressNameserver, guard: NetworkGuard
) -> None:
    # The web server listens on 127.0.0.1 only, so [::1]:port refuses the connection.
    web.routes["/dual"] = respond(200, b"v4")
    result = fetch(fetcher(dns_server, web.port), f"http://dual.{ZONE}:{web.port}/dual")
    assert result.body == b"v4"
    assert result.hops[0].address == "127.0.0.1"
    assert guard.connects_to(web.port) == ["::1", "127.0.0.1"]


# --- failures -------------------------------------------------------------------------------------


def test_a_name_that_does_not_exist(dns_server: FakeAddressNameserver) -> None:
    problem = failed(fetcher(dns_server), f"http://nothing.{ZONE}/")
    assert problem.reason == f"nothing.{ZONE} does not exist in DNS (NXDOMAIN)"
    assert problem.stage == "dns"


def test_a_name_without_addresses(dns_server: FakeAddressNameserver) -> None:
    problem = failed(fetcher(dns_server), f"http://empty.{ZONE}/")
    assert problem.reason == f"empty.{ZONE} has no A or AAAA record"


def test_a_closed_port(dns_server: FakeAddressNameserver) -> None:
    port = free_port()
    problem = failed(fetcher(dns_server, port), f"http://{WWW}:{port}/")
    assert (
        problem.reason == f"could not connect to 127.0.0.1 port {port} ({WWW}): connection refused"
    )
    assert problem.stage == "connect"


def test_a_redirect_without_location(web: FakeWebServer, dns_server: FakeAddressNameserver) -> None:
    web.routes["/no-location"] = respond(302)
    problem = failed(fetcher(dns_server, web.port), f"http://{WWW}:{web.port}/no-location")
    assert "answered 302 without a Location header" in problem.reason


def test_a_response_that_is_not_http(dns_server: FakeAddressNameserver) -> None:
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        async def serve_garbage() -> FetchFailed:
            loop = asyncio.get_running_loop()
            listener.setblocking(False)
            task = asyncio.create_task(fetcher(dns_server, port).fetch(f"http://{WWW}:{port}/"))
            conn, _ = await loop.sock_accept(listener)
            with closing(conn):
                await loop.sock_sendall(conn, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                with pytest.raises(FetchFailed) as caught:
                    await task
            return caught.value

        problem = run(serve_garbage())
    assert "malformed HTTP response (not an HTTP/1.x status line" in problem.reason


# --- time and size limits -------------------------------------------------------------------------

# A limit under test cuts a fetch short after a fraction of a second; what it cuts short (a
# stall, a drip, an endless body) would go on for 10 s or more. The bound sits far from both,
# so a busy machine's delays cannot fail a fetch that was cut short in time.
CUT_SHORT_WITHIN_SECONDS = 5.0


def test_a_server_that_never_answers_times_out(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    web.routes["/stall"] = stall(10)
    started = time.monotonic()
    problem = failed(
        fetcher(dns_server, web.port, read_timeout=0.3), f"http://{WWW}:{web.port}/stall"
    )
    elapsed = time.monotonic() - started
    assert f"did not answer http://{WWW}:{web.port}/stall within 0.3 s" in problem.reason
    assert 0.3 <= elapsed < CUT_SHORT_WITHIN_SECONDS


def test_a_server_that_drips_bytes_times_out_on_the_whole_response(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    web.routes["/drip"] = drip(0.02)
    started = time.monotonic()
    problem = failed(
        fetcher(dns_server, web.port, read_timeout=0.4), f"http://{WWW}:{web.port}/drip"
    )
    assert "within 0.4 s" in problem.reason
    assert time.monotonic() - started < CUT_SHORT_WITHIN_SECONDS


def test_a_connection_that_is_never_accepted_times_out(dns_server: FakeAddressNameserver) -> None:
    # A listener with a full accept queue drops new SYNs: the connect hangs until the timeout.
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.2)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    break  # the queue is full now
            else:
                pytest.fail("could not fill the listener's accept queue")
            started = time.monotonic()
            problem = failed(
                fetcher(dns_server, port, connect_timeout=0.3), f"http://{WWW}:{port}/"
            )
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert problem.reason == f"timed out connecting to 127.0.0.1 port {port} ({WWW}) after 0.3 s"
    assert 0.3 <= elapsed < CUT_SHORT_WITHIN_SECONDS


def test_a_tls_handshake_that_never_completes_times_out(
    dns_server: FakeAddressNameserver,
) -> None:
    with closing(socket.socket()) as listener:  # accepts TCP (kernel backlog), never speaks TLS
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        problem = failed(fetcher(dns_server, port, connect_timeout=0.3), f"https://{WWW}:{port}/")
    assert (
        problem.reason
        == f"the TLS handshake with 127.0.0.1 port {port} ({WWW}) timed out after 0.3 s"
    )
    assert problem.stage == "tls"
    assert time.monotonic() - started < CUT_SHORT_WITHIN_SECONDS


def test_https_to_a_plain_http_server_fails_the_handshake(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    problem = failed(fetcher(dns_server, web.port), f"https://{WWW}:{web.port}/")
    assert problem.stage == "tls"
    assert problem.reason.startswith(
        f"the TLS handshake with 127.0.0.1 port {web.port} ({WWW}) failed"
    )


def test_the_whole_fetch_has_a_deadline(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    web.routes["/deadline"] = redirect("/deadline-2")
    web.routes["/deadline-2"] = stall(10)
    safe = fetcher(dns_server, web.port, read_timeout=5, total_timeout=0.5)
    started = time.monotonic()
    problem = failed(safe, f"http://{WWW}:{web.port}/deadline")
    assert problem.stage == "deadline"
    assert "after 0.5 s" in problem.reason
    assert [hop.status for hop in problem.hops] == [302]
    assert time.monotonic() - started < CUT_SHORT_WITHIN_SECONDS


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_only_max_body_bytes_of_an_endless_body_are_read(
    framing: str, web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    web.routes[f"/endless-{framing}"] = endless_body(framing)
    started = time.monotonic()
    result = fetch(
        fetcher(dns_server, web.port, max_body_bytes=100),
        f"http://{WWW}:{web.port}/endless-{framing}",
    )
    assert result.status == 200
    assert result.body == b"x" * 100
    assert result.truncated
    assert time.monotonic() - started < CUT_SHORT_WITHIN_SECONDS


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("size", [0, 99, 100, 101])
def test_bodies_up_to_the_cap_are_read_whole(
    chunked: bool, size: int, web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    body = bytes(range(256))[:size] if size <= 256 else b""
    path = f"/body-{size}-{chunked}"
    web.routes[path] = respond(200, body, chunked=chunked)
    result = fetch(
        fetcher(dns_server, web.port, max_body_bytes=100), f"http://{WWW}:{web.port}{path}"
    )
    assert result.body == body[:100]
    assert result.truncated == (size > 100)


def test_concurrent_fetches_are_capped(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    with FakeWebServer({"/slow": slow_ok(0.25)}) as slow:
        safe = fetcher(dns_server, slow.port, max_concurrent=3)

        async def many() -> list[FetchResult]:
            url = f"http://{WWW}:{slow.port}/slow"
            return await asyncio.gather(*(safe.fetch(url) for _ in range(9)))

        started = time.monotonic()
        results = run(many())
        elapsed = time.monotonic() - started
        assert [r.body for r in results] == [b"ok"] * 9
        assert slow.peak_concurrent == 3
        assert elapsed >= 0.7  # three waves of three


def test_the_cap_holds_across_event_loops(
    web: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    # The order driver runs each batch under its own asyncio.run: the fetcher must still work.
    web.routes["/again"] = respond(200, b"again")
    safe = fetcher(dns_server, web.port, max_concurrent=1)
    for _ in range(2):
        assert fetch(safe, f"http://{WWW}:{web.port}/again").body == b"again"


def test_stop_at_prefix_ends_the_chain_without_requesting_it(
    web: FakeWebServer, off_limits: FakeWebServer, dns_server: FakeAddressNameserver
) -> None:
    target = f"http://responder.{ZONE}:{off_limits.port}/v1/dv/{WWW}/tok"
    web.routes["/to-responder"] = redirect(target)
    safe = fetcher(dns_server, web.port, off_limits.port)
    result = fetch(
        safe,
        f"http://{WWW}:{web.port}/to-responder",
        stop_at_prefix=f"http://responder.{ZONE}:{off_limits.port}/v1/dv/",
    )
    assert result.stopped
    assert result.final_url == target
    assert result.status == 302
    assert len(result.hops) == 1
    assert off_limits.connections == 0
    # responder.customer.test does not even exist: it was never looked up.
    assert dns_server.queries_for(f"responder.{ZONE}") == []
