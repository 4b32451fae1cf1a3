"""The issuing save on PostgreSQL: one statement instead of five.

Marking an order issued writes the order's row (under its lease), the certificate's record,
its chain and key, its names, the mark on the certificate it replaces, and removes the
order's challenge material (`certok.orders.rows.save_job`, `certok.certificates.records`).
Sent one by one, those are five round trips inside the issuing transaction, each a turn of
the GIL for the worker thread and a trip through SQLAlchemy and psycopg. PostgreSQL runs
data-modifying WITH clauses of one statement together, on one snapshot: the record is made
from what the order's UPDATE returns, so nothing is written when the lease is lost (the
UPDATE matches no row and every clause after it reads nothing), and the statement returns
the new certificate's id, or no row then.

The rest of the issuing transaction (the events outbox's hook) runs after it, in the same
transaction, and sees what it wrote.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    String,
    bindparam,
    delete,
    func,
    insert,
    select,
    true,
    update,
)

from certok.certificates.records import RECORD_COLUMNS, IssuedCertificate
from certok.db.cursor_statements import CursorStatement
from certok.db.models import (
    AcmeAccount,
    Certificate,
    CertificateName,
    CertificateSecret,
    ChallengeRecord,
    Order,
)
from certok.orders.fenced_save import fenced_save

_ORDERS = Order.__table__
_RECORDS = ChallengeRecord.__table__
_CERTIFICATES = Certificate.__table__
_SECRETS = CertificateSecret.__table__
_NAMES = CertificateName.__table__
_ACCOUNTS = AcmeAccount.__table__

# One statement per set of the order's saved columns, built once.
_BUILT: dict[tuple[str, ...], CursorStatement] = {}


def issue_in_one_statement(
    connection: Connection,
    *,
    order_id: int,
    worker_id: str,
    values: dict[str, Any],
    certificate: IssuedCertificate,
) -> tuple[int, bytes | None] | None:
    """Save `values` on the order if `worker_id` holds its lease, record `certificate` and
    remove the order's challenge material, in one statement (PostgreSQL only). Returns the
    certificate record's id and the order's key as stored (for the waiting requests'
    view, certok/orders/finished_row.py), or None when the lease was lost (nothing was
    written)."""
    statement = _statement(tuple(sorted(values)))
    params = {f"v_{key}": value for key, value in values.items()}
    params.update(
        b_order_id=order_id,
        b_worker_id=worker_id,
        b_serial=certificate.serial,
        b_not_before=certificate.not_before,
        b_not_after=certificate.not_after,
        b_ari_cert_id=certificate.ari_cert_id,
        b_renew_at=certificate.renew_at,
        b_ari=certificate.ari,
        b_next_check_at=certificate.next_check_at,
        b_created_at=certificate.created_at,
        b_fullchain=certificate.fullchain,
        b_names=list(certificate.names),
    )
    found = statement.run(connection, params).first()
    return None if found is None else (int(found[0]), found[1])


def _statement(columns: tuple[str, ...]) -> CursorStatement:
    built = _BUILT.get(columns)
    if built is not None:
        return built
    # The order's columns the record takes come from the UPDATE's RETURNING: the other
    # clauses see the table as it was before the statement (one snapshot), and the columns
    # read here are ones the save does not change.
    saved = fenced_save(
        columns,
        [
            _ORDERS.c.id,
            _ORDERS.c.tenant_id,
            _ORDERS.c.domains,
            _ORDERS.c.issuer,
            _ORDERS.c.algorithm,
            _ORDERS.c.profile,
            _ORDERS.c.replaces_certificate_id,
            _ORDERS.c.key_encrypted,
        ],
    )
    c = _CERTIFICATES.c
    record = (
        insert(_CERTIFICATES)
        .from_select(
            RECORD_COLUMNS,
            select(
                saved.c.tenant_id,
                saved.c.domains,
                saved.c.issuer,
                _ACCOUNTS.c.id,
                _ACCOUNTS.c.account_url,
                bindparam("b_serial", type_=c.serial.type),
                bindparam("b_not_before", type_=c.not_before.type),
                bindparam("b_not_after", type_=c.not_after.type),
                saved.c.algorithm,
                saved.c.profile,
                bindparam("b_ari_cert_id", type_=c.ari_cert_id.type),
                saved.c.id,
                saved.c.replaces_certificate_id,
                bindparam("b_renew_at", type_=c.renew_at.type),
                bindparam("b_ari", type_=c.ari.type),
                bindparam("b_next_check_at", type_=c.next_check_at.type),
                bindparam("b_created_at", type_=c.created_at.type),
            ).select_from(saved.outerjoin(_ACCOUNTS, _ACCOUNTS.c.issuer == saved.c.issuer)),
        )
        .returning(c.id, c.tenant_id, c.replaces_id)
        .cte("record")
    )
    # The chain, and the order's key ciphertext as is (see certificates/records.py).
    secrets = insert(_SECRETS).from_select(
        ["certificate_id", "key_encrypted", "certificate_pem"],
        select(
            record.c.id,
            saved.c.key_encrypted,
            bindparam("b_fullchain", type_=_SECRETS.c.certificate_pem.type),
        ).select_from(record.join(saved, true())),
    )
    listed = func.unnest(bindparam("b_names", type_=ARRAY(String))).table_valued("name")
    names = insert(_NAMES).from_select(
        ["certificate_id", "tenant_id", "name"],
        select(record.c.id, record.c.tenant_id, listed.c.name).select_from(
            record.join(listed, true())
        ),
    )
    # RFC 9773 §4.2: stop checking a certificate once it has been replaced; the predecessor
    # is the same tenant's and still unreplaced (as `record_issued` marks it).
    replaced = (
        update(_CERTIFICATES)
        .where(
            _CERTIFICATES.c.id == record.c.replaces_id,
            _CERTIFICATES.c.tenant_id == record.c.tenant_id,
            _CERTIFICATES.c.replaced_by_id.is_(None),
        )
        .values(replaced_by_id=record.c.id, next_check_at=None)
    )
    # What every solver's `cleanup(connection, order_id, None)` does: all the order's rows.
    dropped = delete(_RECORDS).where(_RECORDS.c.order_id.in_(select(saved.c.id)))
    statement = (
        select(record.c.id, saved.c.key_encrypted)
        .select_from(record.join(saved, true()))
        .add_cte(
            secrets.cte("secrets"),
            names.cte("names"),
            replaced.cte("replaced"),
            dropped.cte("dropped"),
        )
    )
    built = CursorStatement(statement)
    _BUILT[columns] = built
    return built
