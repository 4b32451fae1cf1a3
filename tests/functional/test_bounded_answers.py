"""What the API repeats back and how often the public responder answers one client: bounded
(issue 14). The real app in-process on a real database."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from certok.db.engine import transaction
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.functional.test_api import ApiHarness, api, api_settings, assert_error, make_app

__all__ = ["api"]  # the fixture, imported for pytest


def test_an_unknown_code_is_echoed_at_most_64_characters(api: ApiHarness) -> None:
    sent = "c0de" * 16_000  # 64,000 characters
    answer = api.get("/v1/cert/apply", code=sent)
    assert_error(answer, 404, "not found", "/v1/cert/dv")
    msg = answer.json()["msg"]
    assert sent[:64] + "…" in msg
    assert sent[:65] not in msg
    assert len(answer.content) < 400
    # a code of ordinary length is still repeated whole, so a typo can be recognised
    assert "'0123456789abcdef'" in api.get("/v1/cert/apply", code="0123456789abcdef").json()["msg"]


def test_unknown_webhook_ids_and_agent_files_are_echoed_bounded_too(api: ApiHarness) -> None:
    sent = "w" * 20_000
    token = {"httpsok-token": api.tokens["alpha"]}
    answers = [
        api.client.delete(f"/v1/webhooks/{sent}", headers=token),
        api.client.get(f"/v1/nginx/cert/{sent}.cer", headers={**token, "httpsok-uuid": "0" * 32}),
    ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert sent[:64] + "…" in answer.text and sent[:65] not in answer.text
        assert len(answer.content) < 500


def test_the_http01_responder_is_limited_per_client_address(api: ApiHarness) -> None:
    from certok.ratelimit import HTTP01_RESPONDER, RateLimiter

    services = api.client.app.state.services  # type: ignore[attr-defined]
    services.limiter = RateLimiter({HTTP01_RESPONDER: 3})
    for _ in range(3):
        assert api.client.get("/v1/dv/www.customer.test/tok_en-1").status_code == 404
    limited = api.client.get("/v1/dv/www.customer.test/tok_en-1")
    assert_error(limited, 429, "HTTP-01 challenge requests from testclient", "retry in")
    assert int(limited.headers["retry-after"]) >= 1
    # The tenant-bound form shares the bucket; the API's own endpoints do not.
    assert api.client.get("/v1/dv/abc/www.customer.test/tok_en-1").status_code == 429
    assert api.get("/v1/cert/apply", code="0123456789abcdef").status_code == 404


def test_the_default_responder_limit_lets_a_validation_burst_through(api: ApiHarness) -> None:
    # Pebble validates each name from 3 vantage points at once; Let's Encrypt from up to 5
    # (other addresses); a CA's validation servers serve many orders. 100 names x 5 from one
    # address fit in the default.
    for _ in range(500):
        assert api.client.get("/v1/dv/www.customer.test/tok_en-1").status_code == 404


def test_dv_http_prechecks_are_capped_per_target_site_and_tenant(
    store: Store, tmp_path: Path
) -> None:
    settings = api_settings(
        tmp_path, precheck_http_per_target_per_minute=3, precheck_http_per_tenant_per_minute=5
    )
    with transaction(store.sessions) as session:
        tenants.create_tenant(session, "alpha")
        token = tenants.issue_token(session, "alpha")
    app = make_app(settings, store, wake_worker=lambda: None)
    with TestClient(app, raise_server_exceptions=False) as client:

        def dv(domains: list[str]):  # type: ignore[no-untyped-def]
            return client.get(
                "/v1/cert/dv",
                params={"type": "http", "domains": ",".join(domains)},
                headers={"httpsok-token": token},
            )

        checked = dv(["h0.customer.test", "h1.customer.test"])
        assert checked.status_code == 200 and checked.json()["data"]["valid"] is False
        refused = dv(["h2.customer.test", "h3.customer.test"])  # one left for customer.test
        assert_error(refused, 429, "customer.test and its subdomains", "at most 3")
        assert int(refused.headers["retry-after"]) >= 1
        assert dv(["h2.customer.test"]).status_code == 200  # the refusal took nothing
        # 3 of the tenant's 5 are used
        assert_error(dv(["a.other.test", "b.third.test", "c.fourth.test"]), 429, "this tenant")
        assert dv(["a.other.test", "b.third.test"]).status_code == 200
