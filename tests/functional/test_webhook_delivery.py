"""Webhook deliveries to a real HTTP receiver on loopback, with an injected clock: signatures
the PyPI `standardwebhooks` package verifies, the retry schedule, 2xx only, 3xx not
followed, 410 disabling the endpoint, Retry-After, resets and stalls, and leases that keep two
workers from sending one message twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from certok.db.engine import transaction
from certok.db.models import WebhookDelivery, WebhookEndpoint
from certok.db.writes import write
from certok.events import endpoints
from certok.events.delivery import DeliveryWorker, notify_secret
from certok.events.outbox import emit
from certok.events.schedule import MAX_ATTEMPTS, RETRY_DELAYS_SECONDS
from certok.persistence import Store
from certok.prechecks.addresses import AddressPolicy
from certok.prechecks.resolver import make_resolver
from certok.prechecks.safe_http import FetchFailed, FetchLimits, SafeFetcher, verified_tls_context
from certok.tenants import service as tenants
from tests.functional.webhook_receiver import Receiver
from tests.rig.tls import write_server_tls

START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Setup:
    store: Store
    receiver: Receiver
    clock: Clock
    tenant_id: int

    def fetcher(self, timeout: float = 2.0, loopback: bool = True) -> SafeFetcher:
        return SafeFetcher(
            lambda: make_resolver(["127.0.0.1:9"], 0.5),
            AddressPolicy(allow_loopback=loopback),
            FetchLimits(
                max_redirects=0,
                allowed_ports=frozenset({self.receiver.port}),
                connect_timeout=timeout,
                read_timeout=timeout,
                total_timeout=timeout,
            ),
        )

    def worker(self, worker_id: str = "node-a", **kwargs: object) -> DeliveryWorker:
        fetcher = kwargs.pop("fetcher", None) or self.fetcher()
        return DeliveryWorker(
            self.store.sessions,
            self.store.box,
            fetcher,  # type: ignore[arg-type]
            worker_id=worker_id,
            clock=self.clock,
            uniform=lambda low, high: 0.0,  # no jitter: the schedule's exact steps
            **kwargs,  # type: ignore[arg-type]
        )

    def endpoint(self, path: str = "/hook", tenant_id: int | None = None) -> tuple[str, str]:
        public_id = endpoints.new_public_id()
        secret, encrypted = endpoints.encrypt_new_secret(self.store.box, public_id)
        write(
            self.store.sessions,
            functools.partial(
                endpoints.create_endpoint_job,
                tenant_id=tenant_id or self.tenant_id,
                public_id=public_id,
                url=self.receiver.url(path),
                description="",
                event_types="",
                secret_encrypted=encrypted,
                now=self.clock(),
            ),
        )
        return public_id, secret

    def emit(self, data: dict[str, object] | None = None, notify_url: str | None = None) -> int:
        return write(
            self.store.sessions,
            functools.partial(
                emit,
                tenant_id=self.tenant_id,
                event_type="certificate.issued",
                data=data or {"domains": ["www.customer.test"]},
                now=self.clock(),
                notify_url=notify_url,
            ),
        )

    def deliveries(self) -> list[WebhookDelivery]:
        with self.store.sessions() as session:
            rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
            session.expunge_all()
            return list(rows)


@pytest.fixture
def setup(store: Store) -> Iterator[Setup]:
    receiver = Receiver()
    with transaction(store.sessions) as session:
        tenant_id = tenants.create_tenant(session, "alpha").id
    yield Setup(store, receiver, Clock(), tenant_id)
    receiver.close()


def run(worker: DeliveryWorker) -> int:
    return asyncio.run(worker.run_once())


def test_standardwebhooks_verifies_certoks_deliveries(setup: Setup) -> None:
    _, secret = setup.endpoint()
    setup.emit({"domains": ["www.customer.test"], "note": "naïve ✓"})
    setup.clock.now = dt.datetime.now(dt.UTC)  # the library checks the timestamp's age
    assert run(setup.worker()) == 1
    [request] = setup.receiver.wait_for(1)
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "certificate.issued"
    assert payload["data"]["note"] == "naïve ✓"
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    # A body changed by one byte, or another secret, does not verify.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body + b" ", request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoints.encrypt_new_secret(setup.store.box, "x")[0]).verify(
            request.body, request.headers
        )
    [row] = setup.deliveries()
    assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 204)


def test_a_rotating_secret_signs_twice_and_either_secret_verifies(setup: Setup) -> None:
    public_id, old = setup.endpoint()
    with setup.store.sessions() as session:
        current = endpoints.current_secret_ciphertext(
            session.connection(), setup.tenant_id, public_id
        )
    new, encrypted = endpoints.encrypt_new_secret(setup.store.box, public_id)
    from certok.events.delivery import endpoint_secret_owner

    box = setup.store.box
    plain_old = box.decrypt(current, endpoint_secret_owner(public_id))
    write(
        setup.store.sessions,
        functools.partial(
            endpoints.rotate_secret_job,
            tenant_id=setup.tenant_id,
            public_id=public_id,
            expected_current=current,
            secret_encrypted=encrypted,
            previous_reencrypted=box.encrypt(
                plain_old, endpoint_secret_owner(public_id, "previous")
            ),
            previous_until=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        ),
    )
    setup.clock.now = dt.datetime.now(dt.UTC)
    setup.emit()
    run(setup.worker())
    [request] = setup.receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(request.body, request.headers)
    Webhook(old).verify(request.body, request.headers)
    # Once the overlap is over, only the new secret signs.
    setup.clock.now += dt.timedelta(hours=2)
    setup.emit()
    run(setup.worker())
    second = setup.receiver.wait_for(2)[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 1


def test_failures_follow_the_schedule_to_the_end_with_the_same_webhook_id(setup: Setup) -> None:
    setup.endpoint()
    setup.receiver.default = "500"
    setup.emit()
    worker = setup.worker()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert run(worker) == 1, f"attempt {attempt} was not due"
        [row] = setup.deliveries()
        assert row.attempts == attempt
        assert row.last_status == 500
        if attempt < MAX_ATTEMPTS:
            assert row.state == "pending"
            wait = RETRY_DELAYS_SECONDS[attempt - 1]
            assert row.next_attempt_at == setup.clock.now + dt.timedelta(seconds=wait)
            # Not due a second early.
            setup.clock.advance(wait - 1)
            assert run(worker) == 0
            setup.clock.advance(1)
    [row] = setup.deliveries()
    assert row.state == "failed"
    assert "no attempts left" in (row.last_error or "")
    ids = {r.headers["webhook-id"] for r in setup.receiver.requests}
    bodies = {r.body for r in setup.receiver.requests}
    assert len(setup.receiver.requests) == MAX_ATTEMPTS
    assert len(ids) == 1 and len(bodies) == 1  # every attempt: the same message


def test_jitter_spreads_retries_within_ten_percent(setup: Setup) -> None:
    from certok.events.schedule import next_attempt_at

    delays = {
        (next_attempt_at(START, 3) - START).total_seconds()  # type: ignore[operator]
        for _ in range(50)
    }
    assert len(delays) > 1
    assert all(1620 <= d <= 1980 for d in delays)  # 30 min ± 10 %
    assert next_attempt_at(START, MAX_ATTEMPTS) is None


def test_redirects_are_failures_and_not_followed(setup: Setup) -> None:
    setup.endpoint()
    setup.receiver.behave("302", "301", "307", "308")
    setup.emit()
    run(setup.worker())
    [row] = setup.deliveries()
    assert row.state == "pending" and row.last_status == 302
    assert "not followed" in (row.last_error or "")
    assert [r.path for r in setup.receiver.requests] == ["/hook"]  # /elsewhere never asked


def test_only_2xx_counts(setup: Setup) -> None:
    setup.endpoint()
    setup.receiver.behave("404", "400", "201")
    setup.emit()
    worker = setup.worker()
    run(worker)
    setup.clock.advance(5)
    run(worker)
    assert setup.deliveries()[0].state == "pending"
    setup.clock.advance(300)
    run(worker)
    row = setup.deliveries()[0]
    assert (row.state, row.attempts, row.last_status) == ("delivered", 3, 201)


def test_410_disables_the_endpoint_and_cancels_what_was_queued_for_it(setup: Setup) -> None:
    gone_id, _ = setup.endpoint("/gone")
    setup.receiver.behave("410")
    setup.emit()
    run(setup.worker())
    [row] = setup.deliveries()
    assert (row.state, row.last_status) == ("failed", 410)
    with setup.store.sessions() as session:
        endpoint = session.scalars(select(WebhookEndpoint)).one()
        assert endpoint.disabled_at is not None
        assert "410" in (endpoint.disabled_reason or "")
    # Later events are not queued for a disabled endpoint.
    assert setup.emit() == 0
    # The delivery log says what happened.
    with setup.store.sessions() as session:
        total, items = endpoints.list_deliveries(
            session.connection(), setup.tenant_id, gone_id, 1, 10
        )
    assert total == 1 and items[0]["status"] == "failed" and items[0]["lastStatus"] == 410


def test_retry_after_is_honoured_when_longer_than_the_schedule(setup: Setup) -> None:
    setup.endpoint()
    setup.receiver.behave("503 Retry-After: 7200", "429 Retry-After: 1")
    setup.emit()
    worker = setup.worker()
    run(worker)
    row = setup.deliveries()[0]
    assert row.next_attempt_at == setup.clock.now + dt.timedelta(seconds=7200)
    setup.clock.advance(7200)
    run(worker)
    row = setup.deliveries()[0]
    # Shorter than the schedule's step (5 min after the second failure): the schedule wins.
    assert row.next_attempt_at == setup.clock.now + dt.timedelta(seconds=300)


def test_a_reset_connection_is_retried(setup: Setup) -> None:
    setup.endpoint()
    setup.receiver.behave("reset")
    setup.emit()
    worker = setup.worker()
    run(worker)
    row = setup.deliveries()[0]
    assert row.state == "pending" and row.last_status is None
    assert row.last_error
    setup.clock.advance(5)
    run(worker)
    assert setup.deliveries()[0].state == "delivered"


def test_a_stalled_receiver_times_out_and_is_retried(setup: Setup) -> None:
    setup.endpoint()
    setup.receiver.behave("stall")
    setup.emit()
    worker = setup.worker(fetcher=setup.fetcher(timeout=0.5))
    run(worker)
    setup.receiver.release()
    row = setup.deliveries()[0]
    assert row.state == "pending" and "0.5 s" in (row.last_error or ""), row.last_error
    setup.clock.advance(5)
    run(worker)
    assert setup.deliveries()[0].state == "delivered"


def test_destinations_pass_the_precheck_address_policy(setup: Setup) -> None:
    setup.endpoint()
    setup.emit()
    run(setup.worker(fetcher=setup.fetcher(loopback=False)))
    row = setup.deliveries()[0]
    assert row.state == "pending" and "refused" in (row.last_error or "")
    assert setup.receiver.requests == []  # not a packet reached it


def test_notify_url_deliveries_are_signed_with_the_tenants_notify_secret(setup: Setup) -> None:
    setup.clock.now = dt.datetime.now(dt.UTC)
    setup.emit(notify_url=setup.receiver.url("/notify"))
    run(setup.worker())
    [request] = setup.receiver.wait_for(1)
    assert request.path == "/notify"
    secret = notify_secret(setup.store.box, setup.tenant_id)
    assert Webhook(secret).verify(request.body, request.headers)["type"] == "certificate.issued"


def test_two_workers_never_send_one_message_twice(setup: Setup) -> None:
    setup.endpoint()
    for _ in range(40):
        setup.emit()
    a, b = setup.worker("node-a"), setup.worker("node-b")
    barrier = threading.Barrier(2)
    claimed: dict[str, int] = {}

    def claim(worker: DeliveryWorker, name: str) -> None:
        barrier.wait()
        claimed[name] = len(worker.claim(40))

    threads = [threading.Thread(target=claim, args=(w, n)) for w, n in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert claimed["a"] + claimed["b"] == 40
    # Leases held: nothing is due for anyone until they run out.
    assert a.claim(40) == [] and b.claim(40) == []


def test_a_lease_left_by_a_dead_worker_is_taken_over_with_the_same_message(
    setup: Setup,
) -> None:
    setup.endpoint()
    setup.emit()
    dead = setup.worker("node-a")
    [claimed] = dead.claim(10)  # ... and the process dies before sending
    other = setup.worker("node-b")
    assert run(other) == 0  # leased
    setup.clock.advance(61)
    assert run(other) == 1
    [request] = setup.receiver.wait_for(1)
    assert request.headers["webhook-id"] == claimed.message_id
    assert json.loads(request.body) == json.loads(claimed.payload)


def test_the_log_and_old_marks_are_purged(setup: Setup) -> None:
    from certok.db.models import EventMark
    from certok.events.outbox import mark_once

    setup.endpoint()
    setup.emit()
    worker = setup.worker(retention_days=30)
    run(worker)
    write(setup.store.sessions, lambda c: mark_once(c, "k", "1", setup.clock.now))
    setup.clock.advance(29 * 86400)
    assert worker.purge() == 0
    setup.clock.advance(2 * 86400)
    assert worker.purge() == 1  # the delivered message
    assert setup.deliveries() == []
    setup.clock.advance(400 * 86400)
    assert worker.purge() == 1  # the mark
    with setup.store.sessions() as session:
        assert session.query(EventMark).count() == 0


def test_https_receivers_must_prove_who_they_are(tmp_path: Path) -> None:
    """A delivery carries the tenant's events and its answer changes state (410 disables the
    endpoint): over https the receiver's certificate is verified, unlike a CA's redirect in the
    HTTP-01 pre-check. Trusted through `webhook_ca_file` (verified_tls_context), it delivers."""
    files = write_server_tls(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(files.certificate, files.private_key)
    receiver = Receiver(default="204", tls=server_tls)
    try:
        url = receiver.url("/hook")
        assert url.startswith("https://")

        def post(fetcher: SafeFetcher) -> int:
            result = asyncio.run(fetcher.post(url, b"{}", {}, user_agent="certok-test"))
            return result.status

        policy = AddressPolicy(allow_loopback=True)
        limits = FetchLimits(
            max_redirects=0,
            allowed_ports=frozenset({receiver.port}),
            connect_timeout=5,
            read_timeout=5,
            total_timeout=5,
        )
        resolver = make_resolver(["127.0.0.1:9"], 0.5)
        untrusted = SafeFetcher(lambda: resolver, policy, limits)
        with pytest.raises(FetchFailed) as refused:
            post(untrusted)
        assert refused.value.stage == "tls" and "certificate verify failed" in refused.value.reason
        assert receiver.requests == []
        trusted = SafeFetcher(
            lambda: resolver, policy, limits, post_tls=verified_tls_context(str(files.ca_bundle))
        )
        assert post(trusted) == 204
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
