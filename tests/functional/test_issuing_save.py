"""The issuing save: the order's row, the certificate's record and the material's removal.

On PostgreSQL it is one statement (certok/orders/issuing_save.py), on SQLite the order's
UPDATE, `record_issued` and the solver's cleanup one after another; the rows they leave must
be the same, and under a lost lease neither writes anything. The transaction's hook (the
events outbox) runs after it and sees the new record.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

from certok.assembly import standard_solvers
from certok.certificates.records import issued_certificate
from certok.db.engine import transaction
from certok.db.models import (
    AcmeAccount,
    Certificate,
    CertificateName,
    CertificateSecret,
    ChallengeRecord,
    Order,
    OrderNotifyUrl,
    WebhookDelivery,
    WebhookEndpoint,
)
from certok.db.writes import write
from certok.events.outbox import order_finished
from certok.orders.rows import FinishingSave, LeaseLost, load_snapshot, save_job
from certok.persistence import Store
from certok.settings import Settings
from certok.tenants import service as tenants
from tests.functional.test_one_statement_writes import _add_records, _records
from tests.functional.test_worker_leases import ME, NOW, OTHER, _add_orders
from tests.kit.certs import self_signed

LEASED = {"lease_owner": ME, "lease_until": NOW + dt.timedelta(seconds=30)}
# The renewal's certificate names (its SANs; the record keeps the order's domains as well).
NAMES = ["renewal.customer.test", "www.renewal.customer.test"]


def _issue(
    store: Store, tmp_path: Path, order_id: int, fullchain: str, after: Any = None
) -> FinishingSave | None:
    solver = standard_solvers(Settings(data_dir=tmp_path, resolvers=["127.0.0.1:9"]))["dns"]
    values = {
        "state": "issued",
        "reason": None,
        "certificate_pem": fullchain,
        "finished_at": NOW,
        "lease_owner": None,
        "lease_until": None,
    }
    job = functools.partial(
        save_job,
        order_id=order_id,
        worker_id=ME,
        values=values,
        answered=[],
        answered_at=NOW,
        drop_records=solver,
        certificate=issued_certificate(fullchain, NOW, ari=False),
        after=after,
    )
    saved: FinishingSave | None = write(store.sessions, job)
    return saved


def _certificates(store: Store) -> list[dict[str, Any]]:
    with store.sessions() as session:
        rows = session.execute(
            select(
                Certificate.__table__,
                CertificateSecret.key_encrypted,
                CertificateSecret.certificate_pem,
            )
            .join(CertificateSecret, CertificateSecret.certificate_id == Certificate.id)
            .order_by(Certificate.id)
        ).mappings()
        found = [dict(row) for row in rows]
        for record in found:
            record["names"] = sorted(
                session.scalars(
                    select(CertificateName.name).where(
                        CertificateName.certificate_id == record["id"],
                        CertificateName.tenant_id == record["tenant_id"],
                    )
                )
            )
        return found


def test_the_issuing_save_writes_the_order_the_record_and_removes_the_material(
    store: Store, tmp_path: Path
) -> None:
    ids = _add_orders(
        store,
        {
            "first": LEASED | {"key_encrypted": b"first-key", "profile": "shortlived"},
            "renewal": LEASED | {"key_encrypted": b"renewal-key"},
            "other": {},
        },
    )
    with transaction(store.sessions) as session:
        session.add(
            AcmeAccount(
                issuer="letsencrypt",
                directory_url="https://ca.test/dir",
                key_encrypted=b"key",
                account_url="https://ca.test/acct/7",
                created_at=NOW,
            )
        )
    for order_id in ids.values():
        _add_records(store, order_id)
    first_chain, _ = self_signed(["first.customer.test"], not_before=NOW)
    _issue(store, tmp_path, ids["first"], first_chain)
    [first] = _certificates(store)
    with transaction(store.sessions) as session:
        renewal = session.get(Order, ids["renewal"])
        assert renewal is not None
        renewal.replaces_certificate_id = first["id"]
    renewal_chain, _ = self_signed(NAMES, not_before=NOW)
    seen_in_transaction: list[int | None] = []

    def after(connection: Connection, order_id: int, _now: dt.datetime) -> None:
        seen_in_transaction.append(
            connection.scalar(select(Certificate.id).where(Certificate.order_id == order_id))
        )

    _issue(store, tmp_path, ids["renewal"], renewal_chain, after=after)

    first, second = _certificates(store)
    assert seen_in_transaction == [second["id"]]
    expected_first = {
        "tenant_id": second["tenant_id"],
        "domains": "first.customer.test",
        "issuer": "letsencrypt",
        "account_url": "https://ca.test/acct/7",
        "key_type": "ECC",
        "profile": "shortlived",
        "order_id": ids["first"],
        "replaces_id": None,
        # Marked by the renewal's save: replaced, and no longer checked.
        "replaced_by_id": second["id"],
        "next_check_at": None,
        "key_encrypted": b"first-key",
        "certificate_pem": first_chain,
        "names": ["first.customer.test"],
        "created_at": NOW,
    }
    assert {key: first[key] for key in expected_first} == expected_first
    assert first["acme_account_id"] is not None
    record = issued_certificate(renewal_chain, NOW, ari=False)
    expected_second = {
        "domains": "renewal.customer.test",
        "order_id": ids["renewal"],
        "replaces_id": first["id"],
        "replaced_by_id": None,
        "serial": record.serial,
        "not_before": record.not_before,
        "not_after": record.not_after,
        "renew_at": record.renew_at,
        "ari": False,
        "key_encrypted": b"renewal-key",
        "certificate_pem": renewal_chain,
        "names": NAMES,
    }
    assert {key: second[key] for key in expected_second} == expected_second
    # The issued orders' material is gone, another order's is untouched.
    assert _records(store, ids["first"]) == {}
    assert _records(store, ids["renewal"]) == {}
    assert len(_records(store, ids["other"])) == 2
    with store.sessions() as session:
        order = session.get(Order, ids["renewal"])
        assert order is not None
        assert (order.state, order.lease_owner, order.certificate_pem) == (
            "issued",
            None,
            renewal_chain,
        )


def test_the_issuing_save_under_a_lost_lease_writes_nothing(store: Store, tmp_path: Path) -> None:
    lease_until = NOW + dt.timedelta(seconds=30)
    ids = _add_orders(
        store, {"n0": {"lease_owner": OTHER, "lease_until": lease_until, "key_encrypted": b"k"}}
    )
    _add_records(store, ids["n0"])
    chain, _ = self_signed(NAMES, not_before=NOW)
    hook_ran: list[int] = []

    with pytest.raises(LeaseLost):
        _issue(store, tmp_path, ids["n0"], chain, after=lambda _c, order_id, _n: hook_ran.append(1))

    assert hook_ran == []
    assert _certificates(store) == []
    with store.sessions() as session:
        assert session.scalars(select(CertificateName.id)).all() == []
        order = session.get(Order, ids["n0"])
        assert order is not None
        assert (order.state, order.lease_owner) == ("pending", OTHER)
        assert (
            session.scalars(
                select(ChallengeRecord.id).where(ChallengeRecord.order_id == ids["n0"])
            ).all()
            != []
        )


def test_a_finished_orders_event_goes_to_each_enabled_endpoint_that_wants_it(
    store: Store, tmp_path: Path
) -> None:
    """The outbox reads the order and the tenant's endpoints in one statement: one delivery
    per enabled endpoint whose types include the event, plus the notifyUrl; none for a
    disabled endpoint, one that wants other types, or another tenant's."""
    ids = _add_orders(store, {"n0": LEASED | {"key_encrypted": b"k"}})
    with transaction(store.sessions) as session:
        order = session.get(Order, ids["n0"])
        assert order is not None
        tenant_id = order.tenant_id
        other = tenants.create_tenant(session, "someone-else").id
        endpoints = {
            "all": (tenant_id, "", None),
            "issued": (tenant_id, "certificate.failed,certificate.issued", None),
            "failed-only": (tenant_id, "certificate.failed", None),
            "disabled": (tenant_id, "", NOW),
            "other-tenant": (other, "", None),
        }
        endpoint_ids = {}
        for name, (owner, types, disabled_at) in endpoints.items():
            endpoint = WebhookEndpoint(
                public_id=f"whe_{name}",
                tenant_id=owner,
                url=f"https://hooks.test/{name}",
                event_types=types,
                secret_encrypted=b"s",
                disabled_at=disabled_at,
                created_at=NOW,
            )
            session.add(endpoint)
            session.flush()
            endpoint_ids[name] = endpoint.id
        session.add(
            OrderNotifyUrl(
                order_id=ids["n0"], tenant_id=tenant_id, url="https://n.test/", created_at=NOW
            )
        )
    chain, _ = self_signed(NAMES, not_before=NOW)

    saved = _issue(store, tmp_path, ids["n0"], chain, after=order_finished)

    # The save reports what its hook queued: the delivery worker is woken for them.
    assert saved is not None and saved.deliveries_queued == 3
    [certificate] = _certificates(store)
    with store.sessions() as session:
        rows = session.execute(
            select(
                WebhookDelivery.endpoint_id,
                WebhookDelivery.url,
                WebhookDelivery.event_type,
                WebhookDelivery.payload,
            )
        ).all()
        assert session.scalars(select(OrderNotifyUrl.order_id)).all() == []  # told once
    assert sorted((row.endpoint_id or 0, row.url) for row in rows) == sorted(
        [(0, "https://n.test/"), (endpoint_ids["all"], None), (endpoint_ids["issued"], None)]
    )
    assert {row.event_type for row in rows} == {"certificate.issued"}
    for row in rows:
        data = json.loads(row.payload)["data"]
        assert (data["status"], data["certificateId"]) == ("issued", certificate["id"])


def test_an_order_end_that_queues_no_delivery_says_so(store: Store, tmp_path: Path) -> None:
    """A tenant without endpoints and an order without a notifyUrl: the finishing save reports
    no delivery queued (so nothing wakes the delivery worker), and none is stored."""
    ids = _add_orders(store, {"n0": LEASED | {"key_encrypted": b"k"}})
    chain, _ = self_signed(NAMES, not_before=NOW)

    saved = _issue(store, tmp_path, ids["n0"], chain, after=order_finished)

    assert saved is not None and saved.deliveries_queued == 0
    with store.sessions() as session:
        assert session.scalars(select(WebhookDelivery.id)).all() == []


def _endpoint(session: Any, tenant_id: int, name: str, disabled_at: dt.datetime | None) -> None:
    session.add(
        WebhookEndpoint(
            public_id=f"whe_{name}",
            tenant_id=tenant_id,
            url=f"https://hooks.test/{name}",
            event_types="",
            secret_encrypted=b"s",
            disabled_at=disabled_at,
            created_at=NOW,
        )
    )


def test_an_orders_snapshot_says_whether_its_end_has_anyone_to_tell(store: Store) -> None:
    """`notifies`: a notifyUrl given with the order, or an enabled endpoint of its tenant; not
    a disabled endpoint, nor another tenant's, as the step's load reads it (the claim's
    RETURNING takes the same columns, SNAPSHOT_COLUMNS)."""
    ids = _add_orders(store, {name: LEASED for name in ("plain", "told", "hooked")})
    with transaction(store.sessions) as session:
        order = session.get(Order, ids["plain"])
        assert order is not None
        tenant_id = order.tenant_id
        other = tenants.create_tenant(session, "someone-else").id
        _endpoint(session, tenant_id, "disabled", NOW)
        _endpoint(session, other, "other-tenant", None)
        session.add(
            OrderNotifyUrl(
                order_id=ids["told"], tenant_id=tenant_id, url="https://n.test/", created_at=NOW
            )
        )

    def notifies() -> dict[str, bool]:
        found = {}
        with store.sessions() as session:
            connection = session.connection()
            for name, order_id in ids.items():
                snapshot = load_snapshot(connection, order_id, ME, None)
                assert snapshot is not None
                found[name] = snapshot.notifies
        return found

    assert notifies() == {"plain": False, "told": True, "hooked": False}
    with transaction(store.sessions) as session:
        _endpoint(session, tenant_id, "enabled", None)
    assert notifies() == {"plain": True, "told": True, "hooked": True}


def test_an_end_with_nobody_to_tell_is_saved_without_the_outbox(
    store: Store, tmp_path: Path
) -> None:
    """Issued without the hook (its snapshot said nobody listens): the order and its record
    are written, no delivery is queued, and on PostgreSQL the save still returns what it
    stored, with no delivery queued."""
    ids = _add_orders(store, {"n0": LEASED | {"key_encrypted": b"k"}})
    chain, _ = self_signed(NAMES, not_before=NOW)

    saved = _issue(store, tmp_path, ids["n0"], chain, after=None)

    [certificate] = _certificates(store)
    assert certificate["order_id"] == ids["n0"]
    with store.sessions() as session:
        assert session.scalars(select(WebhookDelivery.id)).all() == []
        assert session.scalar(select(Order.state).where(Order.id == ids["n0"])) == "issued"
    if store.engine.dialect.name == "postgresql":
        assert saved is not None
        assert (saved.certificate_id, saved.deliveries_queued) == (certificate["id"], 0)
    else:
        assert saved is None  # SQLite's save reports only what a hook queued
