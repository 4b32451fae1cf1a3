"""`/v1/webhooks` and httpsok's POST API in process (real database, real Starlette app, a
real receiver): envelope answers, tenant isolation, secrets, the delivery log."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient

from certok.api.caches import TtlCache
from certok.api.post_api import PollGate
from certok.assembly import build_delivery_worker
from certok.db.engine import transaction
from certok.db.models import OrderNotifyUrl, WebhookEndpoint
from certok.events.delivery import DeliveryWorker
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.functional.test_api import api_settings, assert_error, make_app
from tests.functional.webhook_receiver import Receiver


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    client: TestClient
    store: Store
    tokens: dict[str, str]
    tenant_ids: dict[str, int]
    receiver: Receiver
    deliveries: DeliveryWorker
    ticks: Ticks

    def call(self, method: str, path: str, tenant: str = "alpha", **kwargs: Any) -> Any:
        headers = {"httpsok-token": self.tokens[tenant]}
        return self.client.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, tenant: str = "alpha", **kwargs: Any) -> Any:
        response = self.call(method, path, tenant, **kwargs)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["code"] == 0, body
        return body["data"]

    def create(self, tenant: str = "alpha", **fields: Any) -> dict[str, Any]:
        return self.ok("POST", "/v1/webhooks", tenant, json={"url": self.receiver.url(), **fields})


@pytest.fixture
def hooks(store: Store, tmp_path) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    receiver = Receiver()
    settings = api_settings(
        tmp_path,
        apply_wait_seconds=0.3,
        precheck_allow_loopback=True,
        precheck_allowed_ports=[receiver.port],
    )
    tokens: dict[str, str] = {}
    ids: dict[str, int] = {}
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta"):
            ids[name] = tenants.create_tenant(session, name).id
            tokens[name] = tenants.issue_token(session, name)
    ticks = Ticks()
    app = make_app(
        settings,
        store,
        wake_worker=lambda: None,
        tokens=TtlCache(ttl=0, max_entries=10),
        post_api_polls=PollGate(10.0, clock=ticks),
    )
    deliveries = build_delivery_worker(settings, store, worker_id="test")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(client, store, tokens, ids, receiver, deliveries, ticks)
    receiver.close()


def test_create_list_test_and_read_the_delivery_log(hooks: Harness) -> None:
    created = hooks.create(description="ops", events=["certificate.issued", "webhook.test"])
    assert created["id"].startswith("wh_") and created["secret"].startswith("whsec_")
    listed = hooks.ok("GET", "/v1/webhooks")
    assert listed["total"] == 1
    [item] = listed["list"]
    assert item["id"] == created["id"] and item["enabled"] is True
    assert "secret" not in item  # shown once, at creation (and rotation)
    assert listed["notifySecret"].startswith("whsec_")

    sent = hooks.ok("POST", f"/v1/webhooks/{created['id']}/test")
    assert asyncio.run(hooks.deliveries.run_once()) == 1
    [request] = hooks.receiver.wait_for(1)
    body = Webhook(created["secret"]).verify(request.body, request.headers)
    assert body["type"] == "webhook.test"
    assert request.headers["webhook-id"] == sent["messageId"]

    log = hooks.ok("GET", f"/v1/webhooks/{created['id']}/deliveries", params={"size": "5"})
    assert log["total"] == 1
    assert log["list"][0]["id"] == sent["messageId"]
    assert log["list"][0]["status"] == "delivered" and log["list"][0]["lastStatus"] == 204


def test_rotation_returns_a_new_secret_and_both_sign_meanwhile(hooks: Harness) -> None:
    created = hooks.create()
    rotated = hooks.ok("POST", f"/v1/webhooks/{created['id']}/rotate")
    assert rotated["secret"] != created["secret"]
    hooks.ok("POST", f"/v1/webhooks/{created['id']}/test")
    asyncio.run(hooks.deliveries.run_once())
    [request] = hooks.receiver.wait_for(1)
    Webhook(rotated["secret"]).verify(request.body, request.headers)
    Webhook(created["secret"]).verify(request.body, request.headers)


def test_secrets_are_stored_encrypted(hooks: Harness) -> None:
    created = hooks.create()
    with hooks.store.sessions() as session:
        row = session.query(WebhookEndpoint).one()
    assert created["secret"].encode() not in row.secret_encrypted
    assert created["secret"][6:].encode() not in row.secret_encrypted


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"url": "ftp://127.0.0.1/x"}, ["url is not allowed", "http"]),
        ({"url": "http://127.0.0.1:1/x"}, ["port 1 is not allowed"]),
        ({"url": ""}, ["url must be"]),
        ({}, ["url must be"]),
        ({"url": "RECEIVER", "events": ["certificate.exploded"]}, ["unknown event type"]),
        ({"url": "RECEIVER", "events": "certificate.issued"}, ["events must be a list"]),
        # A misspelt field would otherwise be dropped, and no events mean all of them.
        ({"url": "RECEIVER", "event": ["webhook.test"]}, ["unknown field 'event'", "events"]),
        ({"url": "RECEIVER", "URL": "x"}, ["unknown field 'URL'", "did you mean 'url'"]),
    ],
)
def test_bad_webhooks_get_the_envelope(hooks: Harness, body: dict[str, Any], words: list) -> None:
    if body.get("url") == "RECEIVER":
        body = {**body, "url": hooks.receiver.url()}  # a copy: parameters are shared
    assert_error(hooks.call("POST", "/v1/webhooks", json=body), 400, *words)


def test_a_body_that_is_not_json_gets_the_envelope(hooks: Harness) -> None:
    response = hooks.call("POST", "/v1/webhooks", content=b"{nope")
    assert_error(response, 400, "not valid JSON")
    assert_error(hooks.call("POST", "/v1/webhooks", content=b"[1]"), 400, "JSON object")


def test_another_tenants_webhook_is_answered_like_an_unknown_one(hooks: Harness) -> None:
    theirs = hooks.create("beta")["id"]
    unknown = "wh_" + "0" * 24
    for method, suffix in (
        ("DELETE", ""),
        ("POST", "/rotate"),
        ("POST", "/test"),
        ("GET", "/deliveries"),
    ):
        foreign = hooks.call(method, f"/v1/webhooks/{theirs}{suffix}")
        missing = hooks.call(method, f"/v1/webhooks/{unknown}{suffix}")
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["msg"].replace(theirs, "ID") == missing.json()["msg"].replace(
            unknown, "ID"
        )
    assert hooks.ok("GET", "/v1/webhooks")["total"] == 0
    assert hooks.ok("GET", "/v1/webhooks", "beta")["total"] == 1  # untouched


def test_delete_removes_the_endpoint_and_its_log(hooks: Harness) -> None:
    created = hooks.create()
    hooks.ok("POST", f"/v1/webhooks/{created['id']}/test")
    hooks.ok("DELETE", f"/v1/webhooks/{created['id']}")
    assert hooks.ok("GET", "/v1/webhooks")["total"] == 0
    assert asyncio.run(hooks.deliveries.run_once()) == 0
    assert_error(hooks.call("DELETE", f"/v1/webhooks/{created['id']}"), 404, "not found")


# --- the POST API ---------------------------------------------------------------------------


def post_api(hooks: Harness, method: str, path: str, tenant: str = "alpha", **kw: Any) -> Any:
    headers = {"OpenApiKey": hooks.tokens[tenant]}
    return hooks.client.request(method, path, headers=headers, **kw)


def test_post_dv_answers_httpsoks_shape(hooks: Harness) -> None:
    response = post_api(hooks, "POST", "/v1/cert/dv", json={"domainList": ["www.customer.test"]})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["valid"] is False  # nothing resolves in this test: the CNAME is not seen
    [config] = data["configs"]
    assert config["domain"] == "www.customer.test"
    assert config["host"] == "_acme-challenge.www"
    assert config["hostValue"].endswith(".acme.svc.test")
    assert config["valid"] is False


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/cert/dv", {}, 400, ["domainList"]),
        ("/v1/cert/dv", {"domainList": "a.test"}, 400, ["domainList"]),
        ("/v1/cert/dv", {"domainList": ["bad_name!"]}, 400, []),
        ("/v1/cert/apply", {"domainList": ["a.test"], "algorithm": "DSA"}, 400, ["ECC"]),
        ("/v1/cert/apply", {"domainList": ["a.test"], "ca": "nope"}, 400, ["google"]),
        (
            "/v1/cert/apply",
            {"domainList": ["a.test"], "notifyUrl": "gopher://x"},
            400,
            ["notifyUrl"],
        ),
        ("/v1/cert/apply", {"domainList": ["a.test"]}, 400, ["not verified yet", "CNAME"]),
        # httpsok's own fields in another letter case: refused, never dropped in silence.
        (
            "/v1/cert/apply",
            {"domainList": ["a.test"], "notifyURL": "https://x.test/"},
            400,
            ["unknown field 'notifyURL'", "did you mean 'notifyUrl'"],
        ),
        ("/v1/cert/dv", {"domainlist": ["a.test"]}, 400, ["did you mean 'domainList'"]),
    ],
)
def test_post_api_bad_requests_get_the_envelope(
    hooks: Harness, path: str, body: dict[str, Any], status: int, words: list
) -> None:
    assert_error(post_api(hooks, "POST", path, json=body), status, *words)


def test_post_api_wants_the_open_api_key_header(hooks: Harness) -> None:
    response = hooks.client.post("/v1/cert/dv", json={"domainList": ["a.test"]})
    assert_error(response, 401, "OpenApiKey")
    response = hooks.client.post(
        "/v1/cert/dv", json={"domainList": ["a.test"]}, headers={"OpenApiKey": "0" * 32}
    )
    assert_error(response, 401, "invalid or revoked")


def test_apply_status_is_rate_limited_per_id_and_isolated(hooks: Harness) -> None:
    # An order started through the GET API's code: the POST API's id is that code.
    with transaction(hooks.store.sessions) as session:
        from certok.orders.codes import issue_code

        code = issue_code(session, hooks.tenant_ids["alpha"], "dns", ["www.customer.test"], 60)
    hooks.call("GET", "/v1/cert/apply", params={"code": code})
    first = post_api(hooks, "GET", f"/v1/cert/apply/{code}")
    assert first.status_code == 200, first.text
    assert first.json()["data"]["status"] == "pending"
    again = post_api(hooks, "GET", f"/v1/cert/apply/{code}")
    assert_error(again, 429, "every 10 s", "notifyUrl")
    assert again.headers["Retry-After"] == "10"
    hooks.ticks.now += 10
    assert post_api(hooks, "GET", f"/v1/cert/apply/{code}").status_code == 200
    foreign = post_api(hooks, "GET", f"/v1/cert/apply/{code}", "beta")
    unknown = post_api(hooks, "GET", f"/v1/cert/apply/{'0' * 16}", "beta")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["msg"].replace(code, "X") == unknown.json()["msg"].replace("0" * 16, "X")


def test_notify_url_gets_the_orders_outcome(hooks: Harness) -> None:
    """The notifyUrl row is written with the order; the order's end queues the outcome."""
    import functools

    from certok.api.post_api import _apply_job
    from certok.db.writes import write
    from certok.events.delivery import notify_secret
    from certok.events.outbox import order_finished
    from certok.orders.codes import issue_code
    from certok.orders.redemption import RedemptionTerms

    alpha = hooks.tenant_ids["alpha"]
    with transaction(hooks.store.sessions) as session:
        code = issue_code(session, alpha, "dns", ["www.customer.test"], 60)
    now = dt.datetime.now(dt.UTC)
    order_id = write(
        hooks.store.sessions,
        functools.partial(
            _apply_job,
            terms=RedemptionTerms(
                tenant_id=alpha,
                code=code,
                algorithm="ECC",
                issuer="google",
                deadline_seconds=60,
                order_extras={},
                max_pending=0,
                join_seconds=0,
                now=now,
            ),
            notify_url=hooks.receiver.url("/notify"),
        ),
    ).order_id
    from sqlalchemy import update

    from certok.db.models import Order

    def finish(connection: Any) -> None:
        connection.execute(
            update(Order.__table__)
            .where(Order.__table__.c.id == order_id)
            .values(state="failure", reason="urn:ietf:params:acme:error:rejectedIdentifier: no")
        )
        order_finished(connection, order_id, now)

    write(hooks.store.sessions, finish)
    with hooks.store.sessions() as session:
        assert session.query(OrderNotifyUrl).count() == 0  # told once
    assert asyncio.run(hooks.deliveries.run_once()) == 1
    [request] = hooks.receiver.wait_for(1)
    body = Webhook(notify_secret(hooks.store.box, alpha)).verify(request.body, request.headers)
    assert body["type"] == "certificate.failed"
    assert body["data"]["id"] == code
    assert "rejectedIdentifier" in body["data"]["reason"]


def test_test_brings_a_disabled_endpoint_back(hooks: Harness) -> None:
    created = hooks.create()
    hooks.receiver.behave("410")
    hooks.ok("POST", f"/v1/webhooks/{created['id']}/test")
    asyncio.run(hooks.deliveries.run_once())
    [item] = hooks.ok("GET", "/v1/webhooks")["list"]
    assert item["enabled"] is False and "410" in item["disabledReason"]
    hooks.ok("POST", f"/v1/webhooks/{created['id']}/test")
    assert hooks.ok("GET", "/v1/webhooks")["list"][0]["enabled"] is True
    asyncio.run(hooks.deliveries.run_once())
    log = hooks.ok("GET", f"/v1/webhooks/{created['id']}/deliveries")
    assert [d["status"] for d in log["list"]] == ["delivered", "failed"]
