"""A misbehaving CA, end to end: real `certok serve`, the fault proxy in front of Pebble.

Each test breaks one thing the way CAs do (429 with Retry-After, 5xx, resets, garbled answers,
a finalization that never answers, permanent refusals, a CA that is down, nonce chaos) and
checks what the user sees through /v1/cert/apply and what certok sent the CA (the proxy's log):
transient faults end `issued` without a `failure` on the way, never earlier than the CA or the
retry schedule allows; permanent ones fail fast with the CA's reason.

The single-order faults share one long-running certok (as in production: one server, a CA
that misbehaves now and then); each of them orders its own name and reads only its own part
of the proxy's log.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certok.issuance.problems import KIND_BY_TYPE
from certok.orders.schedule import RETRY_DELAYS_SECONDS
from tests.depth import rounds
from tests.e2e.flow import (
    OrderCountingProxy,
    User,
    challenge_record_count,
    check_issued,
    codes_for,
    delegate,
    delegation_lines,
    extra_hosts,
    order_states,
    print_request_log,
)
from tests.rig import Rig
from tests.rig.certok_server import CertokServer
from tests.rig.fault_proxy import (
    Action,
    FaultProxy,
    RequestRecord,
    Rule,
    empty_200,
    problem_document,
    reset,
    stall,
    status,
)

pytestmark = pytest.mark.timeout(120)

# Pebble's paths (see tests/rig/fault_proxy.py).
NEW_ORDER = r"^/order-plz$"
ORDER = r"^/my-order/"
AUTHZ = r"^/authZ/"
CHALLENGE = r"^/chalZ/"
FINALIZE = r"^/finalize-order/"
CERTIFICATE = r"^/certZ/"

ISSUER = "letsencrypt"
# The worker's claim loop wakes this often here, so a due retry starts within this time.
WORKER_POLL_SECONDS = 0.2
# What a retry may take beyond its scheduled time: the claim loop, the step's own work.
SCHEDULE_SLACK_SECONDS = 1.0
# certok's timeout for one exchange with the CA, for the stalled finalizations.
ACME_TIMEOUT_SECONDS = 5
REPO_ROOT = Path(__file__).resolve().parents[2]


def _certok_settings(proxy: FaultProxy, **extra: object) -> dict[str, object]:
    return {
        "apply_wait_seconds": 0,
        "worker_poll_seconds": WORKER_POLL_SECONDS,
        "issuers__letsencrypt__directory": proxy.directory_url,
        **extra,
    }


def _apply(user: User, code: str) -> dict:  # type: ignore[type-arg]
    first = user.apply(code, issuer=ISSUER)
    assert first["status"] == "pending", first
    return first


def _never_failed(user: User, code: str) -> None:
    assert "failure" not in user.seen[code], user.seen[code]
    assert user.seen[code][-1] == "issued", user.seen[code]


def _rate_limited(retry_after: str, detail: str) -> Action:
    return status(
        429, problem_document("rateLimited", detail, 429), headers={"Retry-After": retry_after}
    )


def _wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


# --- one certok behind the proxy, one order per test -----------------------------------------


@dataclass
class World:
    """A running certok (letsencrypt → the proxy), one tenant, names delegated in advance."""

    rig: Rig
    proxy: OrderCountingProxy
    server: CertokServer
    user: User
    zone_lines: list[str]
    unused_names: list[str]


@dataclass
class Story:
    """One test's order: its name, its code, and its part of the proxy's log."""

    world: World
    name: str
    code: str
    first_request: int

    @property
    def user(self) -> User:
        return self.world.user

    @property
    def proxy(self) -> OrderCountingProxy:
        return self.world.proxy

    @property
    def server(self) -> CertokServer:
        return self.world.server

    def requests(self, path: str | None = None, method: str | None = "POST") -> list[RequestRecord]:
        """This test's requests to `path` (a regex), oldest first."""
        found = self.proxy.requests(path, method=method)
        return [r for r in found if r.index >= self.first_request]

    def wait_for(self, path: str, count: int = 1, timeout: float = 10) -> list[RequestRecord]:
        """Until this test's `count`-th POST to `path` arrived (held ones included)."""
        earlier = sum(
            r.index < self.first_request for r in self.proxy.requests(path, method="POST")
        )
        found = self.proxy.wait_for(path, method="POST", count=earlier + count, timeout=timeout)
        return found[earlier:]

    def next_after(self, record: RequestRecord) -> RequestRecord:
        """The next request with the same method to the same kind of path (the retry)."""
        kind = "^/" + record.path.split("/")[1]
        later = [r for r in self.requests(kind, record.method) if r.index > record.index]
        assert later, f"no {record.method} {kind} after {record.path}"
        return later[0]

    def state(self) -> str | None:
        """The state of the order this test's code started (None before `apply`)."""
        return order_states(self.server, [self.code]).get(self.code)

    def challenge_records(self) -> int:
        return challenge_record_count(self.server, code=self.code)

    def counts(self) -> tuple[int, int, int]:
        """(ACME orders created, finalizations the CA accepted, certificates downloaded)."""
        return (
            self.proxy.created_orders()[(self.name,)],
            sum(r.status == 200 for r in self.requests(FINALIZE)),
            sum(r.status == 200 for r in self.requests(CERTIFICATE)),
        )


@pytest.fixture(scope="class")
def world(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    names, hosts = extra_hosts(16, prefix="fault")
    with OrderCountingProxy.for_rig(rig) as proxy:
        server = CertokServer.for_rig(
            rig,
            tmp_path_factory.mktemp("ca-faults"),
            **_certok_settings(
                proxy, acme_timeout_seconds=ACME_TIMEOUT_SECONDS, code_ttl_seconds=3600
            ),
        )
        server.start()
        try:
            user = User(server, server.create_tenant("acme-corp"))
            lines = delegation_lines(user.dv(",".join(names)), extra=hosts)
            yield World(rig, proxy, server, user, lines, names)
        finally:
            server.stop()
            proxy.release_all()
            if rig.customer_records:
                rig.set_customer_records([])


@pytest.fixture
def story(world: World) -> Iterator[Story]:
    """A fresh name and code on the shared certok, the proxy without rules."""
    world.proxy.clear_rules()
    if world.rig.customer_records != world.zone_lines:
        world.rig.set_customer_records(world.zone_lines)
    name = world.unused_names.pop(0)
    first_request = len(world.proxy.requests())
    code = codes_for(world.user, [name])[name]
    story = Story(world, name, code, first_request)
    yield story
    world.proxy.clear_rules()
    # Held requests go on to Pebble now (their answers reach nobody): no thread waits 60 s.
    world.proxy.release_all()
    # Shown only when the test failed (pytest shows a passing test's output to nobody).
    print_request_log(world.proxy, first_request)
    print(f"--- {world.server.log_path} ---\n{world.server.log_text()[-4000:]}")
    # An order left pending by a failed test must not bleed into the next test's requests.
    _wait_until(lambda: story.state() != "pending", f"order for {name} to end", 15)


class TestOneCertokBehindAFaultyCa:
    # --- rate limits -------------------------------------------------------------------------

    def test_429_on_new_order_waits_for_retry_after_seconds(
        self, rig: Rig, story: Story, tmp_path: Path
    ) -> None:
        retry_after = 3
        story.proxy.add_rule(
            Rule(
                method="POST",
                path=NEW_ORDER,
                times=1,
                action=_rate_limited(str(retry_after), "too many new orders for this account"),
            )
        )
        _apply(story.user, story.code)
        # While it waits, the user is told why.
        waiting = story.user.apply_until(
            story.code,
            lambda d: "rateLimited" in d.get("reason", ""),
            "naming the rate limit",
            timeout=retry_after - 0.5,
        )
        assert waiting["status"] == "pending"
        assert "too many new orders for this account" in waiting["reason"]
        data = story.user.apply_until_done(story.code, timeout=30)
        check_issued(rig, data, [story.name], "ECC", tmp_path)
        _never_failed(story.user, story.code)

        limited, created = story.requests(NEW_ORDER)
        assert (limited.status, created.status) == (429, 201)
        assert limited.finished_monotonic is not None
        waited = created.monotonic - limited.finished_monotonic
        # Never before Retry-After; and not much later either.
        assert retry_after <= waited <= retry_after + SCHEDULE_SLACK_SECONDS, waited

    def test_429_on_finalize_waits_for_retry_after_http_date(
        self, rig: Rig, story: Story, tmp_path: Path
    ) -> None:
        # An HTTP-date has whole seconds: one 4 to 5 s from now (certok reaches the
        # finalization well within a second).
        retry_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=5)
        story.proxy.add_rule(
            Rule(
                method="POST",
                path=FINALIZE,
                times=1,
                action=_rate_limited(
                    email.utils.format_datetime(retry_at, usegmt=True),
                    "too many certificates for this name set",
                ),
            )
        )
        _apply(story.user, story.code)
        story.wait_for(FINALIZE)
        waiting = story.user.apply_until(
            story.code,
            lambda d: "rateLimited" in d.get("reason", ""),
            "naming the rate limit",
            timeout=2,
        )
        assert waiting["status"] == "pending"
        assert "too many certificates for this name set" in waiting["reason"]
        data = story.user.apply_until_done(story.code, timeout=30)
        check_issued(rig, data, [story.name], "ECC", tmp_path)
        _never_failed(story.user, story.code)

        limited, accepted = story.requests(FINALIZE)
        assert (limited.status, accepted.status) == (429, 200)
        # The 429 came well before the date (else this would prove nothing) ...
        assert limited.wall <= retry_at - dt.timedelta(seconds=1.5), (limited.wall, retry_at)
        # ... and the finalization was not sent again before it.
        slack = dt.timedelta(seconds=SCHEDULE_SLACK_SECONDS)
        assert retry_at <= accepted.wall <= retry_at + slack, (accepted.wall, retry_at)

    # --- transient faults ----------------------------------------------------------------------

    TRANSIENT_FAULTS = {
        "503 without a body on new-order": (NEW_ORDER, status(503)),
        "500 serverInternal on the challenge answer": (
            CHALLENGE,
            status(500, problem_document("serverInternal", "database on fire", 500)),
        ),
        "connection reset on finalize": (FINALIZE, reset()),
        "empty 200 body on an order fetch": (ORDER, empty_200()),
    }

    @pytest.mark.parametrize("fault", list(TRANSIENT_FAULTS))
    def test_transient_fault_is_retried_on_schedule_until_issued(
        self, rig: Rig, story: Story, tmp_path: Path, fault: str
    ) -> None:
        path, action = self.TRANSIENT_FAULTS[fault]
        times = 2
        rule = story.proxy.add_rule(Rule(method="POST", path=path, times=times, action=action))
        _apply(story.user, story.code)
        data = story.user.apply_until_done(story.code, timeout=30)
        check_issued(rig, data, [story.name], "ECC", tmp_path)
        _never_failed(story.user, story.code)
        assert rule.applied == times
        # Each retry of the failed request waits at least what the schedule says.
        faulted = [r for r in story.requests(path) if r.rule is rule]
        for failures, record in enumerate(faulted, start=1):
            assert record.finished_monotonic is not None
            waited = story.next_after(record).monotonic - record.finished_monotonic
            assert waited >= RETRY_DELAYS_SECONDS[failures - 1], (failures, waited)
        # Retried in place: a transient fault never costs a new ACME order or certificate.
        assert story.counts() == (1, 1, 1)
        assert story.challenge_records() == 0

    # --- a finalization that never answers -------------------------------------------------------

    def test_finalize_stalled_at_the_proxy_times_out_and_is_sent_again(
        self, rig: Rig, story: Story, tmp_path: Path
    ) -> None:
        # The first finalization is held for 60 s: it does not reach Pebble during the test.
        story.proxy.add_rule(Rule(method="POST", path=FINALIZE, times=1, action=stall(60)))
        _apply(story.user, story.code)
        data = story.user.apply_until_done(story.code, timeout=30)
        check_issued(rig, data, [story.name], "ECC", tmp_path)
        _never_failed(story.user, story.code)
        held, sent_again = story.requests(FINALIZE)
        assert held.outcome == "stalled" and held.status is None
        assert sent_again.status == 200
        assert sent_again.monotonic - held.monotonic >= ACME_TIMEOUT_SECONDS
        assert story.counts() == (1, 1, 1)

    def test_finalize_reaching_the_ca_after_the_timeout_is_not_repeated(
        self, rig: Rig, story: Story, tmp_path: Path
    ) -> None:
        # The CA gets the finalization only after certok gave up waiting for its answer:
        # certok must find the order processing (or valid) and fetch that certificate, not
        # finalize again.
        release_finalize = threading.Event()
        release_fetch = threading.Event()
        story.proxy.add_rule(
            Rule(method="POST", path=FINALIZE, times=1, action=stall(60, until=release_finalize))
        )
        try:
            _apply(story.user, story.code)
            story.wait_for(FINALIZE)
            # certok waits for the answer to its finalization (5 s): time to catch its next look.
            fetches = len(story.requests(ORDER))
            story.proxy.add_rule(
                Rule(method="POST", path=ORDER, times=1, action=stall(60, until=release_fetch))
            )
            story.wait_for(ORDER, count=fetches + 1, timeout=15)
            release_finalize.set()
            _wait_until(
                lambda: story.requests(FINALIZE)[0].finished, "the finalization forwarded", 10
            )
            release_fetch.set()
            data = story.user.apply_until_done(story.code, timeout=30)
        finally:
            release_finalize.set()
            release_fetch.set()
        check_issued(rig, data, [story.name], "ECC", tmp_path)
        _never_failed(story.user, story.code)
        (late,) = story.requests(FINALIZE)
        assert (late.outcome, late.status) == ("forwarded", 200)
        assert story.counts() == (1, 1, 1)

    # --- permanent problems --------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("problem", "http_status", "detail"),
        [
            ("rejectedIdentifier", 400, "this name is on the CA's block list"),
            ("caa", 403, "CAA record for customer.test prevents issuance"),
        ],
    )
    def test_permanent_problem_on_new_order_fails_fast_with_the_cas_reason(
        self, story: Story, problem: str, http_status: int, detail: str
    ) -> None:
        story.proxy.add_rule(
            Rule(
                method="POST",
                path=NEW_ORDER,
                times=None,
                action=status(http_status, problem_document(problem, detail, http_status)),
            )
        )
        started = time.monotonic()
        _apply(story.user, story.code)
        data = story.user.apply_until_done(story.code, timeout=15)
        elapsed = time.monotonic() - started
        assert data["status"] == "failure", data
        assert elapsed < 3, elapsed
        assert problem in data["reason"] and detail in data["reason"], data["reason"]
        # Not retried: one refusal is the answer.
        assert len(story.requests(NEW_ORDER)) == 1
        assert story.challenge_records() == 0

    def test_validation_failing_every_time_fails_after_three_acme_orders(
        self, story: Story
    ) -> None:
        detail = f"Incorrect TXT record found at _acme-challenge.{story.name}"
        story.proxy.add_rule(
            Rule(
                method="POST",
                path=AUTHZ,
                times=None,
                action=_invalid_authorization(story, detail),
            )
        )
        _apply(story.user, story.code)
        data = story.user.apply_until_done(story.code, timeout=30)
        assert data["status"] == "failure", data
        assert "unauthorized" in data["reason"] and detail in data["reason"], data["reason"]
        # A dead authorization is worth a new ACME order, but only up to three in all.
        assert story.counts() == (3, 0, 0)
        assert story.challenge_records() == 0

    def test_validation_failing_after_the_cname_moved_fails_with_the_ownership_reason(
        self, rig: Rig, story: Story
    ) -> None:
        # certok's check passes; the owner repoints the CNAME while the ACME order is on its
        # way, and the CA's validation fails. certok checks ownership again before any new ACME
        # order, so it fails with that reason instead of ordering again.
        release_new_order = threading.Event()
        story.proxy.add_rule(
            Rule(method="POST", path=NEW_ORDER, times=1, action=stall(30, until=release_new_order))
        )
        story.proxy.add_rule(
            Rule(
                method="POST",
                path=AUTHZ,
                times=1,
                action=_invalid_authorization(story, "No TXT record found"),
            )
        )
        label = story.name.split(".")[0]
        elsewhere = f"0000000000000000.{rig.certok_zone}"
        moved = [
            line
            for line in story.world.zone_lines
            if not line.startswith(f"_acme-challenge.{label} ")
        ]
        moved.append(f"_acme-challenge.{label} IN CNAME {elsewhere}.")
        try:
            _apply(story.user, story.code)
            story.wait_for(NEW_ORDER)
            rig.set_customer_records(moved)
        finally:
            release_new_order.set()
        data = story.user.apply_until_done(story.code, timeout=30)
        assert data["status"] == "failure", data
        assert elsewhere in data["reason"] and "points to" in data["reason"], data["reason"]
        assert story.counts() == (1, 0, 0)
        assert story.challenge_records() == 0


def _invalid_authorization(story: Story, detail: str) -> Action:
    """An authorization the CA gave up on: its dns-01 challenge failed with `unauthorized`."""
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "identifier": {"type": "dns", "value": story.name},
        "status": "invalid",
        "expires": expires,
        "challenges": [
            {
                "type": "dns-01",
                "url": f"{story.proxy.base_url}/chalZ/injected",
                "token": "injected-token-0123456789",
                "status": "invalid",
                "error": problem_document("unauthorized", detail, 403),
            }
        ],
    }
    return status(200, body)


# --- the CA is down ------------------------------------------------------------------------------


def test_ca_down_retries_on_schedule_then_issues_when_it_is_back(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, fault_proxy: FaultProxy, tmp_path
) -> None:
    # certok starts while its CA answers 503 to everything.
    outage = fault_proxy.add_rule(Rule(times=None, action=status(503)))
    server = certok_server(**_certok_settings(fault_proxy))
    user = User(server, server.create_tenant("acme-corp"))
    name = "www.customer.test"
    delegate(rig, customer_records, user.dv(name))
    code = codes_for(user, [name])[name]
    _apply(user, code)
    # Three refused attempts, then the CA is back: the gaps must be 1 s, 2 s, then 5 s.
    fault_proxy.wait_for("", count=3, timeout=10)
    waiting = user.apply(code)
    assert waiting["status"] == "pending"
    assert "503" in waiting["reason"] and fault_proxy.directory_url in waiting["reason"]
    fault_proxy.remove_rule(outage)
    data = user.apply_until_done(code, timeout=30)
    check_issued(rig, data, [name], "ECC", tmp_path)
    _never_failed(user, code)

    records = fault_proxy.requests()
    refused = [r for r in records if r.rule is outage]
    # Each attempt is one request (the directory), refused; the first request after the
    # outage is the next attempt.
    assert all((r.method, r.path) == ("GET", "/dir") for r in refused), refused
    recovered = next(r for r in records if r.index > refused[-1].index)
    starts = [r.monotonic for r in refused] + [recovered.monotonic]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    expected = RETRY_DELAYS_SECONDS[: len(gaps)]
    print(f"CA down: gaps between attempts {[round(g, 2) for g in gaps]} s, table {expected}")
    assert len(gaps) == 3, gaps
    for gap, delay in zip(gaps, expected, strict=True):
        assert delay <= gap <= delay + SCHEDULE_SLACK_SECONDS, (gaps, expected)


# --- nonce chaos ----------------------------------------------------------------------------------


@pytest.mark.slow
@rounds(ci=1, deep=4)
@pytest.mark.parametrize(("nonce_reject", "at_least"), [(50, 50), (90, 49)])
def test_nonce_chaos_50_concurrent_orders(  # type: ignore[no-untyped-def]
    rig: Rig,
    certok_server,
    customer_records,
    tmp_path,
    nonce_reject: int,
    at_least: int,
    round_: int,
) -> None:
    names, hosts = extra_hosts(50)
    with rig.pebble_settings(nonce_reject=nonce_reject, which="plain"):
        server = certok_server(apply_wait_seconds=0, code_ttl_seconds=600)
        user = User(server, server.create_tenant("acme-corp"))
        delegate(rig, customer_records, user.dv(",".join(names)), extra=hosts)
        codes = codes_for(user, names)
        started = time.monotonic()
        for code in codes.values():
            assert user.apply(code, issuer=ISSUER)["status"] in ("pending", "issued")
        last = user.wait_all(codes.values(), timeout=90)
        elapsed = time.monotonic() - started
        issued = [name for name, code in codes.items() if last[code]["status"] == "issued"]
        others = {name: last[code] for name, code in codes.items() if name not in issued}
        print(
            f"nonce reject {nonce_reject}%: {len(issued)}/{len(names)} issued in "
            f"{elapsed:.1f} s; not issued: {others}"
        )
        assert len(issued) >= at_least, others
        assert all(answer["status"] == "failure" for answer in others.values()), others
        check_issued(rig, last[codes[issued[0]]], [issued[0]], "ECC", tmp_path)
        assert challenge_record_count(server) == 0


# --- the documentation matches the code --------------------------------------------------------


def test_docs_retries_table_and_problem_types_match_the_code() -> None:
    text = (REPO_ROOT / "docs" / "retries.md").read_text()
    for failures, delay in enumerate(RETRY_DELAYS_SECONDS, start=1):
        row = f"| {failures} and more |" if failures == len(RETRY_DELAYS_SECONDS) else None
        row = row or f"| {failures} |"
        assert row in text, f"docs/retries.md has no row {row!r}"
        assert f"{row} {_human(delay)} |" in text, (row, _human(delay))
    for problem in KIND_BY_TYPE:
        assert f"`{problem}`" in text, f"docs/retries.md does not say what {problem} does"


def _human(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"
