"""The subject apply shows (certok.crypto.certificate_subject): the leaf's CommonName, else its
first DNS name, the same as certificate_facts says; and apply's timestamps (order_answers)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certok.api.order_answers import order_data
from certok.crypto import certificate_facts, certificate_subject, generate_private_key
from certok.orders.service import OrderView
from tests.kit.certs import FakeCa


def _leaf(common_name: str | None, names: list[str]) -> str:
    ca = FakeCa.create()
    key = generate_private_key("ECC")
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2026, 2, 15, tzinfo=dt.UTC))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False
        )
    leaf = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    chain = ca.certificate.public_bytes(serialization.Encoding.PEM)
    return (leaf + chain).decode("ascii")


@pytest.mark.parametrize(
    ("common_name", "names", "subject"),
    [
        ("www.example.com", ["example.com", "www.example.com"], "www.example.com"),
        # Profiles that leave the CommonName out (Let's Encrypt's shortlived, tlsserver).
        (None, ["b.example.com", "a.example.com"], "b.example.com"),
        (None, [], ""),
    ],
)
def test_the_subject_is_the_leafs_common_name_else_its_first_dns_name(
    common_name: str | None, names: list[str], subject: str
) -> None:
    chain = _leaf(common_name, names)
    assert certificate_subject(chain) == subject == certificate_facts(chain).subject


def test_apply_writes_times_as_the_seed_does() -> None:
    view = OrderView(
        id=1,
        status="issued",
        issuer="letsencrypt",
        domains="a.example.com",
        reason=None,
        subject="a.example.com",
        not_before=dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        not_after=dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
        certificate="-",
        private_key="-",
        certificate_id=7,
        renew_at=None,
    )
    data = order_data(view)
    assert (data["notBefore"], data["notAfter"], data["renewAt"]) == (
        "2026-01-02 03:04:05",
        "2026-12-31 23:59:59",
        None,
    )
