"""apply's cached answers served before Starlette (certok/api/fastpath.py): the same answer as
the full route, errors left to it, and each request counted once by the rate limiter."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from certok.crypto import generate_private_key, private_key_to_pem
from certok.db.engine import transaction
from certok.db.models import Order
from certok.orders.codes import issue_code
from certok.orders.service import order_key_owner
from certok.persistence import Store
from certok.ratelimit import RateLimiter
from certok.tenants import service as tenants
from tests.functional.test_api import api_settings, assert_error, make_app
from tests.kit.certs import self_signed_pem

APPLY = "/v1/cert/apply"


@dataclass
class CachedApi:
    client: TestClient
    services: Any
    token: str
    code: str
    full_route: list[str]  # paths of the requests that went through Starlette's stack

    def poll(self, query: str = "", token: str | None = None, method: str = "GET"):  # type: ignore[no-untyped-def]
        headers = {"httpsok-token": self.token if token is None else token}
        return self.client.request(method, f"{APPLY}?code={self.code}{query}", headers=headers)


@pytest.fixture
def cached_api(store: Store, tmp_path) -> Iterator[CachedApi]:  # type: ignore[no-untyped-def]
    settings = api_settings(tmp_path, apply_wait_seconds=0.1)  # first poll: pending at once
    with transaction(store.sessions) as session:
        tenant_id = tenants.create_tenant(session, "alpha").id
        token = tenants.issue_token(session, "alpha")
        code = issue_code(session, tenant_id, "dns", ["www.customer.test"], 60)
    # The token and issued-answer caches as `certok serve` has them.
    app = make_app(settings, store, wake_worker=lambda: None)
    full_route: list[str] = []
    stack = app.build_middleware_stack()

    async def counted(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            full_route.append(scope["path"])
        await stack(scope, receive, send)

    app.middleware_stack = counted
    with TestClient(app, raise_server_exceptions=False) as client:
        harness = CachedApi(client, app.state.services, token, code, full_route)
        assert harness.poll().json()["data"] == {"status": "pending"}
        _issue(store)
        yield harness


def _issue(store: Store) -> None:
    key = generate_private_key("ECC")
    with transaction(store.sessions) as session:
        order = session.query(Order).one()
        order.state = "issued"
        order.certificate_pem = self_signed_pem(
            key,
            ["www.customer.test"],
            not_before=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            serial=7,
        )
        order.not_before = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        order.not_after = dt.datetime(2026, 4, 2, tzinfo=dt.UTC)
        order.key_encrypted = store.box.encrypt(
            private_key_to_pem(key).encode(), order_key_owner(order.id)
        )


def _without_trace(text: str) -> str:
    return re.sub(r'"traceId":"[0-9a-f]{16}"', '"traceId":"-"', text)


def test_a_cached_issued_answer_is_the_full_routes_answer_without_the_full_route(
    cached_api: CachedApi,
) -> None:
    full = cached_api.poll()  # the first issued answer is rendered, then cached
    assert full.json()["data"]["status"] == "issued"
    assert len(cached_api.full_route) == 2

    fast = cached_api.poll()
    again = cached_api.poll("&algorithm=rsa&issuer=LetsEncrypt")  # valid choices: same order
    assert len(cached_api.full_route) == 2  # neither reached Starlette
    for answer in (fast, again):
        assert answer.status_code == full.status_code == 200
        assert answer.headers == full.headers
        assert _without_trace(answer.text) == _without_trace(full.text)
        assert answer.json()["traceId"] != full.json()["traceId"]
    assert fast.json()["traceId"] != again.json()["traceId"]


@pytest.mark.parametrize(
    ("query", "token", "method", "status", "words"),
    [
        ("&code=again", None, "GET", 400, ["given 2 times"]),
        ("&algorithm=DSA", None, "GET", 400, ["ECC", "RSA"]),
        ("&issuer=acme-ca", None, "GET", 400, ["google", "letsencrypt"]),
        ("", "0" * 32, "GET", 401, ["invalid or revoked"]),
        ("", "", "GET", 401, ["missing token"]),
        # POST is the httpsok POST API (certok/api/post_api.py): PUT is no method of apply.
        ("", None, "PUT", 405, ["method PUT not allowed"]),
    ],
)
def test_what_the_caches_cannot_answer_takes_the_full_route(
    cached_api: CachedApi, query: str, token: str | None, method: str, status: int, words: list
) -> None:
    cached_api.poll()  # cached from now on
    before = len(cached_api.full_route)
    assert_error(cached_api.poll(query, token, method), status, *words)
    assert len(cached_api.full_route) == before + 1


def test_each_poll_takes_one_from_the_tenants_apply_limit(cached_api: CachedApi) -> None:
    cached_api.poll()  # cached from now on
    cached_api.services.limiter = RateLimiter({"apply": 3})
    assert cached_api.poll().status_code == 200  # 1, from the caches
    assert_error(cached_api.poll("&algorithm=DSA"), 400, "ECC")  # 2, on the full route only
    assert cached_api.poll().status_code == 200  # 3
    before = len(cached_api.full_route)
    assert_error(cached_api.poll(), 429, "at most 3 a minute", "retry in")
    assert len(cached_api.full_route) == before + 1  # refused by the full route, as before
