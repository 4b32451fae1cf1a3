"""The fault-injecting proxy in front of the rig's Pebble, driven with httpx and certok's ACME
adapter: forwarding and URL rewriting, 429/503/500 answers, resets, empty bodies, stalls, the
request log and a clean stop."""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from certok.crypto import generate_private_key, make_csr
from certok.issuance import (
    STATUS_PENDING,
    AcmeProblem,
    AcmeSession,
    ProblemKind,
    new_account_key,
)
from certok.issuance.problems import GARBLED_RESPONSE, HTTP_ERROR, TRANSPORT_ERROR
from tests.kit.waiting import wait_until
from tests.rig import Rig
from tests.rig.fault_proxy import (
    FaultProxy,
    Rule,
    UrlRewriter,
    empty_200,
    problem_document,
    reset,
    stall,
    status,
)
from tests.rig.process import tcp_is_listening

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(rig: Rig) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=str(rig.ca_bundle))
    with httpx.Client(verify=context, trust_env=False, timeout=5.0) as verified:
        yield verified


@pytest.fixture
def session_for(rig: Rig) -> Iterator[Callable[[FaultProxy], AcmeSession]]:
    """Factory: a fresh account key's AcmeSession on a proxy's directory, closed after."""
    sessions: list[AcmeSession] = []

    def make(proxy: FaultProxy) -> AcmeSession:
        session = AcmeSession(
            proxy.directory_url, new_account_key(), ca_bundle=str(rig.ca_bundle), timeout=10
        )
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def _register(session: AcmeSession) -> str:
    return session.register(contact_email=None, eab_kid=None, eab_hmac_key=None)


def _csr() -> bytes:
    return make_csr(generate_private_key("ECC"), ["www.customer.test"]).encode()


def _failure(call: Callable[[], Any]) -> AcmeProblem:
    with pytest.raises(AcmeProblem) as caught:
        call()
    return caught.value


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `call` in a thread; its result or exception lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as error:  # handed back to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _urls(directory: dict[str, Any]) -> list[str]:
    """The directory's https URLs (its termsOfService is a data: URL at Pebble)."""
    found = [value for value in directory.values() if isinstance(value, str)]
    return [url for url in found if url.startswith("https:")]


# --- forwarding and rewriting ----------------------------------------------------------------


def test_directory_through_the_proxy_names_only_the_proxy(
    rig: Rig, fault_proxy: FaultProxy, client: httpx.Client
) -> None:
    assert fault_proxy.directory_url == f"{fault_proxy.base_url}/dir"
    directory = client.get(fault_proxy.directory_url).json()
    assert set(directory) >= {"newAccount", "newNonce", "newOrder"}
    assert all(url.startswith(fault_proxy.base_url + "/") for url in _urls(directory))

    nonce = client.head(directory["newNonce"])
    assert nonce.status_code == 200
    assert nonce.headers["Replay-Nonce"]
    assert nonce.headers["Link"] == f'<{fault_proxy.directory_url}>;rel="index"'

    logged = [(r.method, r.path, r.status, r.outcome) for r in fault_proxy.requests()]
    assert logged == [("GET", "/dir", 200, "forwarded"), ("HEAD", "/nonce-plz", 200, "forwarded")]


def test_upstream_urls_in_bodies_and_link_headers_are_rewritten(
    rig: Rig, client: httpx.Client
) -> None:
    # With its own Host, Pebble names itself: only the proxy's rewriting can hide it.
    with FaultProxy.for_rig(rig, forward_host=False) as proxy:
        directory = client.get(proxy.directory_url).json()
        link = client.head(directory["newNonce"]).headers["Link"]
    upstream = rig.directory_url.removesuffix("/dir")
    assert all(
        url.startswith(upstream + "/") for url in _urls(client.get(rig.directory_url).json())
    )
    assert all(url.startswith(proxy.base_url + "/") for url in _urls(directory))
    assert link == f'<{proxy.directory_url}>;rel="index"'


def test_rewriting_never_touches_a_longer_port_or_host() -> None:
    rewriter = UrlRewriter("https://127.0.0.1:3179", "https://127.0.0.1:9000")
    assert rewriter.text("https://127.0.0.1:3179/my-order/1") == "https://127.0.0.1:9000/my-order/1"
    assert rewriter.text("https://127.0.0.1:31795/dir") == "https://127.0.0.1:31795/dir"
    assert rewriter.body(b'{"a":"https://127.0.0.1:3179"}') == b'{"a":"https://127.0.0.1:9000"}'
    assert rewriter.text("https://127.0.0.1:3179.evil.test/") == "https://127.0.0.1:3179.evil.test/"


def test_account_registration_through_the_proxy_is_logged(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    before_wall = dt.datetime.now(dt.UTC)
    account_url = _register(session_for(fault_proxy))
    assert account_url.startswith(fault_proxy.base_url + "/my-account/")

    records = fault_proxy.requests()
    assert [(r.method, r.path, r.status) for r in records] == [
        ("GET", "/dir", 200),
        ("HEAD", "/nonce-plz", 200),
        ("POST", "/sign-me-up", 201),
    ]
    assert all(r.rule is None and r.action is None and r.finished for r in records)
    assert [r.monotonic for r in records] == sorted(r.monotonic for r in records)
    assert all(before_wall <= r.wall <= dt.datetime.now(dt.UTC) for r in records)
    assert fault_proxy.requests(r"/sign-me-up", method="post")[0].index == 2
    assert fault_proxy.requests(r"/sign-me-up", method="GET") == []


# --- answers instead of forwarding -----------------------------------------------------------


def _rate_limit(retry_after: str) -> Rule:
    return Rule(
        method="POST",
        path=r"/sign-me-up",
        times=1,
        action=status(
            429,
            problem_document("rateLimited", "too many new accounts", 429),
            headers={"Retry-After": retry_after},
        ),
    )


def test_429_with_retry_after_seconds_is_rate_limited_and_its_nonce_works(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    fault_proxy.add_rule(_rate_limit("120"))
    session = session_for(fault_proxy)
    before = dt.datetime.now(dt.UTC)
    problem = _failure(lambda: _register(session))
    after = dt.datetime.now(dt.UTC)
    assert problem.kind is ProblemKind.RATE_LIMITED
    assert problem.type == "rateLimited"
    assert problem.http_status == 429
    assert problem.retry_after is not None
    assert before + dt.timedelta(seconds=120) <= problem.retry_after
    assert problem.retry_after <= after + dt.timedelta(seconds=120)

    # The 429 carried a fresh upstream nonce: the retry spends it without asking newNonce, and
    # Pebble takes it (a bad nonce would show as a badNonce answer and a second POST).
    seen = len(fault_proxy.requests())
    assert _register(session).startswith(fault_proxy.base_url)
    later = [(r.method, r.path, r.status) for r in fault_proxy.requests()[seen:]]
    assert later == [("POST", "/sign-me-up", 201)]


def test_429_with_retry_after_http_date_is_rate_limited(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    when = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).replace(microsecond=0)
    fault_proxy.add_rule(_rate_limit(email.utils.format_datetime(when, usegmt=True)))
    problem = _failure(lambda: _register(session_for(fault_proxy)))
    assert problem.kind is ProblemKind.RATE_LIMITED
    assert problem.retry_after == when


def test_429_response_is_problem_json_with_a_nonce(
    fault_proxy: FaultProxy, client: httpx.Client
) -> None:
    fault_proxy.add_rule(Rule(method="GET", path=r"^/dir$", action=_rate_limit("5").action))
    answer = client.get(fault_proxy.directory_url)
    assert answer.status_code == 429
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.headers["Retry-After"] == "5"
    assert answer.headers["Replay-Nonce"]
    assert answer.json()["type"] == "urn:ietf:params:acme:error:rateLimited"
    record = fault_proxy.requests()[0]
    assert (record.action, record.outcome, record.status) == ("status", "answered", 429)


def test_503_without_a_problem_document_is_retryable(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    session = session_for(fault_proxy)
    _register(session)
    fault_proxy.add_rule(Rule(method="POST", path=r"/order-plz", action=status(503)))
    problem = _failure(lambda: session.new_order(_csr()))
    assert problem.kind is ProblemKind.RETRYABLE
    assert problem.type == HTTP_ERROR
    assert problem.http_status == 503


def test_500_server_internal_is_retryable(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    session = session_for(fault_proxy)
    _register(session)
    body = problem_document("serverInternal", "the database fell over", 500)
    fault_proxy.add_rule(Rule(method="POST", path=r"/order-plz", action=status(500, body)))
    problem = _failure(lambda: session.new_order(_csr()))
    assert problem.kind is ProblemKind.RETRYABLE
    assert problem.type == "serverInternal"
    assert "database fell over" in problem.detail


def test_reset_is_retryable_and_times_1_applies_once(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    rule = fault_proxy.add_rule(Rule(method="POST", path=r"/sign-me-up", times=1, action=reset()))
    session = session_for(fault_proxy)
    problem = _failure(lambda: _register(session))
    assert problem.kind is ProblemKind.RETRYABLE
    assert problem.type == TRANSPORT_ERROR
    assert rule.applied == 1 and rule.used_up

    assert _register(session).startswith(fault_proxy.base_url)
    assert rule.applied == 1
    posts = fault_proxy.requests(r"/sign-me-up")
    assert [(r.action, r.outcome, r.status) for r in posts] == [
        ("reset", "reset", None),
        (None, "forwarded", 201),
    ]


def test_empty_200_on_an_order_fetch_is_retryable(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    session = session_for(fault_proxy)
    _register(session)
    order = session.new_order(_csr())
    fault_proxy.add_rule(Rule(method="POST", path=r"/my-order/", times=1, action=empty_200()))
    problem = _failure(lambda: session.fetch_order(order.url))
    assert problem.kind is ProblemKind.RETRYABLE
    assert problem.type == GARBLED_RESPONSE
    assert "not JSON" in problem.detail
    assert session.fetch_order(order.url).status == STATUS_PENDING


# --- stalls ------------------------------------------------------------------------------------


def test_stalled_challenge_answer_waits_for_release_while_other_requests_pass(
    fault_proxy: FaultProxy, session_for: Callable[[FaultProxy], AcmeSession]
) -> None:
    session = session_for(fault_proxy)
    _register(session)
    order = session.new_order(_csr())
    challenge = next(c for c in order.authorizations[0].challenges if c.type == "dns-01")
    fault_proxy.add_rule(Rule(method="POST", path=r"/chalZ/", action=stall()))

    answering, outcome = _in_thread(lambda: session.answer_challenge(challenge.url))
    held = fault_proxy.wait_for(r"/chalZ/", method="POST")[0]
    assert held.outcome == "stalled" and held.status is None
    assert [r.index for r in fault_proxy.stalled()] == [held.index]

    # Meanwhile other requests pass, and Pebble has not seen the answer: still pending.
    authz = session.fetch_authorization(order.authorizations[0].url)
    assert next(c for c in authz.challenges if c.url == challenge.url).status == STATUS_PENDING
    answering.join(0.2)
    assert answering.is_alive(), "the stalled request must not complete by itself"

    assert fault_proxy.release_all() == 1
    answering.join(10)
    assert not answering.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].url == challenge.url
    done = fault_proxy.requests(r"/chalZ/", method="POST")[0]
    assert (done.action, done.outcome, done.status) == ("stall", "forwarded", 200)
    assert fault_proxy.stalled() == []


def test_stall_until_an_event_or_for_seconds(fault_proxy: FaultProxy, client: httpx.Client) -> None:
    go = threading.Event()
    fault_proxy.add_rule(Rule(method="GET", path=r"^/dir$", times=1, action=stall(until=go)))
    fault_proxy.add_rule(Rule(method="HEAD", path=r"/nonce-plz", times=1, action=stall(0.3)))

    fetching, outcome = _in_thread(lambda: client.get(fault_proxy.directory_url))
    fault_proxy.wait_for(r"^/dir$")
    fetching.join(0.2)
    assert fetching.is_alive()
    go.set()
    fetching.join(5)
    assert outcome["result"].status_code == 200

    started = time.monotonic()
    assert client.head(f"{fault_proxy.base_url}/nonce-plz").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_requests_are_served_concurrently(fault_proxy: FaultProxy, rig: Rig) -> None:
    go = threading.Event()
    fault_proxy.add_rule(Rule(method="GET", path=r"^/dir$", action=stall(until=go)))
    context = ssl.create_default_context(cafile=str(rig.ca_bundle))

    def fetch(_: int) -> int:
        # One connection each: a shared keep-alive connection would serialise them.
        with httpx.Client(verify=context, trust_env=False, timeout=30.0) as own:
            return own.get(fault_proxy.directory_url).status_code

    with ThreadPoolExecutor(max_workers=5) as pool:
        fetches = pool.map(fetch, range(5))
        # All five held at once: served one after another, the second would wait for the first.
        all_held = wait_until(lambda: len(fault_proxy.stalled()) == 5, timeout=30)
        go.set()
        codes = list(fetches)
    assert all_held, f"{len(fault_proxy.stalled())} of 5 requests held at once: not concurrent"
    assert codes == [200] * 5


# --- the log and shutdown ----------------------------------------------------------------------


def test_wait_for_times_out_naming_what_arrived(
    fault_proxy: FaultProxy, client: httpx.Client
) -> None:
    client.get(fault_proxy.directory_url)
    with pytest.raises(TimeoutError, match=r"0 of 1 POST .*finalize-order.*GET /dir"):
        fault_proxy.wait_for(r"/finalize-order/", method="POST", timeout=0.1)
    assert len(fault_proxy.wait_for(r"^/dir$", timeout=0.1)) == 1


def test_stop_drops_stalled_requests_and_leaves_nothing_running(
    rig: Rig, client: httpx.Client
) -> None:
    proxy = FaultProxy.for_rig(rig).start()
    port = proxy.port
    client.get(proxy.directory_url)  # leaves an idle keep-alive connection open
    proxy.add_rule(Rule(method="GET", path=r"^/dir$", action=stall()))
    context = ssl.create_default_context(cafile=str(rig.ca_bundle))
    with httpx.Client(verify=context, trust_env=False, timeout=5.0) as other:
        fetching, outcome = _in_thread(lambda: other.get(proxy.directory_url))
        proxy.wait_for(r"^/dir$", count=2)

        started = time.monotonic()
        proxy.stop()
        # Dropped at once, not left to the 5 s join that gives up on a stalled handler.
        assert time.monotonic() - started < 4.0
        fetching.join(5)
    assert isinstance(outcome.get("error"), httpx.TransportError)
    assert proxy.requests()[-1].outcome == "dropped"
    assert not tcp_is_listening(port)
    running = [t.name for t in threading.enumerate() if t.name.startswith("fault-proxy")]
    assert running == []
    proxy.stop()  # a second stop is harmless
