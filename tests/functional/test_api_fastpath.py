"""apply's issued answers served before Starlette (certok/api/fastpath.py), from the cache or
from a batched read (certok/api/apply_reads.py): the same answer as the full route, errors left
to it, each request counted once by the rate limiter, and each code read once per poll."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, update
from starlette.testclient import TestClient

from certok.api.caches import TtlCache, token_key
from certok.crypto import SecretBox, generate_private_key, private_key_to_pem
from certok.db.engine import transaction
from certok.db.models import Order, VerificationCode
from certok.orders import service
from certok.orders.codes import issue_code
from certok.orders.service import order_key_owner
from certok.persistence import Store
from certok.ratelimit import RateLimiter
from certok.tenants import service as tenants
from tests.functional.test_api import api_settings, assert_error, make_app
from tests.kit.certs import self_signed_pem
from tests.kit.rows import order_row

APPLY = "/v1/cert/apply"


@dataclass
class CachedApi:
    client: TestClient
    services: Any
    token: str
    tenant_id: int
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
    # Tokens stay accepted for the whole test, however slowly the machine runs it.
    app.state.services.tokens = TtlCache(ttl=3600.0, max_entries=100)
    full_route: list[str] = []
    stack = app.build_middleware_stack()

    async def counted(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            full_route.append(scope["path"])
        await stack(scope, receive, send)

    app.middleware_stack = counted
    with TestClient(app, raise_server_exceptions=False) as client:
        harness = CachedApi(client, app.state.services, token, tenant_id, code, full_route)
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


def test_an_issued_answer_is_the_full_routes_answer_without_the_full_route(
    cached_api: CachedApi,
) -> None:
    services = cached_api.services
    # With the token not in the cache, the full route renders the issued answer.
    services.tokens.discard(token_key(cached_api.token))
    full = cached_api.poll()
    assert full.json()["data"]["status"] == "issued"
    assert len(cached_api.full_route) == 2

    services.issued.discard((cached_api.tenant_id, cached_api.code))
    stored = cached_api.poll()  # read from the database, then cached
    cached = cached_api.poll()
    again = cached_api.poll("&algorithm=rsa&issuer=LetsEncrypt")  # valid choices: same order
    assert len(cached_api.full_route) == 2  # none reached Starlette
    for answer in (stored, cached, again):
        assert answer.status_code == full.status_code == 200
        assert answer.headers == full.headers
        assert _without_trace(answer.text) == _without_trace(full.text)
        assert answer.json()["traceId"] != full.json()["traceId"]
    assert len({answer.json()["traceId"] for answer in (stored, cached, again)}) == 3


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


def test_an_uncached_issued_answer_takes_one_from_the_limit_too(cached_api: CachedApi) -> None:
    cached_api.services.limiter = RateLimiter({"apply": 2})
    key = (cached_api.tenant_id, cached_api.code)
    for _ in range(2):
        cached_api.services.issued.discard(key)
        assert cached_api.poll().json()["data"]["status"] == "issued"
    cached_api.services.issued.discard(key)
    before = len(cached_api.full_route)
    assert_error(cached_api.poll(), 429, "at most 2 a minute", "retry in")
    assert len(cached_api.full_route) == before + 1


def test_an_uncached_issued_answer_is_made_from_the_row_without_a_view(
    cached_api: CachedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every poll of an issued code past the cache lands here: the order's view (its times
    # parsed, only to be written back as text) is not built for it.
    def no_view(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an issued code's answer built the order's view")

    cached_api.services.issued.discard((cached_api.tenant_id, cached_api.code))
    before = len(cached_api.full_route)
    with monkeypatch.context() as patched:
        patched.setattr(service, "OrderView", no_view)
        answer = cached_api.poll()
    assert answer.status_code == 200
    assert answer.json()["data"]["status"] == "issued"
    assert answer.json()["data"]["notBefore"] == "2026-01-02 00:00:00"
    assert len(cached_api.full_route) == before
    # The same answer as the one cached from it, then served again.
    assert _without_trace(cached_api.poll().text) == _without_trace(answer.text)


@contextmanager
def code_reads(store: Store) -> Iterator[list[str]]:
    """The statements that read verification codes, while the block runs."""
    seen: list[str] = []

    def note(_conn, _cursor, statement: str, *_args: Any) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "verification_codes" in statement:
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def test_a_poll_reads_its_code_once(store: Store, cached_api: CachedApi) -> None:
    # Issued, not cached: one read on the fast path, no full route.
    cached_api.services.issued.discard((cached_api.tenant_id, cached_api.code))
    before = len(cached_api.full_route)
    with code_reads(store) as reads:
        assert cached_api.poll().json()["data"]["status"] == "issued"
    assert len(reads) == 1
    assert len(cached_api.full_route) == before

    # Pending: the full route answers with what the fast path read, and reads no code again.
    with transaction(store.sessions) as session:
        code = issue_code(session, cached_api.tenant_id, "dns", ["api.customer.test"], 60)
    cached_api.code = code
    assert cached_api.poll().json()["data"] == {"status": "pending"}  # the order is made
    with code_reads(store) as reads:
        assert cached_api.poll().json()["data"] == {"status": "pending"}
    assert len(reads) == 1
    assert len(cached_api.full_route) == before + 2


def test_on_postgresql_an_uncached_poll_is_read_from_the_event_loop(
    store: Store, cached_api: CachedApi
) -> None:
    """certok/db/loop_reads.py: once the loop has a connection of its own, a poll the cache
    misses is read from the loop itself (its statement has no cursor), with the same answer."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("reads from the event loop are PostgreSQL's")
    services = cached_api.services
    services.tokens.discard(token_key(cached_api.token))
    full = cached_api.poll()  # the full route's answer
    cursors: list[Any] = []

    def note(_conn, cursor, statement: str, *_args: Any) -> None:  # type: ignore[no-untyped-def]
        if "verification_codes" in statement:
            cursors.append(cursor)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        deadline = time.monotonic() + 10
        while None not in cursors:
            assert time.monotonic() < deadline, "no poll was read from the loop"
            services.issued.discard((cached_api.tenant_id, cached_api.code))
            answer = cached_api.poll()
            assert _without_trace(answer.text) == _without_trace(full.text)
    finally:
        event.remove(store.engine, "before_cursor_execute", note)
    assert cursors[0] is not None  # the first, before the loop had a connection: on a thread


def test_another_tenants_code_is_not_found_and_its_key_stays_sealed(
    store: Store, cached_api: CachedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    with transaction(store.sessions) as session:
        tenants.create_tenant(session, "beta")
        beta_token = tenants.issue_token(session, "beta")
    assert_error(cached_api.poll(token=beta_token), 404, "not found")  # beta's token now cached
    decrypted: list[str] = []
    original = SecretBox.decrypt

    def noting(box: SecretBox, blob: bytes, owner: str) -> bytes:
        decrypted.append(owner)
        return original(box, blob, owner)

    monkeypatch.setattr(SecretBox, "decrypt", noting)
    before = len(cached_api.full_route)
    assert_error(cached_api.poll(token=beta_token), 404, "not found", cached_api.code)
    assert decrypted == []
    assert len(cached_api.full_route) == before + 1
    assert cached_api.poll().json()["data"]["status"] == "issued"  # alpha's still is
    assert len(decrypted) == 1


def test_concurrent_polls_share_reads_and_each_gets_its_own_answer(
    store: Store, tmp_path: Path
) -> None:
    """Twenty polls at once, from two tenants, each with a code of its own and one with the
    other's: every poll answered with its own order's certificate, the foreign one refused,
    in fewer reads than polls."""
    with transaction(store.sessions) as session:
        tokens = {name: "" for name in ("alpha", "beta")}
        tenant_ids = {}
        for name in tokens:
            tenant_ids[name] = tenants.create_tenant(session, name).id
            tokens[name] = tenants.issue_token(session, name)
    codes = {
        name: [_issued_code(store, tenant_ids[name], f"{name}{i}") for i in range(10)]
        for name in tokens
    }
    app = make_app(api_settings(tmp_path, apply_wait_seconds=0.1), store, wake_worker=lambda: None)
    app.state.services.tokens = TtlCache(ttl=3600.0, max_entries=100)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://certok") as client:
            for name, token in tokens.items():  # accepted once: the token is cached
                await client.get(
                    APPLY, params={"code": codes[name][0]}, headers={"httpsok-token": token}
                )
            app.state.services.issued = TtlCache(ttl=300.0, max_entries=100)
            polls = [(name, code) for name in tokens for code in codes[name]]
            polls.append(("beta", codes["alpha"][3]))  # another tenant's code
            return await asyncio.gather(
                *(
                    client.get(
                        APPLY, params={"code": code}, headers={"httpsok-token": tokens[name]}
                    )
                    for name, code in polls
                )
            )

    with code_reads(store) as reads:
        answers = asyncio.run(run())
    *own, foreign = answers
    names = [f"{name}{i}.customer.test" for name in tokens for i in range(10)]
    for name, answer in zip(names, own, strict=True):
        data = answer.json()["data"]
        assert data["status"] == "issued" and data["domains"] == name and data["subject"] == name
    assert_error(foreign, 404, "not found")
    assert len(reads) < len(answers) - 2  # two warm-up polls, then shared reads


def _issued_code(store: Store, tenant_id: int, label: str) -> str:
    """A code whose order is issued for `<label>.customer.test`, with its own key."""
    name = f"{label}.customer.test"
    key = generate_private_key("ECC")
    with transaction(store.sessions) as session:
        code = issue_code(session, tenant_id, "dns", [name], 60)
        order = Order(**order_row(tenant_id, dt.datetime.now(dt.UTC), domains=name, state="issued"))
        session.add(order)
        session.flush()
        order.certificate_pem = self_signed_pem(key, [name])
        order.not_before = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        order.not_after = dt.datetime(2026, 4, 2, tzinfo=dt.UTC)
        order.key_encrypted = store.box.encrypt(
            private_key_to_pem(key).encode(), order_key_owner(order.id)
        )
        session.execute(
            update(VerificationCode).where(VerificationCode.code == code).values(order_id=order.id)
        )
    return code
