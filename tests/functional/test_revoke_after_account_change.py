"""Revocation of a certificate the issuer's *current* account did not order, against a real
Pebble: the worker's certificate tasks with the real account registry, which registers an
account of its own, while the certificate was ordered by another (the account the operator
replaced). The CA refuses that account; the certificate's own key revokes it (RFC 8555 §7.6).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select

from certok.certificates.service import request_revocation
from certok.certificates.tasks import CertificateTasks
from certok.crypto import generate_private_key, make_csr, private_key_to_pem
from certok.db.engine import transaction
from certok.db.models import Certificate
from certok.orders.accounts import AccountRegistry
from certok.persistence import Store
from certok.settings import IssuerSettings, Settings
from certok.tenants import service as tenants
from tests.functional.pebble_fixture import (
    PebbleInstance,
    pebble_server,  # noqa: F401 - the `pebble` fixture
)
from tests.functional.test_acme_client import issue, registered_session
from tests.kit.certs import add_issued_chain


def test_a_certificate_ordered_by_a_replaced_account_is_revoked_with_its_key(
    pebble: PebbleInstance, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Ordered by the account the issuer had then...
    names = ["replaced-account.revoke.test"]
    key = generate_private_key("ECC")
    _, chain = issue(registered_session(pebble), make_csr(key, names).encode("ascii"))
    now = dt.datetime.now(dt.UTC)
    with transaction(store.sessions) as db:
        tenant = tenants.create_tenant(db, "rotated").id
    certificate_id = add_issued_chain(
        store.sessions, store.box, tenant, names, chain, private_key_to_pem(key), when=now
    )
    # ...while the issuer's account is another one now (the registry registers its own).
    settings = Settings(
        data_dir=tmp_path,
        resolvers=["127.0.0.1:9"],
        issuers={
            "pebble": IssuerSettings(
                directory=pebble.directory_url, ca_bundle=Path(pebble.ca_bundle)
            )
        },
        default_issuer="pebble",
    )
    tasks = CertificateTasks(
        store.sessions,
        AccountRegistry(store.sessions, settings, store.box),
        box=store.box,
        batch=10,
        interval_seconds=60,
    )
    with transaction(store.sessions) as db:
        assert request_revocation(db, tenant, certificate_id, 1, now)

    with caplog.at_level(logging.INFO, logger="certok.certificates.tasks"):
        assert tasks.revocations() == 1

    with store.sessions() as db:
        row = db.execute(select(Certificate).where(Certificate.id == certificate_id)).scalar_one()
    assert row.revoke_error is None
    assert row.revoked_at is not None
    serial = x509.load_pem_x509_certificates(chain.encode("ascii"))[0].serial_number
    assert pebble.certificate_status(serial) == "Revoked"
    assert "may not revoke it" in caplog.text
    assert "signed with the certificate's own key" in caplog.text
    assert "PRIVATE KEY" not in caplog.text
