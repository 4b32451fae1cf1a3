"""The renewal clock over thousands of certificates, with an injected clock, against ARI served
on the wire (tests/rig/ari_front.py in front of the rig's Pebble) by the worker's real
certificate tasks: ARI windows, the lifetime fallback, the emergency limit, Retry-After
clamping, errors, moved windows, and renewals due. Each tick reads only the rows due.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import event, select

from certok.certificates.tasks import CertificateTasks
from certok.db.engine import transaction
from certok.db.models import Certificate, CertificateSecret
from certok.orders.accounts import AccountRegistry
from certok.persistence import Store
from certok.settings import IssuerSettings, Settings
from certok.tenants import service as tenants
from tests.kit.certs import FakeCa, add_certificate
from tests.rig import Rig
from tests.rig.ari_front import AriFront, Window, ari_cert_id
from tests.rig.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(300)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
PER_GROUP = int(os.environ.get("CERTOK_TEST_RENEWAL_GROUP", "300"))
GROUPS = ("window", "retry_low", "retry_high", "late_window", "unknown", "fallback", "short")


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def front(fault_proxy: FaultProxy) -> Iterator[AriFront]:
    fault_proxy.front = AriFront()
    yield fault_proxy.front


def test_thousands_of_certificates(
    rig: Rig, fault_proxy: FaultProxy, front: AriFront, store: Store, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        resolvers=["127.0.0.1:9"],
        issuers={
            "pebble": IssuerSettings(
                directory=fault_proxy.directory_url, ca_bundle=Path(rig.ca_bundle)
            )
        },
        default_issuer="pebble",
    )
    clock = Clock(T0)
    due_notices: list[int] = []
    tasks = CertificateTasks(
        store.sessions,
        AccountRegistry(store.sessions, settings, store.box),
        box=store.box,
        batch=500,
        interval_seconds=60,
        clock=clock,
        rng=random.Random(7),
        on_renewal_due=due_notices.extend,
    )
    with transaction(store.sessions) as session:
        tenant = tenants.create_tenant(session, "many").id
    ca = FakeCa.create()
    ids: dict[str, list[int]] = {group: [] for group in GROUPS}
    cert_ids: dict[int, str] = {}
    serial = 0x7F_FF_F0
    for group in GROUPS:
        for i in range(PER_GROUP):
            serial += 1  # crosses 0x800000: high-bit serials with their leading 00
            not_before = T0 - dt.timedelta(minutes=i)
            lifetime = dt.timedelta(hours=160) if group == "short" else 90 * DAY
            record = add_certificate(
                store.sessions, store.box, ca, tenant, [f"{group}{i}.example.com"],
                not_before=not_before, lifetime=lifetime, serial=serial,
                ari=group not in ("fallback", "short"), now=T0,
            )  # fmt: skip
            ids[group].append(record)
            with store.sessions() as session:
                pem = session.scalar(
                    select(CertificateSecret.certificate_pem).where(
                        CertificateSecret.certificate_id == record
                    )
                )
            leaf = x509.load_pem_x509_certificates(pem.encode())[0]
            if group == "unknown":
                cert_ids[record] = ari_cert_id(leaf)
                continue  # the CA does not know it: 404
            cert_id = front.register(leaf)
            cert_ids[record] = cert_id
            start = not_before + 58 * DAY
            window = {
                "window": Window(start, start + 4 * DAY, retry_after_seconds=6 * 3600),
                "retry_low": Window(start, start + 4 * DAY, retry_after_seconds=5),
                "retry_high": Window(start, start + 4 * DAY, retry_after_seconds=10 * 86400),
                "late_window": Window(not_before + 88 * DAY, not_before + 89 * DAY),
            }.get(group)
            if window is not None:
                front.set_window(cert_id, window)

    # certok's certIDs are the ones computed here from the certificates.
    with store.sessions() as session:
        stored = dict(session.execute(select(Certificate.id, Certificate.ari_cert_id)).all())
    for record, cert_id in cert_ids.items():
        if record not in ids["fallback"] + ids["short"]:
            assert stored[record] == cert_id

    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    checked = 0
    while (done := tasks.ari_checks()) > 0:
        checked += done
    assert checked == PER_GROUP * 5  # every certificate with ARI, once
    assert len(front.renewal_info_requests) == PER_GROUP * 5
    # Reads: one per batch plus one per certificate; no statement reads the whole table.
    assert not any("certificate_pem" in s for s in statements if s.startswith("SELECT"))

    rows = _rows(store)
    for record in ids["window"] + ids["retry_low"] + ids["retry_high"]:
        row = rows[record]
        assert row.ari_window_start <= row.renew_at <= row.ari_window_end
    assert {rows[r].next_check_at for r in ids["window"]} == {T0 + 6 * HOUR}
    assert {rows[r].next_check_at for r in ids["retry_low"]} == {T0 + dt.timedelta(seconds=60)}
    assert {rows[r].next_check_at for r in ids["retry_high"]} == {T0 + DAY}
    for record in ids["late_window"]:  # 1/20 of 90 days left: 85.5 days in
        row = rows[record]
        assert row.renew_at == row.not_before + dt.timedelta(days=85.5)
    for record in ids["unknown"]:
        row = rows[record]
        assert row.ari_error and row.next_check_at == T0 + 6 * HOUR
        assert row.renew_at == row.not_before + 60 * DAY  # the lifetime rule stays
    for record in ids["fallback"]:
        row = rows[record]
        assert row.next_check_at is None and row.renew_at == row.not_before + 60 * DAY
    for record in ids["short"]:
        assert rows[record].renew_at == rows[record].not_before + 80 * HOUR
    # Draws spread over the window (not all at its start).
    spread = {rows[r].renew_at for r in ids["window"]}
    assert len(spread) > PER_GROUP * 0.9

    # A moved window: the CA wants the "window" group renewed now.
    first = rows[ids["window"][0]].renew_at
    for record in ids["window"]:
        front.set_window(cert_ids[record], Window(T0 + 7 * HOUR, T0 + 9 * HOUR))
    clock.now = T0 + 6 * HOUR + dt.timedelta(seconds=1)
    asked = len(front.renewal_info_requests)
    while tasks.ari_checks() > 0:
        pass
    # Only the due ones were asked (6 h on: every group checked at 6 h or after 60 s), never
    # the ones the CA told to come back in a day (clamped from ten).
    asked_now = set(front.renewal_info_requests[asked:])
    due_groups = ("window", "retry_low", "late_window", "unknown")
    assert asked_now == {cert_ids[r] for group in due_groups for r in ids[group]}
    rows = _rows(store)
    assert rows[ids["window"][0]].renew_at != first
    for record in ids["window"]:
        assert T0 + 7 * HOUR <= rows[record].renew_at <= T0 + 9 * HOUR

    # Renewals due: the moved group at T0 + 9 h, noticed once.
    clock.now = T0 + 9 * HOUR
    while tasks.renewals_due() > 0:
        pass
    assert sorted(due_notices) == sorted(ids["window"])
    assert tasks.renewals_due() == 0


def _rows(store: Store) -> dict[int, Certificate]:
    with store.sessions() as session:
        return {row.id: row for row in session.scalars(select(Certificate))}
