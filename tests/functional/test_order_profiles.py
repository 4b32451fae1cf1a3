"""The tenant's default ACME profile, and a renewal's profile, on every path that starts an
order: GET `/v1/cert/apply`, httpsok's POST `/v1/cert/apply`, and httpsok.sh's `check`
(certok/certificates/order_profile.py). In process, as tests/functional/test_agent_protocol.py:
real app and database, a real DNS server for the CNAME checks, the worker's part played by
writing the issued order; the issuers' meta.profiles come from a stand-in catalog (Pebble 2.4
has none; tests/e2e/test_certificates.py checks what reaches the CA)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from certok.certificates.profiles import TTL_SECONDS, ProfileCatalog
from certok.db.engine import transaction
from certok.db.models import Certificate, Order, Tenant
from certok.persistence import Store
from tests.functional.test_agent_protocol import Harness, make_harness

SITE = "/etc/nginx/ssl/site.pem"  # www. and shop.customer.test in the agent's configuration
ONE_HOUR = dt.timedelta(hours=1)


class Directory:
    """The profiles the issuer offers now; the catalog re-reads them once its clock says the
    hour it remembers them for is over."""

    def __init__(self) -> None:
        self.offered = {"classic": "90 days", "tlsserver": "45 days"}
        self.now = 0.0

    def fetch(self, issuer: str) -> dict[str, str]:
        assert issuer == "letsencrypt"
        return dict(self.offered)

    def change(self, offered: dict[str, str]) -> None:
        self.offered = offered
        self.now += TTL_SECONDS + 1


@pytest.fixture
def directory() -> Directory:
    return Directory()


def harness_with(
    store: Store, tmp_path: Path, directory: Directory, **overrides: Any
) -> Iterator[Harness]:
    catalog = ProfileCatalog(directory.fetch, clock=lambda: directory.now)
    # GET apply answers at once: no worker here finishes its orders.
    return make_harness(store, tmp_path, profiles=catalog, apply_wait_seconds=0, **overrides)


@pytest.fixture
def harness(store: Store, tmp_path: Path, directory: Directory) -> Iterator[Harness]:
    yield from harness_with(store, tmp_path, directory)


def set_default(harness: Harness, profile: str | None, tenant: str = "alpha") -> None:
    with transaction(harness.store.sessions) as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == harness.tenant_ids[tenant])
            .values(default_profile=profile)
        )


def newest_order(harness: Harness) -> Order:
    with harness.store.sessions() as session:
        order = session.scalars(select(Order).order_by(Order.id.desc())).first()
    assert order is not None
    return order


def order_count(harness: Harness) -> int:
    with harness.store.sessions() as session:
        return session.scalar(select(func.count()).select_from(Order)) or 0


def post_apply(harness: Harness, *names: str) -> Any:
    return harness.client.post(
        "/v1/cert/apply",
        json={"domainList": list(names)},
        headers={"OpenApiKey": harness.tokens["alpha"]},
    )


def get_apply(harness: Harness, *names: str, **params: str) -> Any:
    headers = {"httpsok-token": harness.tokens["alpha"]}
    dv = harness.client.get("/v1/cert/dv", params={"domains": ",".join(names)}, headers=headers)
    assert dv.status_code == 200 and dv.json()["data"]["code"], dv.text
    params = {"code": dv.json()["data"]["code"], "issuer": "letsencrypt", **params}
    return harness.client.get("/v1/cert/apply", params=params, headers=headers)


def agent_check(harness: Harness) -> list[str]:
    agent = harness.agent()
    return agent.check(agent.lines()[SITE][0])


def assert_ok(answer: Any) -> None:
    assert answer.status_code == 200 and answer.json()["code"] == 0, answer.text


def test_every_path_orders_with_the_tenants_default_profile_and_its_deadline(
    harness: Harness,
) -> None:
    harness.delegate("alpha", "a.customer.test", "b.customer.test")
    harness.delegate("alpha", "www.customer.test", "shop.customer.test")
    set_default(harness, "tlsserver")

    assert_ok(post_apply(harness, "a.customer.test"))
    posted = newest_order(harness)
    assert get_apply(harness, "b.customer.test").status_code == 200
    got = newest_order(harness)
    assert agent_check(harness) == ["2"]
    checked = newest_order(harness)

    assert [o.domains for o in (posted, got, checked)] == [
        "a.customer.test",
        "b.customer.test",
        "www.customer.test,shop.customer.test",
    ]
    for order in (posted, got, checked):
        assert order.profile == "tlsserver", order.domains
        # tlsserver keeps pending authorizations one hour: so does the order
        assert order.deadline_at - order.created_at <= ONE_HOUR, order.domains

    # `profile` on GET apply still wins over the default
    assert get_apply(harness, "a.customer.test", profile="classic").status_code == 200
    assert newest_order(harness).profile == "classic"


def test_a_default_the_issuer_does_not_offer_is_refused_on_every_path(
    harness: Harness, directory: Directory
) -> None:
    harness.delegate("alpha", "a.customer.test", "www.customer.test", "shop.customer.test")
    set_default(harness, "shortlived")  # not among classic, tlsserver

    words = ["default profile", "'shortlived'", "classic, tlsserver", "certok tenant profile"]
    for answer in (post_apply(harness, "a.customer.test"), get_apply(harness, "a.customer.test")):
        assert answer.status_code == 400, answer.text
        for word in words:
            assert word in answer.json()["msg"], answer.text
    (line,) = agent_check(harness)
    assert line.startswith("certok: "), line
    for word in words:
        assert word in line, line
    assert order_count(harness) == 0

    directory.change({})  # an issuer that offers no profiles at all
    answer = post_apply(harness, "a.customer.test")
    assert answer.status_code == 400 and "offers no profiles" in answer.json()["msg"]
    assert "offers no profiles" in agent_check(harness)[0]
    assert order_count(harness) == 0


def test_a_named_replaces_is_what_the_order_renews_whatever_its_names(
    store: Store, tmp_path: Path, directory: Directory
) -> None:
    for harness in harness_with(store, tmp_path, directory):
        harness.delegate("alpha", "www.customer.test", "a.customer.test")
        set_default(harness, "tlsserver")
        assert_ok(post_apply(harness, "a.customer.test"))
        harness.issue_pending_orders()
        with harness.store.sessions() as session:
            named = session.scalars(select(Certificate)).one()
        set_default(harness, "classic")
        answer = get_apply(harness, "www.customer.test", replaces=str(named.id))
        assert answer.status_code == 200, answer.text
        order = newest_order(harness)
        assert (order.replaces_certificate_id, order.profile) == (named.id, "tlsserver")


def test_a_renewal_keeps_the_profile_of_the_certificate_it_renews(
    store: Store, tmp_path: Path, directory: Directory
) -> None:
    # The renewal clock shifted past two thirds of a 90-day certificate: every check renews.
    for harness in harness_with(store, tmp_path, directory, clock_offset_seconds=61 * 86400):
        harness.delegate("alpha", "www.customer.test", "shop.customer.test", "a.customer.test")
        set_default(harness, "tlsserver")
        agent = harness.agent()
        code = agent.lines()[SITE][0]
        assert agent.check(code) == ["2"]
        assert_ok(post_apply(harness, "a.customer.test"))
        ((chain, key), _) = harness.issue_pending_orders()
        assert agent.check(code)[0] == "1"
        assert agent.upload(code, chain.encode(), key.encode()).text == "ok"

        # The default changes; the certificates in place keep theirs when renewed.
        set_default(harness, "classic")
        assert agent.check(code) == ["2"]
        agent_renewal = newest_order(harness)
        assert_ok(post_apply(harness, "a.customer.test"))
        post_renewal = newest_order(harness)
        for renewal in (agent_renewal, post_renewal):
            assert renewal.replaces_certificate_id is not None, renewal.domains
            assert renewal.profile == "tlsserver", renewal.domains
            assert renewal.deadline_at - renewal.created_at <= ONE_HOUR
        assert get_apply(harness, "a.customer.test").status_code == 200
        assert newest_order(harness).profile == "tlsserver"
        # A new certificate (no predecessor) takes the default.
        assert get_apply(harness, "www.customer.test").status_code == 200
        assert newest_order(harness).profile == "classic"

        # The issuer stops offering the inherited profile: the renewal takes the default,
        # rather than stall on a profile its client cannot change.
        harness.issue_pending_orders()
        assert agent.check(code)[0] == "1"
        with harness.store.sessions() as session:
            deployed = session.scalars(
                select(Certificate).where(Certificate.order_id == agent_renewal.id)
            ).one()
        assert deployed.profile == "tlsserver"
        directory.change({"classic": "90 days"})
        agent.upload(code, *(agent.get(f"/cert/{code}.{x}").content for x in ("cer", "key")))
        assert agent.check(code) == ["2"]
        fallback = newest_order(harness)
        assert (fallback.replaces_certificate_id, fallback.profile) == (deployed.id, "classic")
