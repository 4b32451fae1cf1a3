"""The console's security properties against the real app and database: cookies, sessions,
CSRF, redirects, sign-in limits, tenant scoping, second factor."""

from __future__ import annotations

import datetime as dt
import re

import pyotp
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from certok.console.web import safe_next
from certok.db.engine import transaction
from certok.db.models import ApiToken, ConsoleSession, Delegation
from certok.persistence import Store
from certok.tenants import service as tenants
from certok.tenants import users
from tests.console.conftest import SIGN_IN_LIMIT
from tests.console.harness import PASSWORD, Browser, add_order, certificate_of, csrf_of


def set_cookies(response) -> list[str]:  # type: ignore[no-untyped-def]
    return response.headers.get_list("set-cookie")


def session_cookie(response) -> str:  # type: ignore[no-untyped-def]
    [cookie] = [c for c in set_cookies(response) if c.startswith("certok_console=")]
    return cookie


def test_session_cookie_attributes_over_http_and_https(console_app, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    cookie = session_cookie(browser.sign_in("ann@alpha.test"))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/console"} <= attributes
    assert "secure" not in attributes
    with TestClient(console_app, base_url="https://testserver", follow_redirects=False) as client:
        cookie = session_cookie(Browser(client).sign_in("ann@alpha.test"))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "secure", "path=/console"} <= attributes


def test_every_sign_in_gets_a_new_session_id(browser: Browser, store: Store) -> None:
    # An attacker plants a session id of its choosing: it is not adopted.
    browser.client.cookies.set("certok_console", "planted-by-someone-else", path="/console")
    first = session_cookie(browser.sign_in("ann@alpha.test"))
    assert "planted-by-someone-else" not in first
    old_secret = first.split(";")[0].split("=", 1)[1]
    second = session_cookie(browser.sign_in("ann@alpha.test"))
    assert second.split(";")[0].split("=", 1)[1] != old_secret
    # The previous session of this browser is gone from the database, not just replaced.
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 1
    browser.client.cookies.clear()
    browser.client.cookies.set("certok_console", old_secret, path="/console")
    assert browser.get("/console/").status_code == 303


@pytest.mark.parametrize(
    "target",
    [
        "//evil.test/console/",
        "https://evil.test/console/",
        "/\\evil.test",
        "/console/\\..\\",
        "javascript:alert(1)",
        "/console/../v1/cert/dv",
        "\t//evil.test",
        "/consolex",
        "",
    ],
)
def test_next_never_leaves_the_console(target: str) -> None:
    assert safe_next(target) == "/console/"


def test_sign_in_redirects_only_inside_the_console(browser: Browser) -> None:
    response = browser.submit(
        "/console/sign-in",
        "/console/sign-in",
        {"email": "ann@alpha.test", "password": PASSWORD, "next": "//evil.test/x"},
    )
    assert response.headers["location"] == "/console/"
    browser.submit("/console/", "/console/sign-out", {})
    response = browser.submit(
        "/console/sign-in",
        "/console/sign-in",
        {"email": "ann@alpha.test", "password": PASSWORD, "next": "/console/orders?state=issued"},
    )
    assert response.headers["location"] == "/console/orders?state=issued"


def test_posts_without_the_csrf_token_are_refused(browser: Browser, store: Store) -> None:
    # Sign-in itself needs the token (login CSRF).
    response = browser.client.post(
        "/console/sign-in", data={"email": "ann@alpha.test", "password": PASSWORD}
    )
    assert response.status_code == 403
    browser.sign_in("ann@alpha.test")
    token = csrf_of(browser.get("/console/tokens").text)
    for data, headers in [
        ({"name": "x"}, {}),
        ({"name": "x", "csrf": "0" * 64}, {}),
        ({"name": "x", "csrf": token}, {"Origin": "https://evil.test"}),
        ({"name": "x", "csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
    ]:
        response = browser.client.post("/console/tokens", data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
        assert "expired or came from another site" in response.text
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == 0
    # The same form with its token works.
    response = browser.client.post("/console/tokens", data={"name": "x", "csrf": token})
    assert response.status_code == 201


def test_a_form_token_belongs_to_its_session(browser: Browser, other_browser: Browser) -> None:
    browser.sign_in("ann@alpha.test")
    other_browser.sign_in("ann@alpha.test")
    theirs = csrf_of(other_browser.get("/console/tokens").text)
    assert browser.client.post("/console/tokens", data={"csrf": theirs}).status_code == 403


def test_another_tenants_objects_answer_404(
    browser: Browser, other_browser: Browser, store: Store
) -> None:
    order_id = add_order(store, "alpha", ["a.alpha.test"], "issued")
    cert_id = certificate_of(store, order_id)
    with transaction(store.sessions) as session:
        alpha = tenants.find_tenant(session, "alpha").id
        token = tenants.issue_token(session, "alpha")
        token_id = session.scalar(select(ApiToken.id).where(ApiToken.tenant_id == alpha))
        session.add(
            Delegation(tenant_id=alpha, base_name="alpha.test", label="ab" * 8, created_at=_now())
        )
        session.flush()
        delegation_id = session.scalar(select(Delegation.id))
        ann = users.user_by_email(session, "ann@alpha.test").id
    other_browser.sign_in("bob@beta.test")
    unknown = other_browser.get("/console/orders/999999")
    assert unknown.status_code == 404
    for path in [
        f"/console/orders/{order_id}",
        f"/console/certificates/{cert_id}",
        f"/console/certificates/{cert_id}/fullchain.pem",
        "/console/operator/tenants",
        f"/console/operator/orders/{order_id}",
    ]:
        response = other_browser.get(path)
        assert response.status_code == 404, path
        # exactly like something that does not exist
        assert without_address(response.text) == without_address(unknown.text)
    for action in [
        f"/console/tokens/{token_id}/revoke",
        f"/console/domains/{delegation_id}/check",
        f"/console/certificates/{cert_id}/privkey.pem",
        f"/console/certificates/{cert_id}/revoke",
        f"/console/users/{ann}/disable",
    ]:
        response = other_browser.submit("/console/tokens", action, {})
        assert response.status_code == 404, action
        assert "a.alpha.test" not in response.text and "BEGIN" not in response.text
    # Nothing of alpha's changed.
    with store.sessions() as session:
        assert tenants.authenticate(session, token).name == "alpha"
        assert not users.user_by_email(session, "ann@alpha.test").disabled
    # And alpha's own user sees it all.
    browser.sign_in("ann@alpha.test")
    assert browser.get(f"/console/orders/{order_id}").status_code == 200


def without_address(html: str) -> str:
    """The page's main part (the header's links mark the section of the address)."""
    return html.split("<main>", 1)[1]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_sessions_end_on_sign_out_password_change_and_disable(
    browser: Browser, other_browser: Browser, store: Store, console_app
) -> None:  # type: ignore[no-untyped-def]
    browser.sign_in("ann@alpha.test")
    secret = browser.client.cookies.get("certok_console")
    browser.submit("/console/", "/console/sign-out", {})
    browser.client.cookies.clear()
    browser.client.cookies.set("certok_console", secret, path="/console")
    assert browser.get("/console/").status_code == 303

    # A password change signs out the user's other browsers, and keeps this one signed in.
    browser.sign_in("ann@alpha.test")
    other_browser.sign_in("ann@alpha.test")
    new = "another long passphrase"
    response = browser.submit(
        "/console/account",
        "/console/account/password",
        {"current": PASSWORD, "new": new, "confirm": new},
    )
    assert response.headers["location"] == "/console/account?done=password_changed"
    assert browser.get("/console/account").status_code == 200
    assert other_browser.get("/console/").status_code == 303
    assert other_browser.sign_in("ann@alpha.test").status_code == 400
    assert other_browser.sign_in("ann@alpha.test", new).status_code == 303

    # The operator disables the tenant: its users are out at once, and cannot sign in.
    with TestClient(console_app, follow_redirects=False) as client:
        operator = Browser(client)
        operator.sign_in("olga@ops.test")
        with store.sessions() as session:
            alpha = tenants.find_tenant(session, "alpha").id
        response = operator.submit(
            f"/console/operator/tenants/{alpha}", f"/console/operator/tenants/{alpha}/disable", {}
        )
        assert response.status_code == 303
    assert browser.get("/console/").status_code == 303
    assert other_browser.get("/console/").status_code == 303
    assert browser.sign_in("ann@alpha.test", new).status_code == 400
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 1  # olga's


def test_a_disabled_user_is_signed_out(browser: Browser, store: Store, console_app) -> None:  # type: ignore[no-untyped-def]
    browser.sign_in("bob@beta.test")
    with transaction(store.sessions) as session:
        users.set_user_disabled(session, users.user_by_email(session, "bob@beta.test").id, True)
    assert browser.get("/console/").status_code == 303
    assert browser.sign_in("bob@beta.test").status_code == 400


def test_sign_in_is_limited_per_account(browser: Browser, other_browser: Browser) -> None:
    for _ in range(SIGN_IN_LIMIT):
        assert browser.sign_in("ann@alpha.test", "wrong password!").status_code == 400
    # Even the right password waits now, and the page says how long.
    limited = browser.sign_in("ann@alpha.test")
    assert limited.status_code == 429 and re.search(r"Wait \d+ seconds", limited.text)
    # Another account from the same client was counted on the address bucket too.
    assert browser.sign_in("bob@beta.test").status_code == 429


def test_sign_in_is_limited_per_client_address(browser: Browser) -> None:
    for index in range(SIGN_IN_LIMIT):
        assert browser.sign_in(f"nobody{index}@x.test").status_code == 400
    assert browser.sign_in("bob@beta.test").status_code == 429


def test_totp_second_factor_and_recovery_codes(browser: Browser) -> None:
    browser.sign_in("ann@alpha.test")
    page = browser.submit("/console/account", "/console/account/totp", {})
    secret = re.search(r'id="totp-secret">([A-Z2-7]{32})<', page.text).group(1)  # type: ignore[union-attr]
    wrong = browser.submit(
        "/console/account", "/console/account/totp/confirm", {"secret": secret, "code": "000000"}
    )
    assert wrong.status_code == 400
    code = pyotp.TOTP(secret).now()
    done = browser.submit(
        "/console/account", "/console/account/totp/confirm", {"secret": secret, "code": code}
    )
    assert done.status_code == 200
    recovery = re.findall(r"\b[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}\b", done.text)
    assert len(recovery) == 10
    browser.submit("/console/", "/console/sign-out", {})

    # The password alone opens nothing: a pending session sees only the second-factor page.
    response = browser.sign_in("ann@alpha.test")
    assert response.headers["location"].startswith("/console/sign-in/second-factor")
    assert browser.get("/console/tokens").status_code == 303
    # The code used to turn TOTP on cannot be replayed.
    replay = browser.submit(
        "/console/sign-in/second-factor", "/console/sign-in/second-factor", {"code": code}
    )
    assert replay.status_code == 400
    ok = browser.submit(
        "/console/sign-in/second-factor", "/console/sign-in/second-factor", {"code": recovery[0]}
    )
    assert ok.status_code == 303
    assert browser.get("/console/tokens").status_code == 200
    # A recovery code works once.
    browser.submit("/console/", "/console/sign-out", {})
    browser.sign_in("ann@alpha.test")
    again = browser.submit(
        "/console/sign-in/second-factor", "/console/sign-in/second-factor", {"code": recovery[0]}
    )
    assert again.status_code == 400


def test_invite_link_sets_the_password_once(browser: Browser, store: Store) -> None:
    with transaction(store.sessions) as session:
        alpha = tenants.find_tenant(session, "alpha").id
        _, secret = users.create_user(session, "new@alpha.test", tenant_id=alpha, invite_hours=1)
    path = f"/console/invite/{secret}"
    assert "new@alpha.test" in browser.get(path).text
    short = browser.submit(path, path, {"password": "short", "confirm": "short"})
    assert short.status_code == 400
    done = browser.submit(path, path, {"password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 303 and done.headers["location"] == "/console/"
    assert browser.get("/console/").status_code == 200
    assert browser.get(path).status_code == 404
    assert browser.get("/console/invite/not-a-real-secret").status_code == 404


def test_security_headers(browser: Browser) -> None:
    response = browser.get("/console/sign-in")
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"


def test_an_expired_session_opens_nothing_and_is_swept(
    browser: Browser, other_browser: Browser, store: Store
) -> None:
    browser.sign_in("ann@alpha.test")
    with transaction(store.sessions) as session:
        for row in session.scalars(select(ConsoleSession)):
            row.expires_at = _now() - dt.timedelta(seconds=1)
    assert browser.get("/console/").status_code == 303
    other_browser.sign_in("bob@beta.test")  # any sign-in sweeps expired sessions
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 1
