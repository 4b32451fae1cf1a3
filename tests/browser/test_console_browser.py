"""The console in a real headless Chromium against a real `certok serve` on the rig."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.flow import User, delegate
from tests.rig import Rig
from tests.rig.certok_server import CertokServer

PASSWORD = "a long browser passphrase"
WAIT_SECONDS = 30


def invite(server: CertokServer, email: str, tenant: str | None = None) -> str:
    who = ["--tenant", tenant] if tenant else ["--operator"]
    out = server.cli("user", "create", "--email", email, *who)
    return out.split("invite link:")[1].split()[0]


def wait(driver: Any, condition: Callable[[Any], Any], seconds: float = WAIT_SECONDS) -> Any:
    try:
        # An element read while the browser loads the next page goes stale: ask again.
        return WebDriverWait(
            driver,
            seconds,
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        ).until(condition)
    except TimeoutException:
        page = driver.page_source
        raise AssertionError(f"waited {seconds} s at {driver.current_url}:\n{page}") from None


def accept_invite(driver: Any, link: str) -> None:
    driver.get(link)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.NAME, "confirm").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, lambda d: d.current_url.endswith("/console/"))


def sign_in(driver: Any, server: CertokServer, email: str) -> None:
    driver.get(server.base_url + "/console/sign-in")
    driver.find_element(By.NAME, "email").send_keys(email)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, lambda d: d.current_url.endswith("/console/"))


def dv(server: CertokServer, token: str, domains: str) -> httpx.Response:
    return httpx.get(
        server.base_url + "/v1/cert/dv",
        params={"domains": domains},
        headers={"httpsok-token": token},
        timeout=30,
        trust_env=False,
    )


def test_token_shown_once_used_then_revoked_and_cookie_attributes(
    certok_server: Callable[..., CertokServer], browsers: Callable[..., Any]
) -> None:
    server = certok_server(token_cache_seconds=0)
    server.create_tenant("acme")
    driver = browsers()
    accept_invite(driver, invite(server, "ann@acme.test", "acme"))
    cookie = driver.get_cookie("certok_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False and cookie["path"] == "/console"  # plain HTTP here

    driver.find_element(By.LINK_TEXT, "API tokens").click()
    driver.find_element(By.NAME, "name").send_keys("ci deploy")
    driver.find_element(By.ID, "create-token").click()
    token = wait(driver, lambda d: d.find_element(By.ID, "new-token")).text.strip()
    assert len(token) == 32
    # The copy button puts it on the clipboard (our own script); the page says it is shown once.
    assert driver.find_element(By.CSS_SELECTOR, "button.copy").is_displayed()
    driver.get(server.base_url + "/console/tokens")
    assert token not in driver.page_source and "ci deploy" in driver.page_source

    answer = dv(server, token, "www.customer.test")
    assert answer.status_code == 200 and answer.json()["code"] == 0

    row = driver.find_element(By.XPATH, "//tr[td[normalize-space()='ci deploy']]")
    row.find_element(By.CSS_SELECTOR, "button.danger").click()
    driver.switch_to.alert.accept()  # the confirmation our script asks for
    wait(driver, lambda d: "The token was revoked." in d.page_source)
    refused = dv(server, token, "www.customer.test")
    assert refused.status_code == 401 and refused.json()["code"] != 0

    # A POST without the form token is refused (a form built by hand in the page).
    driver.execute_script(
        "var f = document.createElement('form'); f.method = 'post';"
        "f.action = '/console/tokens'; document.body.appendChild(f); f.submit();"
    )
    wait(driver, lambda d: "came from another site" in d.page_source)


def test_delegate_a_name_on_the_rig_and_watch_it_turn_valid(
    rig: Rig,
    certok_server: Callable[..., CertokServer],
    customer_records: Callable[[list[str]], None],
    browsers: Callable[..., Any],
) -> None:
    server = certok_server()
    server.create_tenant("acme")
    driver = browsers()
    accept_invite(driver, invite(server, "ann@acme.test", "acme"))
    driver.find_element(By.LINK_TEXT, "Domains").click()
    driver.find_element(By.NAME, "names").send_keys("www.customer.test")
    driver.find_element(By.XPATH, "//button[normalize-space()='Add names']").click()
    record = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "td.record code")).text
    name, cname, target = record.split()
    assert name == "_acme-challenge.www.customer.test." and cname == "CNAME"
    assert target.endswith(f".{rig.certok_zone}.")

    def check_now() -> str:
        row = driver.find_element(By.CSS_SELECTOR, "table.delegations tbody tr")
        before = row.get_attribute("data-checks")
        row.find_element(By.XPATH, ".//button[normalize-space()='Check now']").click()
        # Our script updates the row in place (and counts) when the check answers.
        wait(driver, lambda d: row.get_attribute("data-checks") != before)
        return driver.find_element(By.CSS_SELECTOR, "td.status .badge").text

    assert check_now() == "Not in place"
    # The owner adds exactly the record the page shows.
    delegate(
        rig, customer_records, {"items": [{"name": "_acme-challenge.www", "value": target[:-1]}]}
    )
    deadline = time.monotonic() + WAIT_SECONDS
    status = check_now()
    while status != "In place" and time.monotonic() < deadline:
        time.sleep(0.5)  # the resolver may still hold the earlier NXDOMAIN
        status = check_now()
    assert status == "In place"
    driver.refresh()
    assert driver.find_element(By.CSS_SELECTOR, "td.status .badge").text == "In place"


def test_issued_certificate_listed_downloaded_and_other_tenant_kept_out(
    rig: Rig,
    certok_server: Callable[..., CertokServer],
    customer_records: Callable[[list[str]], None],
    browsers: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = certok_server()
    user = User(server, server.create_tenant("acme"))
    server.create_tenant("rival")
    first = user.dv("www.customer.test")
    delegate(rig, customer_records, first)
    data = user.apply_until_done(user.dv("www.customer.test")["code"], issuer="letsencrypt")

    driver = browsers()
    accept_invite(driver, invite(server, "ann@acme.test", "acme"))
    driver.find_element(By.LINK_TEXT, "Certificates").click()
    cell = driver.find_element(By.CSS_SELECTOR, "td.not-after").text
    assert cell == data["notAfter"][:16] + " UTC"  # "2026-03-05 10:00:00" -> "...10:00 UTC"
    driver.find_element(By.LINK_TEXT, "www.customer.test").click()
    certificate_url = driver.current_url
    assert driver.find_element(By.CSS_SELECTOR, "dd.not-after").text == cell
    driver.find_element(By.ID, "download-chain").click()
    downloads: Path = driver.downloads
    pems = wait(driver, lambda d: [p for p in downloads.glob("*.pem")])
    chain = x509.load_pem_x509_certificates(pems[0].read_bytes())
    leaf = chain[0]
    assert pems[0].read_text() == data["certificate"]
    leaf.verify_directly_issued_by(chain[1])
    assert leaf.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S") == data["notAfter"]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["www.customer.test"]

    # Another tenant's user can neither open nor submit acme's pages.
    rival = browsers()
    accept_invite(rival, invite(server, "rita@rival.test", "rival"))
    rival.get(certificate_url)
    assert (
        "There is nothing here" in rival.page_source
        and "www.customer.test" not in rival.page_source
    )
    certificate_id = certificate_url.rsplit("/", 1)[1]
    rival.get(server.base_url + "/console/tokens")
    rival.execute_script(
        "var f = document.querySelector('form[action=\"/console/tokens\"]');"
        f"f.action = '/console/certificates/{certificate_id}/privkey.pem'; f.submit();"
    )
    wait(rival, lambda d: "There is nothing here" in d.page_source)
    assert "PRIVATE KEY" not in rival.page_source


def test_a_page_in_simplified_chinese(
    certok_server: Callable[..., CertokServer], browsers: Callable[..., Any]
) -> None:
    server = certok_server()
    server.create_tenant("acme")
    link = invite(server, "li@acme.test", "acme")
    driver = browsers(lang="zh-CN")
    driver.get(link)
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN"
    assert driver.find_element(By.TAG_NAME, "h1").text == "设置密码"
    accept_invite(driver, link)
    assert driver.find_element(By.TAG_NAME, "h1").text == "概览"
    driver.find_element(By.LINK_TEXT, "API 令牌").click()
    assert "创建令牌" in driver.page_source
    # The switch changes the language whatever the browser asks for.
    driver.find_element(By.XPATH, "//button[@value='en']").click()
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "h1").text == "API tokens")
