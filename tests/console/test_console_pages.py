"""The console's pages and actions with the real API beside them: tokens made in the console
work against /v1/cert/dv and stop on revoke; certificates list and download; domains; the
operator's tenants, orders and issuer health."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time

from cryptography import x509
from sqlalchemy import select
from starlette.testclient import TestClient

from certok.crypto import private_key_from_pem
from certok.db.engine import transaction
from certok.db.models import ApiToken, Certificate, Delegation
from certok.persistence import Store
from certok.tenants import service as tenants
from certok.tenants.token_usage import TokenUsage
from tests.console.harness import Browser, add_host, add_order, certificate_of


def test_token_created_in_the_console_works_until_revoked(browser: Browser, store: Store) -> None:
    browser.sign_in("ann@alpha.test")
    created = browser.submit("/console/tokens", "/console/tokens", {"name": "deploy web-01"})
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    token = re.search(r'id="new-token">([0-9a-f]{32})<', created.text).group(1)  # type: ignore[union-attr]
    listing = browser.get("/console/tokens").text
    assert token not in listing  # shown once, never again
    assert "deploy web-01" in listing and token[:6] in listing

    api = browser.client.get(
        "/v1/cert/dv", params={"domains": "www.customer.test"}, headers={"httpsok-token": token}
    )
    assert api.status_code == 200 and api.json()["code"] == 0

    # Its last use is stamped (in the background, off the request's path).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with store.sessions() as session:
            used = session.scalar(select(ApiToken.last_used_at).where(ApiToken.hint == token[:6]))
        if used is not None:
            break
        time.sleep(0.05)
    assert used is not None
    assert "Never" not in browser.get("/console/tokens").text

    token_id = re.search(r"/console/tokens/(\d+)/revoke", listing).group(1)  # type: ignore[union-attr]
    revoked = browser.submit("/console/tokens", f"/console/tokens/{token_id}/revoke", {})
    assert revoked.headers["location"] == "/console/tokens?done=token_revoked"
    assert "The token was revoked." in browser.get(revoked.headers["location"]).text
    api = browser.client.get(
        "/v1/cert/dv", params={"domains": "www.customer.test"}, headers={"httpsok-token": token}
    )
    assert api.status_code == 401


def test_token_usage_writes_at_most_once_a_minute(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenants.create_tenant(session, "gamma")
        token = tenants.issue_token(session, "gamma")
    ticks = [0.0]
    stamps = iter(dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.UTC) for minute in (0, 2, 4))
    usage = TokenUsage(store.sessions, clock=lambda: next(stamps), monotonic=lambda: ticks[0])
    digest = tenants.token_digest(token)

    async def use(at: float) -> None:
        ticks[0] = at
        usage.seen(digest)
        await usage.drain()

    def last_used() -> dt.datetime | None:
        with store.sessions() as session:
            return session.scalar(select(ApiToken.last_used_at).where(ApiToken.digest == digest))

    asyncio.run(use(0.0))
    assert last_used() == dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.UTC)
    asyncio.run(use(59.0))  # within the minute: no write at all
    assert last_used() == dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.UTC)
    asyncio.run(use(61.0))
    assert last_used() == dt.datetime(2026, 1, 1, 0, 2, tzinfo=dt.UTC)


def test_certificates_list_download_key_only_on_explicit_post_and_revoke(
    browser: Browser, store: Store
) -> None:
    soon = certificate_of(store, add_order(store, "alpha", ["soon.alpha.test"], "issued", days=10))
    later_order = add_order(store, "alpha", ["later.alpha.test", "*.later.alpha.test"], "issued")
    later = certificate_of(store, later_order)
    add_order(store, "alpha", ["bad.alpha.test"], "failure", reason="caa: CAA forbids issuance")
    add_order(store, "beta", ["beta-only.test"], "issued")
    browser.sign_in("ann@alpha.test")
    page = browser.get("/console/certificates").text
    assert page.index("soon.alpha.test") < page.index("later.alpha.test")  # soonest first
    assert "beta-only.test" not in page and "bad.alpha.test" not in page

    chain = browser.get(f"/console/certificates/{later}/fullchain.pem")
    assert chain.status_code == 200
    assert "attachment" in chain.headers["content-disposition"]
    leaf = x509.load_pem_x509_certificate(chain.content)
    with store.sessions() as session:
        not_after = session.get(Certificate, later).not_after  # type: ignore[union-attr]
    assert leaf.not_valid_after_utc == not_after
    assert not_after.strftime("%Y-%m-%d %H:%M UTC") in page

    # The key: never in a page, not on a GET, only on the POST with the form token.
    detail = browser.get(f"/console/certificates/{later}").text
    assert "PRIVATE KEY" not in detail and "later.alpha.test" in detail
    assert browser.get(f"/console/certificates/{later}/privkey.pem").status_code == 405
    key = browser.submit(
        f"/console/certificates/{later}", f"/console/certificates/{later}/privkey.pem", {}
    )
    assert key.status_code == 200 and "attachment" in key.headers["content-disposition"]
    assert private_key_from_pem(key.content).public_key() == leaf.public_key()

    dashboard = browser.get("/console/").text
    assert "soon.alpha.test" in dashboard and "caa: CAA forbids issuance" in dashboard
    order = browser.get(f"/console/orders/{later_order}").text
    assert "Certificate issued" in order and f"/console/certificates/{later}" in order

    # Revoking asks for a confirmation, then records the request for the worker.
    path = f"/console/certificates/{soon}"
    unconfirmed = browser.submit(path, f"{path}/revoke", {"reason": "keyCompromise"})
    assert unconfirmed.status_code == 400
    done = browser.submit(path, f"{path}/revoke", {"reason": "keyCompromise", "confirm": "yes"})
    assert done.headers["location"] == f"{path}?done=revoke_requested"
    with store.sessions() as session:
        record = session.get(Certificate, soon)
        assert record is not None and record.revoke_reason == 1
        assert record.revoke_requested_at is not None
    assert "the CA has not confirmed it yet" in browser.get(path).text


def test_domains_add_names_show_the_exact_cname_and_check_now(
    browser: Browser, store: Store
) -> None:
    browser.sign_in("ann@alpha.test")
    response = browser.submit(
        "/console/domains", "/console/domains", {"names": "www.customer.test\n*.customer.test"}
    )
    assert response.headers["location"] == "/console/domains?done=domains_added"
    with store.sessions() as session:
        rows = {d.base_name: d for d in session.scalars(select(Delegation))}
    assert set(rows) == {"www.customer.test", "customer.test"}
    page = browser.get("/console/domains").text
    for base, row in rows.items():
        assert f"_acme-challenge.{base}. CNAME {row.label}.acme.svc.test." in page
    # The tenant-bound nginx block with this tenant's handle.
    with store.sessions() as session:
        handle = tenants.find_tenant(session, "alpha").http_handle
    assert f"/v1/dv/{handle}/$host/$1;" in page

    bad = browser.submit("/console/domains", "/console/domains", {"names": "exa mple..com"})
    assert bad.status_code == 400

    # "Check now" runs the real check (no resolver answers in this test: not in place).
    check = browser.submit(
        "/console/domains",
        f"/console/domains/{rows['customer.test'].id}/check",
        {},
        headers={"Accept": "application/json"},
    )
    assert check.status_code == 200
    assert check.json()["valid"] is False and check.json()["detail"]
    page = browser.get("/console/domains").text
    assert "Not in place" in page
    assert "customer.test" in browser.get("/console/").text  # a broken delegation


def test_operator_pages(browser: Browser, store: Store) -> None:
    add_order(store, "alpha", ["ok.alpha.test"], "issued", issuer="letsencrypt")
    add_order(
        store, "beta", ["x.beta.test"], "failure", issuer="google", reason="rejectedIdentifier: no"
    )
    browser.sign_in("olga@ops.test")
    assert browser.get("/console/").headers["location"] == "/console/operator/tenants"
    assert browser.get("/console/tokens").status_code == 404  # tenant pages are not theirs
    created = browser.submit(
        "/console/operator/tenants", "/console/operator/tenants", {"name": "gamma"}
    )
    assert created.headers["location"] == "/console/operator/tenants?done=tenant_created"
    taken = browser.submit(
        "/console/operator/tenants", "/console/operator/tenants", {"name": "gamma"}
    )
    assert taken.status_code == 409
    listing = browser.get("/console/operator/tenants").text
    gamma = re.search(r'/console/operator/tenants/(\d+)">gamma<', listing).group(1)  # type: ignore[union-attr]
    invited = browser.submit(
        f"/console/operator/tenants/{gamma}",
        f"/console/operator/tenants/{gamma}/invite",
        {"email": "first@gamma.test"},
    )
    assert invited.status_code == 201
    link = re.search(r'id="invite-link">([^<]+)<', invited.text).group(1)  # type: ignore[union-attr]
    path = link.split("127.0.0.1:8080", 1)[1]
    with TestClient(browser.client.app, follow_redirects=False) as client:
        assert "first@gamma.test" in client.get(path).text

    orders = browser.get("/console/operator/orders").text
    assert "ok.alpha.test" in orders and "x.beta.test" in orders
    assert "x.beta.test" in browser.get("/console/operator/orders?state=failure").text
    assert "ok.alpha.test" not in browser.get("/console/operator/orders?state=failure").text
    assert "ok.alpha.test" in browser.get("/console/operator/certificates").text
    health = browser.get("/console/operator/issuers").text
    assert "rejectedIdentifier: no" in health
    assert "zerossl" in health


def test_tenant_users_invite_and_disable(browser: Browser) -> None:
    browser.sign_in("ann@alpha.test")
    invited = browser.submit("/console/users", "/console/users", {"email": "carl@alpha.test"})
    assert invited.status_code == 201 and "/console/invite/" in invited.text
    taken = browser.submit("/console/users", "/console/users", {"email": "bob@beta.test"})
    assert taken.status_code == 409
    page = browser.get("/console/users").text
    assert "carl@alpha.test" in page and "bob@beta.test" not in page
    carl = re.findall(r"/console/users/(\d+)/disable", page)
    assert len(carl) == 1  # not oneself
    done = browser.submit("/console/users", f"/console/users/{carl[0]}/disable", {})
    assert done.headers["location"] == "/console/users?done=user_disabled"


def test_webhooks_add_test_rotate_log_delete_and_scoped(
    browser: Browser, other_browser: Browser, store: Store
) -> None:
    browser.sign_in("ann@alpha.test")
    added = browser.submit(
        "/console/webhooks",
        "/console/webhooks",
        {
            "url": "https://hooks.alpha.test/certok",
            "description": "ops",
            "event_certificate.issued": "on",
        },
    )
    assert added.status_code == 201
    secret = re.search(r'id="new-secret">(whsec_[^<]+)<', added.text).group(1)  # type: ignore[union-attr]
    listing = browser.get("/console/webhooks").text
    assert secret not in listing and "https://hooks.alpha.test/certok" in listing
    hook = re.search(r"/console/webhooks/(wh_[0-9a-f]+)", listing).group(1)  # type: ignore[union-attr]
    path = f"/console/webhooks/{hook}"
    assert "certificate.issued" in browser.get(path).text

    tested = browser.submit(path, f"{path}/test", {})
    assert tested.headers["location"] == f"{path}?done=webhook_test"
    log = browser.get(path).text
    assert "webhook.test" in log and "Pending" in log

    rotated = browser.submit(path, f"{path}/rotate", {})
    new_secret = re.search(r'id="new-secret">(whsec_[^<]+)<', rotated.text).group(1)  # type: ignore[union-attr]
    assert new_secret != secret

    # Another tenant: the webhook does not exist for it.
    other_browser.sign_in("bob@beta.test")
    assert other_browser.get(path).status_code == 404
    for action in ("test", "rotate", "delete"):
        response = other_browser.submit("/console/webhooks", f"{path}/{action}", {"confirm": "yes"})
        assert response.status_code == 404, action
    assert "https://hooks.alpha.test" not in other_browser.get("/console/webhooks").text

    deleted = browser.submit(path, f"{path}/delete", {"confirm": "yes"})
    assert deleted.headers["location"] == "/console/webhooks?done=webhook_deleted"
    assert browser.get(path).status_code == 404


def test_hosts_and_agents(browser: Browser, other_browser: Browser, store: Store) -> None:
    live = add_host(store, "alpha", "web01")
    silent = add_host(store, "alpha", "web02", seen_days_ago=3)
    add_host(store, "beta", "beta01")
    browser.sign_in("ann@alpha.test")
    listing = browser.get("/console/hosts").text
    assert "web01" in listing and "web02" in listing and "beta01" not in listing
    assert "Silent for 2 days" in listing
    detail = browser.get(f"/console/hosts/{live}").text
    assert "/etc/nginx/ssl/web01.pem" in detail and "nginx reloaded with web01.pem" in detail
    dashboard = browser.get("/console/").text
    assert "web02" in dashboard and "web01" not in dashboard
    other_browser.sign_in("bob@beta.test")
    assert other_browser.get(f"/console/hosts/{silent}").status_code == 404
    assert "web01" not in other_browser.get("/console/hosts").text


def test_console_actions_land_in_the_audit_log(browser: Browser, other_browser: Browser) -> None:
    browser.sign_in("ann@alpha.test")
    created = browser.submit("/console/tokens", "/console/tokens", {"name": "audited"})
    token = re.search(r'id="new-token">([0-9a-f]{32})<', created.text).group(1)  # type: ignore[union-attr]
    token_id = re.search(r"/console/tokens/(\d+)/revoke", created.text).group(1)  # type: ignore[union-attr]
    browser.submit("/console/tokens", f"/console/tokens/{token_id}/revoke", {})
    log = browser.get("/console/audit").text
    assert "token.create" in log and "token.revoke" in log
    assert "console:ann@alpha.test" in log and "console from testclient" in log
    assert token not in log and token[:6] in log  # never the token itself
    other_browser.sign_in("bob@beta.test")
    assert "token.create" not in other_browser.get("/console/audit").text
    other_browser.submit("/console/", "/console/sign-out", {})
    other_browser.sign_in("olga@ops.test")
    assert "console:ann@alpha.test" in other_browser.get("/console/operator/audit").text
