"""The HTTP API in-process (real database, real Starlette app): envelope, auth, codes, orders."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from certok.api.caches import TtlCache
from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import build_api_services, build_checks
from certok.crypto import generate_private_key, private_key_from_pem, private_key_to_pem
from certok.db.engine import transaction
from certok.db.models import Order
from certok.orders.codes import issue_code
from certok.orders.service import order_key_owner
from certok.persistence import Store
from certok.settings import Settings
from certok.tenants import service as tenants
from tests.kit.certs import self_signed_pem


@dataclass
class ApiHarness:
    client: TestClient
    store: Store
    tokens: dict[str, str]
    tenant_ids: dict[str, int]
    wakes: list[int]

    def get(self, path: str, tenant: str | None = "alpha", **params: str):  # type: ignore[no-untyped-def]
        headers = {"httpsok-token": self.tokens[tenant]} if tenant else {}
        return self.client.get(path, params=params, headers=headers)

    def code_for(self, tenant: str, domains: list[str], ttl: int = 60) -> str:
        with transaction(self.store.sessions) as session:
            return issue_code(session, self.tenant_ids[tenant], "dns", domains, ttl)


def make_app(settings: Settings, store: Store, **overrides: Any) -> Starlette:
    return create_app(
        build_api_services(
            settings,
            store,
            build_checks(settings, store, label_key=b"k" * 32),
            waiters=OrderWaiters(),
            **overrides,
        )
    )


def api_settings(tmp_path, **overrides: Any) -> Settings:  # type: ignore[no-untyped-def]
    # Nothing listens on this port: dv checks fail fast without touching any real resolver.
    return Settings(
        data_dir=tmp_path,
        dns_zone="acme.svc.test",
        resolvers=["127.0.0.1:9"],
        resolver_timeout_seconds=0.5,
        **overrides,
    )


@pytest.fixture
def api(store: Store, tmp_path) -> Iterator[ApiHarness]:  # type: ignore[no-untyped-def]
    settings = api_settings(tmp_path, apply_wait_seconds=0.3)
    tokens: dict[str, str] = {}
    ids: dict[str, int] = {}
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta"):
            ids[name] = tenants.create_tenant(session, name).id
            tokens[name] = tenants.issue_token(session, name)
    wakes: list[int] = []
    app = make_app(
        settings,
        store,
        wake_worker=lambda: wakes.append(1),
        # every request checks its token (revocation tests); caching is tested on its own
        tokens=TtlCache(ttl=0, max_entries=10),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ApiHarness(client, store, tokens, ids, wakes)


def assert_error(response, status: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "msg", "data", "traceId"}
    assert body["code"] != 0
    assert body["data"] is None
    for word in words:
        assert word in body["msg"], body["msg"]


def test_health_and_openapi(api: ApiHarness) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    doc = api.client.get("/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/cert/dv", "/v1/cert/apply"} <= set(doc["paths"])
    params = {p["name"]: p for p in doc["paths"]["/v1/cert/apply"]["get"]["parameters"]}
    assert params["issuer"]["schema"]["default"] == "google"
    assert params["algorithm"]["schema"]["default"] == "ECC"


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({}, ["missing token", "httpsok-token"]),
        ({"httpsok-token": "nope"}, ["32 hex"]),
        ({"httpsok-token": "0" * 32}, ["invalid or revoked"]),
    ],
)
def test_bad_tokens_are_401(api: ApiHarness, headers: dict[str, str], words: list[str]) -> None:
    response = api.client.get("/v1/cert/dv", params={"domains": "a.example.com"}, headers=headers)
    assert_error(response, 401, *words)


def test_revoked_token_and_disabled_tenant(api: ApiHarness) -> None:
    with transaction(api.store.sessions) as session:
        tenants.revoke_token(session, api.tokens["alpha"])
    assert_error(api.get("/v1/cert/dv", domains="a.example.com"), 401, "revoked")
    with transaction(api.store.sessions) as session:
        tenants.set_disabled(session, "beta", True)
    assert_error(api.get("/v1/cert/dv", "beta", domains="a.example.com"), 401, "disabled")


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({}, 400, ["missing parameter domains"]),
        ({"domains": "a.example.com", "type": "ftp"}, 400, ["type", "dns", "http"]),
        ({"domains": "exa mple.com"}, 400, ["exa mple.com"]),
        ({"domains": "192.168.0.1"}, 400, ["192.168.0.1"]),
        ({"domains": "a.example.com,a.example.com"}, 400, ["a.example.com"]),
        ({"domains": "*.example.com", "type": "http"}, 400, ["dns"]),
    ],
)
def test_dv_rejects_bad_input(
    api: ApiHarness, params: dict[str, str], status: int, words: list[str]
) -> None:
    assert_error(api.get("/v1/cert/dv", **params), status, *words)


def test_dv_without_delegation_gives_cname_and_no_code(api: ApiHarness) -> None:
    response = api.get("/v1/cert/dv", domains="www.customer.test,*.customer.test,customer.test")
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 0
    data = body["data"]
    assert data["valid"] is False and data["code"] is None and data["type"] == "dns"
    items = {item["domain"]: item for item in data["items"]}
    assert items["www.customer.test"]["name"] == "_acme-challenge.www"
    assert items["customer.test"]["name"] == "_acme-challenge"
    # apex and wildcard share one CNAME; www has its own
    assert items["customer.test"]["value"] == items["*.customer.test"]["value"]
    assert items["www.customer.test"]["value"] != items["customer.test"]["value"]
    for item in items.values():
        assert item["type"] == "CNAME" and item["valid"] is False
        assert item["value"].endswith(".acme.svc.test")
        assert len(item["value"].split(".")[0]) == 16
        assert item["cost"].isdigit()
    assert "not verified" in body["msg"]


def test_labels_differ_between_tenants_and_are_stable(api: ApiHarness) -> None:
    def value(tenant: str) -> str:
        return api.get("/v1/cert/dv", tenant, domains="www.customer.test").json()["data"]["items"][
            0
        ]["value"]

    first = value("alpha")
    assert value("alpha") == first
    assert value("beta") != first


def test_apply_unknown_other_tenant_and_expired_codes(api: ApiHarness) -> None:
    assert_error(api.get("/v1/cert/apply"), 400, "missing parameter code")
    assert_error(api.get("/v1/cert/apply", code="0123456789abcdef"), 404, "not found")
    beta_code = api.code_for("beta", ["www.customer.test"])
    unknown = api.get("/v1/cert/apply", code="fedcba9876543210").json()["msg"]
    other = api.get("/v1/cert/apply", code=beta_code)
    assert_error(other, 404, "not found")
    # another tenant's code looks exactly like an unknown one (only the code itself differs)
    assert other.json()["msg"].replace(beta_code, "X") == unknown.replace("fedcba9876543210", "X")
    expired = api.code_for("alpha", ["www.customer.test"], ttl=-1)
    assert_error(api.get("/v1/cert/apply", code=expired), 410, "expired", "/v1/cert/dv")


def test_apply_validates_algorithm_and_issuer(api: ApiHarness) -> None:
    code = api.code_for("alpha", ["www.customer.test"])
    assert_error(api.get("/v1/cert/apply", code=code, algorithm="DSA"), 400, "ECC", "RSA")
    assert_error(
        api.get("/v1/cert/apply", code=code, issuer="acme-ca"), 400, "google", "letsencrypt"
    )
    # nothing was recorded by the refused calls: the code still starts one order
    response = api.get("/v1/cert/apply", code=code, algorithm="rsa", issuer="LetsEncrypt")
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "pending"
    with api.store.sessions() as session:
        orders = session.query(Order).all()
    assert [(o.algorithm, o.issuer, o.domains) for o in orders] == [
        ("RSA", "letsencrypt", "www.customer.test")
    ]


def test_apply_starts_one_order_and_polls_it(api: ApiHarness) -> None:
    code = api.code_for("alpha", ["www.customer.test"])
    first = api.get("/v1/cert/apply", code=code)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    assert first.json()["data"] == {"status": "pending"}
    assert api.wakes == [1]
    second = api.get("/v1/cert/apply", code=code, algorithm="RSA")
    assert second.json()["data"]["status"] == "pending"
    assert api.wakes == [1]  # no second order
    with api.store.sessions() as session:
        orders = session.query(Order).all()
    assert len(orders) == 1 and orders[0].algorithm == "ECC" and orders[0].issuer == "google"


def test_issued_and_failed_orders_render_the_seed_fields(api: ApiHarness) -> None:
    code = api.code_for("alpha", ["*.customer.test", "customer.test"])
    api.get("/v1/cert/apply", code=code, issuer="letsencrypt")
    key = generate_private_key("ECC")
    pem = self_signed_pem(
        key,
        ["*.customer.test", "customer.test"],
        not_before=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        serial=7,
    )
    with transaction(api.store.sessions) as session:
        order = session.query(Order).one()
        order.state = "issued"
        order.certificate_pem = pem
        order.not_before = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        order.not_after = dt.datetime(2026, 4, 2, 3, 4, 5, tzinfo=dt.UTC)
        order.key_encrypted = api.store.box.encrypt(
            private_key_to_pem(key).encode(), order_key_owner(order.id)
        )
    response = api.get("/v1/cert/apply", code=code)
    assert response.headers["cache-control"] == "no-store"
    data = response.json()["data"]
    assert data["status"] == "issued"
    assert data["issuer"] == "letsencrypt"
    assert data["subject"] == "*.customer.test"
    assert data["domains"] == "*.customer.test,customer.test"
    assert data["notBefore"] == "2026-01-02 03:04:05"
    assert data["notAfter"] == "2026-04-02 03:04:05"
    assert data["certificate"] == pem
    assert data["privateKey"].startswith("-----BEGIN EC PRIVATE KEY-----")
    assert private_key_from_pem(data["privateKey"]).private_numbers() == key.private_numbers()

    code2 = api.code_for("alpha", ["www.customer.test"])
    api.get("/v1/cert/apply", code=code2)
    with transaction(api.store.sessions) as session:
        failed = session.query(Order).filter(Order.domains == "www.customer.test").one()
        failed.state = "failure"
        failed.reason = "caa: CAA record forbids issuance"
    body = api.get("/v1/cert/apply", code=code2).json()
    assert body["code"] == 0
    assert body["data"] == {"status": "failure", "reason": "caa: CAA record forbids issuance"}
    assert "CAA" in body["msg"]


def test_unknown_route_and_method_use_the_envelope(api: ApiHarness) -> None:
    assert_error(api.client.get("/v1/cert/nothing"), 404, "/v1/cert/nothing")
    # POST /v1/cert/dv is the httpsok POST API (certok/api/post_api.py); PUT is nothing.
    assert_error(api.client.put("/v1/cert/dv"), 405, "PUT")


def test_http01_responder_answers_only_through_the_owning_form(api: ApiHarness) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from certok.db.models import ChallengeRecord, Tenant
    from certok.http01 import store as http01_store

    code = api.code_for("alpha", ["www.customer.test"])
    api.get("/v1/cert/apply", code=code)
    with transaction(api.store.sessions) as session:
        order = session.query(Order).one()
        session.add(
            ChallengeRecord(
                order_id=order.id,
                kind="http-01",
                name="www.customer.test/tok_en-1",
                value="tok_en-1.thumbprint",
                authz_url="https://ca.test/authz/1",
                created_at=dt.datetime.now(dt.UTC),
            )
        )
        handles = {t.name: t.http_handle for t in session.query(Tenant)}

    def fetch(path: str):  # type: ignore[no-untyped-def]
        return api.client.get(path)

    # host-only form: nothing until the host is bound, then only for its tenant's orders
    assert fetch("/v1/dv/www.customer.test/tok_en-1").status_code == 404
    with transaction(api.store.sessions) as session:
        http01_store.claim_host(session, "www.customer.test", api.tenant_ids["beta"])
    assert fetch("/v1/dv/www.customer.test/tok_en-1").status_code == 404
    with transaction(api.store.sessions) as session:
        assert http01_store.release_host(session, "www.customer.test")
        http01_store.claim_host(session, "www.customer.test", api.tenant_ids["alpha"])
    ok = fetch("/v1/dv/WWW.customer.test/tok_en-1")
    assert ok.status_code == 200 and ok.text == "tok_en-1.thumbprint"
    assert ok.headers["content-type"].startswith("text/plain")
    # tenant-bound form: the owner's handle answers, another tenant's does not
    assert (
        fetch(f"/v1/dv/{handles['alpha']}/www.customer.test/tok_en-1").text == "tok_en-1.thumbprint"
    )
    assert fetch(f"/v1/dv/{handles['beta']}/www.customer.test/tok_en-1").status_code == 404
    # other tokens and hostile ones are 404, never an error
    for path in (
        "/v1/dv/www.customer.test/other",
        "/v1/dv/www.customer.test/tok%2Fen",
        "/v1/dv/www.customer.test/" + "a" * 200,
        "/v1/dv/nothex/www.customer.test/tok_en-1",
    ):
        assert fetch(path).status_code == 404, path
    # CAs fetch from several vantage points at once: same answer every time
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(fetch, ["/v1/dv/www.customer.test/tok_en-1"] * 24))
    assert {(a.status_code, a.text) for a in answers} == {(200, "tok_en-1.thumbprint")}


def test_per_tenant_rate_limit_answers_429_with_retry_after(api: ApiHarness) -> None:
    from certok.ratelimit import RateLimiter

    api.client.app.state.services.limiter = RateLimiter({"dv": 2, "apply": 2})  # type: ignore[attr-defined]
    for _ in range(2):
        assert api.get("/v1/cert/dv", domains="exa mple.com").status_code == 400
    limited = api.get("/v1/cert/dv", domains="a.example.com")
    assert_error(limited, 429, "at most 2 a minute", "retry in")
    assert int(limited.headers["retry-after"]) >= 1
    # another tenant is not affected
    assert api.get("/v1/cert/dv", "beta", domains="exa mple.com").status_code == 400


def test_token_lookups_are_limited_per_client_but_accepted_tokens_pass(api: ApiHarness) -> None:
    from certok.ratelimit import UNVERIFIED_TOKENS, RateLimiter

    services = api.client.app.state.services  # type: ignore[attr-defined]
    services.limiter = RateLimiter({UNVERIFIED_TOKENS: 3})
    # alpha's token is accepted once: from then on its lookups are never held back.
    assert api.get("/v1/cert/dv", domains="exa mple.com").status_code == 400
    for guess in ("1" * 32, "2" * 32):
        bad = api.client.get("/v1/cert/dv", headers={"httpsok-token": guess})
        assert_error(bad, 401, "invalid or revoked")
    limited = api.client.get("/v1/cert/dv", headers={"httpsok-token": "3" * 32})
    assert_error(limited, 429, "httpsok-token", "at most 3 a minute", "retry in", "testclient")
    assert int(limited.headers["retry-after"]) >= 1
    assert_error(api.client.get("/v1/cert/dv"), 429, "httpsok-token")  # no token: the same
    for _ in range(5):
        assert api.get("/v1/cert/dv", domains="exa mple.com").status_code == 400
    # A token this node has not accepted yet waits like the guesses from the same address...
    assert_error(api.get("/v1/cert/dv", "beta", domains="exa mple.com"), 429, "retry in")
    # ...while another address has a bucket of its own.
    with TestClient(api.client.app, client=("192.0.2.7", 50000)) as elsewhere:
        beta = {"httpsok-token": api.tokens["beta"]}
        answer = elsewhere.get("/v1/cert/dv", params={"domains": "exa mple.com"}, headers=beta)
        assert answer.status_code == 400, answer.text
        bad = elsewhere.get("/v1/cert/dv", headers={"httpsok-token": "4" * 32})
        assert_error(bad, 401, "invalid or revoked")


def test_a_revoked_token_counts_against_the_client_limit_again(api: ApiHarness) -> None:
    from certok.ratelimit import UNVERIFIED_TOKENS, RateLimiter

    services = api.client.app.state.services  # type: ignore[attr-defined]
    services.limiter = RateLimiter({UNVERIFIED_TOKENS: 3})
    assert api.get("/v1/cert/dv", domains="exa mple.com").status_code == 400  # accepted: 1 taken
    with transaction(api.store.sessions) as session:
        tenants.revoke_token(session, api.tokens["alpha"])
    # The first failure is looked up as an accepted token (not counted); from then on the
    # revoked token waits like any guess from this address.
    for _ in range(3):
        assert_error(api.get("/v1/cert/dv", domains="a.example.com"), 401, "revoked")
    assert_error(api.get("/v1/cert/dv", domains="a.example.com"), 429, "retry in")


def test_concurrent_requests_with_one_token_share_one_token_check(api: ApiHarness) -> None:
    import asyncio

    import httpx
    from sqlalchemy import event

    token_reads: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "api_tokens" in statement:
            token_reads.append(statement)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://certok") as client:
            return await asyncio.gather(
                *(
                    client.get(
                        "/v1/cert/apply",
                        params={"code": f"{i:016x}"},
                        headers={"httpsok-token": api.tokens["alpha"]},
                    )
                    for i in range(20)
                )
            )

    event.listen(api.store.engine, "before_cursor_execute", count)
    try:
        responses = asyncio.run(burst())
    finally:
        event.remove(api.store.engine, "before_cursor_execute", count)
    # every request was authenticated (unknown code → 404, not 401) ...
    assert [r.status_code for r in responses] == [404] * 20
    # ... by one or two token reads (the cache here keeps nothing), not one per request
    assert 1 <= len(token_reads) <= 2, len(token_reads)


def test_an_unreachable_database_is_503_with_retry_after(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    import logging
    import secrets

    from certok.crypto import SecretBox
    from certok.db.engine import make_engine
    from certok.db.sessions import make_session_factory

    # Nothing listens on port 9: every connection attempt is refused, as while PostgreSQL
    # restarts.
    engine = make_engine("postgresql+psycopg://certok@127.0.0.1:9/certok", threads=1)
    store = Store(engine, make_session_factory(engine), SecretBox(secrets.token_bytes(32)))
    settings = Settings(data_dir=tmp_path, dns_zone="acme.svc.test", resolvers=["127.0.0.1:9"])
    app = make_app(settings, store, wake_worker=lambda: None)
    token = {"httpsok-token": "0123456789abcdef" * 2}
    with (
        TestClient(app, raise_server_exceptions=False) as client,
        caplog.at_level(logging.WARNING, logger="certok.api.envelope"),
    ):
        for path, params in (
            ("/v1/cert/dv", {"domains": "a.example.com"}),
            ("/v1/cert/apply", {"code": "abc"}),
        ):
            response = client.get(path, params=params, headers=token)
            assert_error(response, 503, "database", "retry the same request in 2 s")
            assert response.headers["retry-after"] == "2"
    engine.dispose()
    assert "database unavailable" in caplog.text
    assert "[parameters" not in caplog.text  # the driver's message, not the statement's
