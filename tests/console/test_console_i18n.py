"""Every console page in English and in Simplified Chinese, with no message of the other
language (nor a bare message id) on it; catalogs with the same ids and placeholders."""

from __future__ import annotations

import re
import string

import pytest
from starlette.testclient import TestClient

from certok.console.catalog_en import MESSAGES as EN
from certok.console.catalog_zh_cn import MESSAGES as ZH
from certok.console.i18n import negotiate
from certok.db.engine import transaction
from certok.persistence import Store
from certok.tenants import service as tenants
from certok.tenants import users
from tests.console.harness import Browser, add_host, add_order, certificate_of


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalogs_have_the_same_ids_and_placeholders() -> None:
    assert set(EN) == set(ZH)
    for key in EN:
        assert placeholders(EN[key]) == placeholders(ZH[key]), key


@pytest.mark.parametrize(
    ("cookie", "header", "expected"),
    [
        (None, None, "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, "zh-Hans-CN", "zh-CN"),
        (None, "en-US,en;q=0.9,zh;q=0.8", "en"),
        (None, "fr-FR, zh;q=0.5", "zh-CN"),
        (None, "de", "en"),
        ("en", "zh-CN", "en"),
        ("zh-CN", "en", "zh-CN"),
        ("xx", "zh", "zh-CN"),
        (None, "en;q=0.1, zh;q=0.9", "zh-CN"),
    ],
)
def test_language_negotiation(cookie: str | None, header: str | None, expected: str) -> None:
    assert negotiate(cookie, header) == expected


def fragments(text: str) -> list[str]:
    """The literal parts of a message worth looking for (around its placeholders)."""
    parts = [literal for literal, *_ in string.Formatter().parse(text)]
    return [p.strip() for p in parts if len(p.strip()) >= 4]


# Messages whose text is the same in both languages say nothing about a leak.
EN_ONLY = {key: fragments(EN[key]) for key in EN if EN[key] != ZH[key]}
ZH_ONLY = {key: fragments(ZH[key]) for key in ZH if EN[key] != ZH[key]}
ID_PATTERN = re.compile(
    r"\b(?:" + "|".join(sorted({k.split(".")[0] for k in EN})) + r")\.[a-z_]+\b"
)


def visible_text(html: str) -> str:
    """What a reader sees (and attribute texts: placeholders, confirmations)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    attributes = " ".join(re.findall(r'(?:placeholder|data-confirm|title)="([^"]*)"', html))
    text = re.sub(r"<[^>]+>", " ", html)
    return text + " " + attributes


def assert_one_language(path: str, html: str, lang: str) -> None:
    assert f'<html lang="{lang}">' in html, path
    text = visible_text(html).replace("&#39;", "'").replace("&amp;", "&")
    # The language switch names the other language in its own script, by design.
    text = text.replace("English", "").replace("中文", "")
    other = ZH_ONLY if lang == "en" else EN_ONLY
    for key, parts in other.items():
        for part in parts:
            assert part not in text, f"{path} ({lang}) shows {key!r} of the other language"
    leaked = [m for m in ID_PATTERN.findall(text) if m in EN]
    assert not leaked, f"{path} ({lang}) shows message ids {leaked}"


def tenant_pages(store: Store) -> list[str]:
    issued = add_order(store, "alpha", ["i18n.alpha.test"], "issued")
    failed = add_order(store, "alpha", ["f.alpha.test"], "failure", reason="urn:x:caa")
    pending = add_order(store, "alpha", ["p.alpha.test"], "pending")
    cert = certificate_of(store, issued)
    host = add_host(store, "alpha", "web01", seen_days_ago=3)
    return [
        "/console/hosts",
        f"/console/hosts/{host}",
        "/console/",
        f"/console/certificates/{cert}",
        "/console/certificates?show=all",
        "/console/domains",
        "/console/certificates",
        "/console/orders",
        "/console/orders?state=failure",
        f"/console/orders/{issued}",
        f"/console/orders/{failed}",
        f"/console/orders/{pending}",
        "/console/tokens",
        "/console/webhooks",
        "/console/audit",
        "/console/users",
        "/console/account",
        "/console/orders/999999",  # the not-found page
    ]


OPERATOR_PAGES = [
    "/console/operator/tenants",
    "/console/operator/orders",
    "/console/operator/certificates",
    "/console/operator/issuers",
    "/console/users",
    "/console/hosts",
    "/console/operator/audit",
]


@pytest.mark.parametrize(("lang", "header"), [("en", "en-US,en;q=0.9"), ("zh-CN", "zh-CN,zh")])
def test_every_page_in_one_language(console_app, store: Store, lang: str, header: str) -> None:  # type: ignore[no-untyped-def]
    with transaction(store.sessions) as session:
        tenants.issue_token(session, "alpha")
        alpha = tenants.find_tenant(session, "alpha").id
        _, secret = users.create_user(session, "inv@alpha.test", tenant_id=alpha, invite_hours=1)
    paths = tenant_pages(store)
    headers = {"Accept-Language": header}
    with TestClient(console_app, follow_redirects=False, headers=headers) as client:
        browser = Browser(client)
        for path in ["/console/sign-in", f"/console/invite/{secret}", "/console/nowhere"]:
            assert_one_language(path, browser.get(path).text, lang)
        browser.sign_in("ann@alpha.test")
        for path in paths:
            response = browser.get(path)
            assert response.status_code in (200, 404), path
            assert_one_language(path, response.text, lang)
        # Pages shown after an action: a new token, a new invite, a form error, a notice.
        created = browser.submit("/console/tokens", "/console/tokens", {"name": "n"})
        assert_one_language("new token", created.text, lang)
        invited = browser.submit("/console/users", "/console/users", {"email": "x@alpha.test"})
        assert_one_language("invite", invited.text, lang)
        wrong = browser.submit("/console/domains", "/console/domains", {"names": ""})
        assert_one_language("form error", wrong.text, lang)
        hook = browser.submit(
            "/console/webhooks", "/console/webhooks", {"url": "https://hooks.alpha.test/x"}
        )
        assert_one_language("new webhook", hook.text, lang)
        hook_id = re.search(r"/console/webhooks/(wh_[0-9a-f]+)", hook.text).group(1)  # type: ignore[union-attr]
        browser.submit("/console/webhooks", f"/console/webhooks/{hook_id}/test", {})
        assert_one_language("webhook", browser.get(f"/console/webhooks/{hook_id}").text, lang)
        rotated = browser.submit(
            f"/console/webhooks/{hook_id}", f"/console/webhooks/{hook_id}/rotate", {}
        )
        assert_one_language("rotated", rotated.text, lang)
        totp = browser.submit("/console/account", "/console/account/totp", {})
        assert_one_language("totp setup", totp.text, lang)
        notice = browser.get("/console/tokens?done=token_revoked")
        assert_one_language("notice", notice.text, lang)
        browser.submit("/console/", "/console/sign-out", {})
        browser.sign_in("olga@ops.test")
        tenant_page = f"/console/operator/tenants/{alpha}"
        operator_pages = [*OPERATOR_PAGES, tenant_page, "/console/operator/orders/1"]
        for path in [*operator_pages, "/console/operator/certificates/1"]:
            response = browser.get(path)
            assert response.status_code == 200, path
            assert_one_language(path, response.text, lang)


def test_the_language_switch_beats_accept_language(browser: Browser) -> None:
    page = browser.get("/console/sign-in", headers={"Accept-Language": "en"})
    assert "Sign in to certok" in page.text
    switched = browser.submit(
        "/console/sign-in", "/console/language", {"lang": "zh-CN", "next": "/console/sign-in"}
    )
    assert switched.headers["location"] == "/console/sign-in"
    page = browser.get("/console/sign-in", headers={"Accept-Language": "en"})
    assert "登录 certok" in page.text and page.headers["content-language"] == "zh-CN"
