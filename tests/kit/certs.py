"""Certificates for tests and benches without a CA: self-signed leaves, a small CA and leaves
with AKI, and certificate records written as the driver writes them (an issued order +
`record_issued`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import insert, update
from sqlalchemy.orm import Session, sessionmaker

from certok.certificates.records import issued_certificate, record_issued
from certok.crypto import PrivateKey, SecretBox, generate_private_key, private_key_to_pem
from certok.db.engine import transaction
from certok.db.models import Order
from certok.order_states import ISSUED
from certok.orders.service import order_key_owner
from tests.kit.rows import order_row


def self_signed_pem(
    key: PrivateKey,
    names: list[str],
    *,
    not_before: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(days=90),
    serial: int | None = None,
) -> str:
    """A self-signed certificate for `names` (the first one the common name), as PEM."""
    start = not_before or dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def self_signed(
    names: list[str],
    *,
    not_before: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(days=90),
) -> tuple[str, str]:
    """A self-signed certificate for `names` and its new ECC key, both PEM (certificate, key)."""
    key = generate_private_key("ECC")
    pem = self_signed_pem(key, names, not_before=not_before, lifetime=lifetime)
    return pem, private_key_to_pem(key)


@dataclass
class FakeCa:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls) -> FakeCa:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certok test CA")])
        now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650 * 3))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def leaf_pem(
        self, names: list[str], not_before: dt.datetime, lifetime: dt.timedelta, serial: int
    ) -> str:
        """The chain (leaf, then this CA) of a leaf for `names`, as PEM."""
        return self.leaf(names, not_before, lifetime, serial)[0]

    def leaf(
        self, names: list[str], not_before: dt.datetime, lifetime: dt.timedelta, serial: int
    ) -> tuple[str, str]:
        """The chain of a leaf for `names` as `leaf_pem` gives it, and the leaf's key as PEM."""
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(leaf_key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_before + lifetime)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        chain = (
            cert.public_bytes(serialization.Encoding.PEM)
            + self.certificate.public_bytes(serialization.Encoding.PEM)
        ).decode("ascii")
        return chain, private_key_to_pem(leaf_key)


def add_certificate(
    sessions: sessionmaker[Session],
    box: SecretBox,
    ca: FakeCa,
    tenant_id: int,
    names: list[str],
    *,
    not_before: dt.datetime,
    lifetime: dt.timedelta = dt.timedelta(days=90),
    serial: int,
    ari: bool = False,
    issuer: str = "pebble",
    replaces: int | None = None,
    now: dt.datetime | None = None,
) -> int:
    """An issued order and its certificate record, as the driver's closing save writes them."""
    chain = ca.leaf_pem(names, not_before, lifetime, serial)
    key_pem = private_key_to_pem(generate_private_key("ECC"))
    return add_issued_chain(
        sessions,
        box,
        tenant_id,
        names,
        chain,
        key_pem,
        when=now or not_before,
        ari=ari,
        issuer=issuer,
        replaces=replaces,
    )


def add_issued_chain(
    sessions: sessionmaker[Session],
    box: SecretBox,
    tenant_id: int,
    names: list[str],
    chain: str,
    key_pem: str,
    *,
    when: dt.datetime,
    ari: bool = False,
    issuer: str = "pebble",
    replaces: int | None = None,
) -> int:
    """The record of a given chain and its key (a CA's real certificate, say), written as
    the driver's closing save writes it."""
    with transaction(sessions) as session:
        order_id = session.execute(
            insert(Order).returning(Order.id),
            order_row(
                tenant_id,
                when,
                issuer=issuer,
                domains=",".join(names),
                state=ISSUED,
                acme_orders=1,
                deadline_at=when,
                certificate_pem=chain,
                replaces_certificate_id=replaces,
            ),
        ).scalar_one()
        key = key_pem.encode("ascii")
        session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(key_encrypted=box.encrypt(key, order_key_owner(order_id)))
        )
        record = issued_certificate(chain, when, ari=ari)
        return record_issued(session.connection(), order_id, record)
