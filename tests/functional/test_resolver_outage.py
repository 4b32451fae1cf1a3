"""A resolver outage is certok's problem, not the tenant's: its own dv item code and message,
one WARNING per outage in the server log, and a metric."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from certok.db.engine import transaction
from certok.persistence import Store
from certok.prechecks.outage import RESOLVER_UNAVAILABLE, ResolverWatch
from certok.tenants import service as tenants
from tests.functional.test_api import api_settings, make_app


def failures(check: str) -> float:
    value = REGISTRY.get_sample_value("certok_resolver_failures_total", {"check": check})
    return value or 0.0


@pytest.mark.parametrize("challenge", ["dns", "http"])
def test_dv_during_a_resolver_outage(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, challenge: str
) -> None:
    # Nothing listens at 127.0.0.1:9: every lookup fails (connection refused).
    settings = api_settings(tmp_path, precheck_allow_loopback=True)
    with transaction(store.sessions) as session:
        tenants.create_tenant(session, "alpha")
        token = tenants.issue_token(session, "alpha")
    app = make_app(settings, store, wake_worker=lambda: None)
    before = failures(challenge)
    caplog.set_level(logging.INFO, logger="certok.resolvers")
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(2):
            response = client.get(
                "/v1/cert/dv",
                params={"type": challenge, "domains": "www.customer.test"},
                headers={"httpsok-token": token},
            )
            body = response.json()
            assert response.status_code == 200 and body["code"] == 0, body
            [item] = body["data"]["items"]
            assert item["valid"] is False and body["data"]["code"] is None
            assert item["code"] == RESOLVER_UNAVAILABLE, item
            assert "certok's DNS resolvers" in item["detail"]
            assert "certok's side" in item["detail"]
            assert "A or AAAA record" not in item["detail"]
            assert "add _acme-challenge" not in item["detail"]
    warnings = [r for r in caplog.records if r.name == "certok.resolvers"]
    assert [r.levelname for r in warnings] == ["WARNING"], warnings
    assert "resolver outage" in warnings[0].getMessage()
    assert "127.0.0.1:9" in warnings[0].getMessage()
    assert failures(challenge) == before + 2


def test_one_warning_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="certok.resolvers")
    watch = ResolverWatch("dns", ["192.0.2.53"])
    for event in ("fail", "fail", "ok", "ok", "fail", "fail", "ok"):
        if event == "fail":
            watch.failed("timed out")
        else:
            watch.answered()
    levels = [r.levelname for r in caplog.records if r.name == "certok.resolvers"]
    assert levels == ["WARNING", "INFO", "WARNING", "INFO"]
    assert REGISTRY.get_sample_value("certok_resolver_outage", {"check": "dns"}) == 0
