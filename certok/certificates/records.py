"""Certificate records: made in the transaction that marks an order issued.

The driver computes an `IssuedCertificate` (facts of the chain, the renewal clock) in its own
thread and hands it to `record_issued`, which its closing save runs inside the same write
transaction as the order's `issued` state: a crash leaves either both or neither. The job is
plain database work on plain arguments (it may run pickled in the writer process, and run a
second time after a batch rolled back).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import Connection, bindparam, insert, select, update

from certok.certificates import timing
from certok.certificates.ari import cert_id
from certok.db.models import AcmeAccount, Certificate, CertificateName, CertificateSecret, Order

CERTIFICATES = Certificate.__table__
_ORDERS = Order.__table__
_NAMES = CertificateName.__table__
_INSERT_NAMES = insert(_NAMES)
_SECRETS = CertificateSecret.__table__
# The chain, and the order's key ciphertext as is, in one INSERT ... SELECT.
_INSERT_SECRETS = insert(_SECRETS).from_select(
    ["certificate_id", "key_encrypted", "certificate_pem"],
    select(
        bindparam("b_certificate_id", type_=_SECRETS.c.certificate_id.type),
        _ORDERS.c.key_encrypted,
        bindparam("b_fullchain", type_=_SECRETS.c.certificate_pem.type),
    ).where(_ORDERS.c.id == bindparam("b_order_id")),
)
_ACCOUNTS = AcmeAccount.__table__

# One INSERT ... SELECT: the record takes the order's columns (and the issuer's account) in
# the statement that writes it, so issuing costs one statement more, not a read and a write.
# The certificate record's columns an issuing save fills, in the order both its statements
# (`_INSERT` here, `certok.orders.issuing_save` on PostgreSQL) select them.
RECORD_COLUMNS = [
    "tenant_id",
    "domains",
    "issuer",
    "acme_account_id",
    "account_url",
    "serial",
    "not_before",
    "not_after",
    "key_type",
    "profile",
    "ari_cert_id",
    "order_id",
    "replaces_id",
    "renew_at",
    "ari",
    "next_check_at",
    "created_at",
]
_FROM_ORDER = (
    select(
        _ORDERS.c.tenant_id,
        _ORDERS.c.domains,
        _ORDERS.c.issuer,
        _ACCOUNTS.c.id,
        _ACCOUNTS.c.account_url,
        bindparam("b_serial", type_=CERTIFICATES.c.serial.type),
        bindparam("b_not_before", type_=CERTIFICATES.c.not_before.type),
        bindparam("b_not_after", type_=CERTIFICATES.c.not_after.type),
        _ORDERS.c.algorithm,
        _ORDERS.c.profile,
        bindparam("b_ari_cert_id", type_=CERTIFICATES.c.ari_cert_id.type),
        _ORDERS.c.id,
        _ORDERS.c.replaces_certificate_id,
        bindparam("b_renew_at", type_=CERTIFICATES.c.renew_at.type),
        bindparam("b_ari", type_=CERTIFICATES.c.ari.type),
        bindparam("b_next_check_at", type_=CERTIFICATES.c.next_check_at.type),
        bindparam("b_created_at", type_=CERTIFICATES.c.created_at.type),
    )
    .select_from(_ORDERS.outerjoin(_ACCOUNTS, _ACCOUNTS.c.issuer == _ORDERS.c.issuer))
    .where(_ORDERS.c.id == bindparam("b_order_id"))
)
_INSERT = (
    insert(CERTIFICATES)
    .from_select(
        RECORD_COLUMNS,
        _FROM_ORDER,
    )
    .returning(CERTIFICATES.c.id, CERTIFICATES.c.tenant_id, CERTIFICATES.c.replaces_id)
)
# The predecessor is the same tenant's, and still unreplaced: a second renewal of the same
# certificate leaves the first successor's mark in place.
_MARK_REPLACED = update(CERTIFICATES).where(
    CERTIFICATES.c.id == bindparam("b_id"),
    CERTIFICATES.c.tenant_id == bindparam("b_tenant_id"),
    CERTIFICATES.c.replaced_by_id.is_(None),
)


@dataclass(frozen=True)
class IssuedCertificate:
    """What the record of a certificate just issued holds beyond its order's columns."""

    fullchain: str
    # The names the certificate holds (its SANs), for the list's domain filter.
    names: tuple[str, ...]
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    ari_cert_id: str | None
    ari: bool
    renew_at: dt.datetime
    next_check_at: dt.datetime | None
    created_at: dt.datetime


def issued_certificate(fullchain: str, now: dt.datetime, *, ari: bool) -> IssuedCertificate:
    """The facts of a full chain (leaf first) and its first renewal clock."""
    leaf = x509.load_pem_x509_certificates(fullchain.encode("ascii"))[0]
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    identifier = cert_id(leaf)
    clock = timing.initial(not_before, not_after, now, ari=ari and identifier is not None)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(
            dict.fromkeys(str(name).lower() for name in san.get_values_for_type(x509.DNSName))
        )
    except x509.ExtensionNotFound:
        names = ()
    return IssuedCertificate(
        fullchain=fullchain,
        names=names,
        serial=format(leaf.serial_number, "x"),
        not_before=not_before,
        not_after=not_after,
        ari_cert_id=identifier,
        ari=ari and identifier is not None,
        renew_at=clock.renew_at,
        next_check_at=clock.next_check_at,
        created_at=now,
    )


def record_issued(connection: Connection, order_id: int, issued: IssuedCertificate) -> int:
    """Insert the certificate of `order_id` (whose row is being marked issued in this
    transaction) and mark the certificate it replaces. Returns the new record's id."""
    row = connection.execute(
        _INSERT,
        {
            "b_order_id": order_id,
            "b_serial": issued.serial,
            "b_not_before": issued.not_before,
            "b_not_after": issued.not_after,
            "b_ari_cert_id": issued.ari_cert_id,
            "b_renew_at": issued.renew_at,
            "b_ari": issued.ari,
            "b_next_check_at": issued.next_check_at,
            "b_created_at": issued.created_at,
        },
    ).one()
    connection.execute(
        _INSERT_SECRETS,
        {"b_certificate_id": row.id, "b_fullchain": issued.fullchain, "b_order_id": order_id},
    )
    if issued.names:
        connection.execute(
            _INSERT_NAMES,
            [
                {"certificate_id": row.id, "tenant_id": row.tenant_id, "name": name}
                for name in issued.names
            ],
        )
    if row.replaces_id is not None:
        # RFC 9773 §4.2: stop checking a certificate once it has been replaced.
        connection.execute(
            _MARK_REPLACED,
            {
                "b_id": row.replaces_id,
                "b_tenant_id": row.tenant_id,
                "replaced_by_id": row.id,
                "next_check_at": None,
            },
        )
    return int(row.id)
