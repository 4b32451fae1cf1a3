"""The seed's DNS-delegation user story, end to end, as a user runs it.

Real `certok serve` (subprocess) with its DNS server behind unbound, customer DNS in NSD,
Pebble as the CA (plain for letsencrypt/zerossl, EAB-required for google).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.depth import rounds
from tests.e2e.flow import User, check_issued, delegate
from tests.e2e.flow import order_row as _order_row
from tests.rig import Rig
from tests.rig.certok_server import CertokServer
from tests.rig.fault_proxy import Rule, stall


@pytest.fixture
def server(certok_server: Callable[..., CertokServer]) -> CertokServer:
    return certok_server()


def test_one_name_letsencrypt_rsa(
    rig: Rig, server: CertokServer, customer_records, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    user = User(server, server.create_tenant("acme-corp"))
    first = user.dv("www.customer.test")
    assert first["valid"] is False and first["code"] is None
    item = first["items"][0]
    assert item["name"] == "_acme-challenge.www" and item["type"] == "CNAME"
    delegate(rig, customer_records, first)
    second = user.dv("www.customer.test")
    assert second["valid"] is True and second["items"][0]["valid"] is True
    assert len(second["code"]) == 16
    data = user.apply_until_done(second["code"], algorithm="RSA", issuer="letsencrypt")
    assert data["issuer"] == "letsencrypt"
    check_issued(rig, data, ["www.customer.test"], "RSA", tmp_path)
    # the same code keeps answering with the same certificate
    again = user.apply_until_done(second["code"])
    assert again["certificate"] == data["certificate"]
    # at rest: no token, no private key in clear; one ACME account for the issuer
    with sqlite3.connect(Path(server.env["CERTOK_DATA_DIR"]) / "certok.db") as db:
        dump = "\n".join(db.iterdump())
        accounts = db.execute("SELECT issuer FROM acme_accounts").fetchall()
    assert user.token not in dump
    assert "PRIVATE KEY" not in dump
    body = "".join(data["privateKey"].splitlines()[1:-1])
    assert body[:40] not in dump
    assert accounts == [("letsencrypt",)]
    assert "PRIVATE KEY" not in server.log_text() and user.token not in server.log_text()


def test_wildcard_and_apex_ecc_on_the_eab_issuer(  # type: ignore[no-untyped-def]
    rig: Rig, server: CertokServer, customer_records, tmp_path
) -> None:
    user = User(server, server.create_tenant("acme-corp"))
    names = ["*.customer.test", "customer.test", "www.customer.test"]
    first = user.dv(",".join(names))
    values = {item["domain"]: item["value"] for item in first["items"]}
    assert values["*.customer.test"] == values["customer.test"]
    delegate(rig, customer_records, first)
    second = user.dv(",".join(names))
    assert second["valid"] is True
    # defaults: algorithm ECC, issuer google (here: the Pebble that requires EAB)
    data = user.apply_until_done(second["code"])
    assert data["issuer"] == "google"
    check_issued(rig, data, names, "ECC", tmp_path, eab=True)


def test_missing_or_foreign_cname_gets_no_code(  # type: ignore[no-untyped-def]
    rig: Rig, server: CertokServer, customer_records
) -> None:
    alice = User(server, server.create_tenant("alice"))
    mallory = User(server, server.create_tenant("mallory"))
    # no CNAME at all
    data = alice.dv("nodeleg.customer.test")
    assert data["valid"] is False and data["code"] is None
    assert "_acme-challenge.nodeleg" in data["items"][0]["detail"]
    # alice delegates www; mallory asks for the same name: her label differs, so not valid
    delegate(rig, customer_records, alice.dv("www.customer.test"))
    assert alice.dv("www.customer.test")["valid"] is True
    stolen = mallory.dv("www.customer.test")
    assert stolen["valid"] is False and stolen["code"] is None
    assert stolen["items"][0]["value"] != alice.dv("www.customer.test")["items"][0]["value"]
    # and mallory cannot use alice's code either
    alice_code = alice.dv("www.customer.test")["code"]
    response = mallory.get("/v1/cert/apply", code=alice_code)
    assert response.status_code == 404 and response.json()["code"] != 0
    # a wrong token is refused outright
    response = User(server, "f" * 32).get("/v1/cert/dv", domains="www.customer.test")
    assert response.status_code == 401 and response.json()["code"] != 0
    # alice's code is still good after mallory's attempts
    assert alice.apply_until_done(alice_code)["status"] == "issued"


def test_expired_code_is_refused(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records
) -> None:
    server = certok_server(code_ttl_seconds=1)
    user = User(server, server.create_tenant("acme-corp"))
    delegate(rig, customer_records, user.dv("www.customer.test"))
    code = user.dv("www.customer.test")["code"]
    time.sleep(1.5)
    response = user.get("/v1/cert/apply", code=code)
    assert response.status_code == 410
    body = response.json()
    assert body["code"] != 0 and "/v1/cert/dv" in body["msg"]


@rounds(ci=1, deep=10)
def test_nonce_rejection_30_percent_still_issues_every_order(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, tmp_path, round_: int
) -> None:
    with rig.pebble_settings(nonce_reject=30):
        server = certok_server()
        user = User(server, server.create_tenant("acme-corp"))
        names = [f"www{i}.customer.test" for i in ("", "2", "3", "4", "5")]
        first = user.dv(",".join(names))
        delegate(rig, customer_records, first)
        results = []
        for name in names:
            code = user.dv(name)["code"]
            assert code, name
            results.append((name, user.apply_until_done(code, issuer="letsencrypt")))
        for name, data in results:
            assert data["status"] == "issued", (name, data)
        check_issued(rig, results[0][1], [names[0]], "ECC", tmp_path)


def test_sigkill_while_pending_then_restart_resumes_the_same_order(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, fault_proxy, tmp_path
) -> None:
    # Hold certok's first challenge answer at the proxy: certok is surely mid-order (the ACME
    # order exists, its TXT value is presented) when it dies. The held request is never
    # forwarded, so the restarted certok must answer the challenge itself.
    fault_proxy.add_rule(
        Rule(action=stall(until=threading.Event()), path=r"/chalZ/", method="POST", times=1)
    )
    server = certok_server(
        apply_wait_seconds=0, issuers__letsencrypt__directory=fault_proxy.directory_url
    )
    user = User(server, server.create_tenant("acme-corp"))
    delegate(rig, customer_records, user.dv("www.customer.test"))
    code = user.dv("www.customer.test")["code"]
    first = user.get("/v1/cert/apply", code=code, issuer="letsencrypt").json()["data"]
    assert first["status"] == "pending"
    fault_proxy.wait_for(r"/chalZ/", method="POST", timeout=20)
    state, order_url = _order_row(server)
    assert state == "pending" and order_url, "the ACME order should exist before the kill"
    server.kill()
    # unbound may have marked certok's DNS server down while it was dead: what this test is
    # about is the resume, so unbound forgets that before certok answers.
    rig.flush_resolver()
    server.start()
    data = user.apply_until_done(code, timeout=60)
    check_issued(rig, data, ["www.customer.test"], "ECC", tmp_path)
    # resumed, not restarted: the same ACME order finished, and only one was ever created
    assert _order_row(server) == ("issued", order_url)
    assert len(fault_proxy.requests(r"/order-plz", method="POST")) == 1
