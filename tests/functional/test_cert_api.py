"""/v1/cert/list, /v1/cert/{id}, the .pem downloads and revoke, in process on a real database.

Records are written as the driver writes them (tests/kit/certs.py); revocation goes to the
worker's certificate tasks, here with a stand-in account that records what it was asked.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import event, select, update
from starlette.testclient import TestClient

from certok.api.caches import TtlCache
from certok.certificates.service import request_revocation
from certok.certificates.tasks import CertificateTasks
from certok.crypto import private_key_from_pem
from certok.db.engine import transaction
from certok.db.models import Certificate, CertificateSecret
from certok.issuance import AcmeProblem, ProblemKind
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.functional.test_api import api_settings, assert_error, make_app
from tests.kit.certs import FakeCa, add_certificate

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass
class StandInSession:
    """The issuer's session: what its account revoked, and what was revoked signed with a
    certificate's own key (chain, key PEM, reason); `refuse`/`refuse_key` make either fail."""

    revoked: list[tuple[str, int]] = field(default_factory=list)
    refuse: AcmeProblem | None = None
    revoked_with_key: list[tuple[str, str, int]] = field(default_factory=list)
    refuse_key: AcmeProblem | None = None

    def revoke(self, pem: str, reason: int) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.revoked.append((pem, reason))

    def revoke_with_certificate_key(self, pem: str, key_pem: str, reason: int) -> None:
        if self.refuse_key is not None:
            raise self.refuse_key
        self.revoked_with_key.append((pem, key_pem, reason))


@dataclass
class StandInAccounts:
    session: StandInSession = field(default_factory=StandInSession)

    def account(self, name: str) -> Any:
        return self


@dataclass
class Harness:
    client: TestClient
    store: Store
    tokens: dict[str, str]
    ids: dict[str, int]
    ca: FakeCa
    accounts: StandInAccounts
    tasks: CertificateTasks

    def get(self, path: str, tenant: str = "alpha", **params: Any) -> Any:
        return self.client.get(path, params=params, headers={"httpsok-token": self.tokens[tenant]})

    def post(self, path: str, tenant: str = "alpha", **kwargs: Any) -> Any:
        return self.client.post(path, headers={"httpsok-token": self.tokens[tenant]}, **kwargs)

    def add(self, tenant: str, names: list[str], **kwargs: Any) -> int:
        kwargs.setdefault("not_before", NOW - DAY)
        kwargs.setdefault("serial", 1000 + len(names) * 7919 + hash(tuple(names)) % 10**9)
        return add_certificate(
            self.store.sessions, self.store.box, self.ca, self.ids[tenant], names, **kwargs
        )


@pytest.fixture
def cert_api(store: Store, tmp_path: Any) -> Iterator[Harness]:
    settings = api_settings(tmp_path, apply_wait_seconds=2.0)
    tokens: dict[str, str] = {}
    ids: dict[str, int] = {}
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta"):
            ids[name] = tenants.create_tenant(session, name).id
            tokens[name] = tenants.issue_token(session, name)
    accounts = StandInAccounts()
    tasks = CertificateTasks(store.sessions, accounts, box=store.box, batch=50, interval_seconds=60)

    def wake() -> None:
        # The worker's tick, run at once in a thread of its own (as `run` would after a wake).
        threading.Thread(target=tasks.tick, daemon=True).start()

    app = make_app(
        settings,
        store,
        wake_worker=lambda: None,
        wake_certificates=wake,
        tokens=TtlCache(ttl=0, max_entries=10),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(client, store, tokens, ids, FakeCa.create(), accounts, tasks)


def test_list_get_and_pem_downloads(cert_api: Harness) -> None:
    first = cert_api.add("alpha", ["a.example.com"], serial=0x80FF)
    second = cert_api.add("alpha", ["b.example.com", "www.b.example.com"], serial=0x1234)
    cert_api.add("beta", ["a.example.com"], serial=0x99)
    body = cert_api.get("/v1/cert/list").json()
    assert body["code"] == 0
    data = body["data"]
    assert data["total"] == 2
    assert [item["id"] for item in data["items"]] == [second, first]  # newest first
    item = data["items"][1]
    assert set(item) == {
        "id",
        "domains",
        "issuer",
        "algorithm",
        "notBefore",
        "notAfter",
        "renewAt",
        "status",
    }
    assert item["status"] == "valid" and item["algorithm"] == "ECC"
    assert item["domains"] == ["a.example.com"]
    # filters and paging
    only_b = cert_api.get("/v1/cert/list", domain="www.b.example.com").json()["data"]
    assert [i["id"] for i in only_b["items"]] == [second]
    assert cert_api.get("/v1/cert/list", domain="example.com").json()["data"]["total"] == 0
    page2 = cert_api.get("/v1/cert/list", page=2, size=1).json()["data"]
    assert [i["id"] for i in page2["items"]] == [first] and page2["total"] == 2
    # one certificate, with its chain and key
    detail = cert_api.get(f"/v1/cert/{first}").json()["data"]
    assert detail["serial"] == "80ff"
    leaf = x509.load_pem_x509_certificates(detail["certificate"].encode())[0]
    key = private_key_from_pem(detail["privateKey"])
    assert leaf.serial_number == 0x80FF
    assert detail["status"] == "valid" and detail["renewAt"] is not None
    assert isinstance(key, type(key))
    chain = cert_api.get(f"/v1/cert/{first}/fullchain.pem")
    assert chain.status_code == 200 and chain.text == detail["certificate"]
    privkey = cert_api.get(f"/v1/cert/{first}/privkey.pem")
    assert privkey.status_code == 200 and privkey.text == detail["privateKey"]


def test_statuses(cert_api: Harness) -> None:
    expired = cert_api.add("alpha", ["old.example.com"], not_before=NOW - 100 * DAY, serial=11)
    expiring = cert_api.add("alpha", ["soon.example.com"], not_before=NOW - 70 * DAY, serial=12)
    valid = cert_api.add("alpha", ["new.example.com"], serial=13)
    renewal = cert_api.add("alpha", ["soon.example.com"], serial=14, replaces=expiring)
    due = cert_api.add("alpha", ["due.example.com"], not_before=NOW - 70 * DAY, serial=15)
    by_status = {}
    for status in ("valid", "expiring", "expired", "revoked", "replaced"):
        items = cert_api.get("/v1/cert/list", status=status).json()["data"]["items"]
        by_status[status] = [i["id"] for i in items]
    assert by_status == {
        "valid": [renewal, valid],
        "expiring": [due],
        "expired": [expired],
        "revoked": [],
        "replaced": [expiring],
    }
    assert cert_api.get(f"/v1/cert/{expiring}").json()["data"]["replacedBy"] == renewal


def test_another_tenants_id_reads_like_an_unknown_one(cert_api: Harness) -> None:
    theirs = cert_api.add("beta", ["x.example.com"], serial=21)
    for path in ("", "/fullchain.pem", "/privkey.pem"):
        foreign = cert_api.get(f"/v1/cert/{theirs}{path}")
        unknown = cert_api.get(f"/v1/cert/{theirs + 1000}{path}")
        assert foreign.status_code == unknown.status_code == 404
        assert re.sub(r"\d+", "N", foreign.json()["msg"]) == re.sub(
            r"\d+", "N", unknown.json()["msg"]
        )
    refused = cert_api.post(f"/v1/cert/{theirs}/revoke", json={"reason": 1})
    assert_error(refused, 404, "not found")
    assert cert_api.accounts.session.revoked == []
    assert cert_api.get(f"/v1/cert/{theirs}", "beta").json()["data"]["status"] == "valid"


def test_revoke_goes_to_the_ca_and_marks_the_record(cert_api: Harness) -> None:
    mine = cert_api.add("alpha", ["r.example.com"], serial=31)
    body = cert_api.post(f"/v1/cert/{mine}/revoke", json={"reason": "keyCompromise"}).json()
    assert body["code"] == 0, body
    assert body["data"]["status"] == "revoked"
    [(pem, reason)] = cert_api.accounts.session.revoked
    assert reason == 1 and "BEGIN CERTIFICATE" in pem
    listed = cert_api.get("/v1/cert/list", status="revoked").json()["data"]["items"]
    assert [i["id"] for i in listed] == [mine]
    # again: nothing more to do
    again = cert_api.post(f"/v1/cert/{mine}/revoke").json()
    assert again["code"] == 0 and len(cert_api.accounts.session.revoked) == 1


def test_a_ca_refusal_is_reported(cert_api: Harness) -> None:
    mine = cert_api.add("alpha", ["q.example.com"], serial=41)
    cert_api.accounts.session.refuse = AcmeProblem(ProblemKind.REJECTED, "malformed", "no way")
    body = cert_api.post(f"/v1/cert/{mine}/revoke", json={"reason": 0}).json()
    assert body["code"] == 0
    assert body["data"]["status"] == "valid"
    assert "no way" in body["msg"] and "no way" in body["data"]["revocationError"]
    # Only an account that may not revoke it is a reason to sign with the certificate's key.
    assert cert_api.accounts.session.revoked_with_key == []


def test_an_account_that_may_not_revoke_falls_back_to_the_certificate_key(
    cert_api: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    mine = cert_api.add("alpha", ["k.example.com"], serial=42)
    key_pem = cert_api.get(f"/v1/cert/{mine}").json()["data"]["privateKey"]
    cert_api.accounts.session.refuse = AcmeProblem(
        ProblemKind.AUTHORIZATION_INVALID, "unauthorized", "not the ordering account"
    )
    with caplog.at_level(logging.INFO, logger="certok.certificates.tasks"):
        body = cert_api.post(f"/v1/cert/{mine}/revoke", json={"reason": "superseded"}).json()
    assert body["code"] == 0, body
    assert body["data"]["status"] == "revoked"
    assert body["data"].get("revocationError") is None
    [(pem, used_key, reason)] = cert_api.accounts.session.revoked_with_key
    assert "BEGIN CERTIFICATE" in pem and used_key == key_pem and reason == 4
    assert f"certificate {mine} revoked" in caplog.text
    assert "signed with the certificate's own key" in caplog.text
    assert "PRIVATE KEY" not in caplog.text and key_pem not in caplog.text


def test_a_refusal_of_the_certificate_key_too_is_reported(cert_api: Harness) -> None:
    mine = cert_api.add("alpha", ["kk.example.com"], serial=43)
    session = cert_api.accounts.session
    session.refuse = AcmeProblem(ProblemKind.AUTHORIZATION_INVALID, "unauthorized", "not yours")
    session.refuse_key = AcmeProblem(ProblemKind.REJECTED, "badPublicKey", "weak key")
    body = cert_api.post(f"/v1/cert/{mine}/revoke", json={"reason": 0}).json()
    assert body["code"] == 0
    assert body["data"]["status"] == "valid"
    assert body["data"]["revocationError"] == "badPublicKey: weak key"
    assert "weak key" in body["msg"]


def test_a_key_that_cannot_be_decrypted_is_a_clear_refusal(cert_api: Harness) -> None:
    mine = cert_api.add("alpha", ["lost.example.com"], serial=45)
    with transaction(cert_api.store.sessions) as db:
        db.execute(
            update(CertificateSecret)
            .where(CertificateSecret.certificate_id == mine)
            .values(key_encrypted=b"\x01" + bytes(40))
        )
    session = cert_api.accounts.session
    session.refuse = AcmeProblem(ProblemKind.AUTHORIZATION_INVALID, "unauthorized", "not yours")
    body = cert_api.post(f"/v1/cert/{mine}/revoke", json={"reason": 0}).json()
    assert body["code"] == 0
    assert body["data"]["status"] == "valid"
    assert "could not be decrypted" in body["data"]["revocationError"]
    assert session.revoked_with_key == []


def test_a_retryable_problem_is_retried_later_without_the_certificate_key(
    cert_api: Harness,
) -> None:
    mine = cert_api.add("alpha", ["later.example.com"], serial=44)
    session = cert_api.accounts.session
    session.refuse = AcmeProblem(ProblemKind.RETRYABLE, "serverInternal", "try later")
    asked = dt.datetime.now(dt.UTC)
    with transaction(cert_api.store.sessions) as db:
        assert request_revocation(db, cert_api.ids["alpha"], mine, 0, asked)
    assert cert_api.tasks.revocations() == 1
    assert session.revoked_with_key == []
    with cert_api.store.sessions() as db:
        row = db.execute(select(Certificate).where(Certificate.id == mine)).scalar_one()
    assert row.revoked_at is None and row.revoke_error is None
    assert row.revoke_requested_at is not None and row.revoke_requested_at > asked
    # The CA takes it on the next try, from the account itself.
    session.refuse = None
    with transaction(cert_api.store.sessions) as db:
        db.execute(
            update(Certificate).where(Certificate.id == mine).values(revoke_requested_at=asked)
        )
    assert cert_api.tasks.revocations() == 1
    assert len(session.revoked) == 1 and session.revoked_with_key == []


@pytest.mark.parametrize(
    ("path", "kwargs", "words"),
    [
        ("/v1/cert/list", {"params": {"status": "bogus"}}, ["status", "valid"]),
        ("/v1/cert/list", {"params": {"size": "1000"}}, ["size", "100"]),
        ("/v1/cert/list", {"params": {"page": "0"}}, ["page"]),
        ("/v1/cert/list", {"params": {"page": "x"}}, ["page"]),
    ],
)
def test_bad_list_parameters(cert_api: Harness, path: str, kwargs: Any, words: list[str]) -> None:
    headers = {"httpsok-token": cert_api.tokens["alpha"]}
    response = cert_api.client.get(path, headers=headers, **kwargs)
    assert_error(response, 400, *words)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", ["JSON"]),
        (b"[1]", ["JSON object"]),
        (b'{"reason": 7}', ["reason", "keyCompromise"]),
        (b'{"reason": "angry"}', ["reason", "superseded"]),
    ],
)
def test_bad_revoke_bodies(cert_api: Harness, body: bytes, words: list[str]) -> None:
    mine = cert_api.add("alpha", ["z.example.com"], serial=51)
    assert_error(cert_api.post(f"/v1/cert/{mine}/revoke", content=body), 400, *words)


def test_unknown_ids_and_no_token(cert_api: Harness) -> None:
    assert_error(cert_api.get("/v1/cert/123456"), 404, "not found")
    assert_error(cert_api.get("/v1/cert/abc"), 404, "/v1/cert/abc")
    assert_error(cert_api.get("/v1/cert/99999999999999999999"), 404, "not found")
    assert_error(cert_api.client.get("/v1/cert/list"), 401, "token")


def test_apply_profile_default_profile_and_short_deadline(store: Store, tmp_path: Any) -> None:
    from sqlalchemy import select, update

    from certok.certificates.profiles import ProfileCatalog
    from certok.db.models import Order, Tenant
    from certok.orders.codes import issue_code

    settings = api_settings(tmp_path, apply_wait_seconds=0)
    with transaction(store.sessions) as session:
        tenant = tenants.create_tenant(session, "prof")
        token = tenants.issue_token(session, "prof")
    fetched: list[str] = []

    def offered(issuer: str) -> dict[str, str]:
        fetched.append(issuer)
        return {"classic": "90 days", "tlsserver": "45 days"}

    app = make_app(settings, store, wake_worker=lambda: None, profiles=ProfileCatalog(offered))
    headers = {"httpsok-token": token}

    def code() -> str:
        with transaction(store.sessions) as session:
            return issue_code(session, tenant.id, "dns", ["p.example.com"], 60)

    def order_of(answer: Any) -> Any:
        assert answer.status_code == 200, answer.text
        with store.sessions() as session:
            return session.execute(select(Order).order_by(Order.id.desc())).scalars().first()

    with TestClient(app, raise_server_exceptions=False) as client:
        refused = client.get(
            "/v1/cert/apply", params={"code": code(), "profile": "forever"}, headers=headers
        )
        assert_error(refused, 400, "forever", "classic", "tlsserver")
        assert_error(
            client.get("/v1/cert/apply", params={"code": code(), "profile": ""}, headers=headers),
            400,
            "profile",
        )
        short = order_of(
            client.get(
                "/v1/cert/apply", params={"code": code(), "profile": "tlsserver"}, headers=headers
            )
        )
        assert short.profile == "tlsserver"
        assert short.deadline_at - short.created_at <= dt.timedelta(hours=1)
        plain = order_of(client.get("/v1/cert/apply", params={"code": code()}, headers=headers))
        assert plain.profile is None
        assert plain.deadline_at - plain.created_at == dt.timedelta(
            seconds=settings.order_deadline_seconds
        )
        with transaction(store.sessions) as session:
            session.execute(
                update(Tenant).where(Tenant.id == tenant.id).values(default_profile="classic")
            )
        default = order_of(client.get("/v1/cert/apply", params={"code": code()}, headers=headers))
        assert default.profile == "classic"
    assert fetched == ["google"]  # the directory read once, then remembered


def test_the_revocation_pick_walks_the_requests_not_every_live_certificate(
    cert_api: Harness,
) -> None:
    # Without statistics SQLite took "revoked_at IS NULL" (every live certificate) to the
    # revoked_at index: each tick walked every live certificate to find the few requests.
    if cert_api.store.engine.dialect.name != "sqlite":
        pytest.skip("the query plan is read from SQLite's EXPLAIN QUERY PLAN")
    live = [cert_api.add("alpha", [f"live{i}.example.com"], serial=500 + i) for i in range(3)]
    with transaction(cert_api.store.sessions) as db:
        assert request_revocation(db, cert_api.ids["alpha"], live[0], 1, NOW)
    picks: list[tuple[str, Any]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if (
            statement.lstrip().upper().startswith("SELECT")
            and "revoke_requested_at <=" in statement
        ):
            picks.append((statement, parameters))

    event.listen(cert_api.store.engine, "before_cursor_execute", seen)
    try:
        assert cert_api.tasks.revocations() == 1
    finally:
        event.remove(cert_api.store.engine, "before_cursor_execute", seen)
    [(statement, parameters)] = picks
    with cert_api.store.engine.connect() as connection:
        plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    text = " ".join(str(row[-1]) for row in plan)
    assert "USING INDEX ix_certificates_revoke_requested_at" in text, text
    assert "TEMP B-TREE" not in text, text
