"""The console's reads of certificate records (certok/certificates/): lists through
(tenant_id, not_after) or the primary key, one record, its files. Tenant-scoped like
queries.py: another tenant's id reads like an unknown one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Executable, select, tuple_
from sqlalchemy.orm import Session

from certok.certificates.service import status_of
from certok.db.models import Certificate, CertificateSecret, Tenant

PAGE_ROWS = 50


@dataclass(frozen=True)
class CertificateRow:
    id: int
    tenant: str | None
    domains: list[str]
    issuer: str
    algorithm: str
    profile: str | None
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    renew_at: dt.datetime
    status: str
    order_id: int
    replaces: int | None
    replaced_by: int | None
    revoke_pending: bool
    revoke_error: str | None
    ari_window_start: dt.datetime | None = None
    ari_window_end: dt.datetime | None = None
    ari_error: str | None = None


CERT_COLUMNS = (
    Certificate.id,
    Certificate.tenant_id,
    Certificate.domains,
    Certificate.issuer,
    Certificate.key_type,
    Certificate.profile,
    Certificate.serial,
    Certificate.not_before,
    Certificate.not_after,
    Certificate.renew_at,
    Certificate.revoked_at,
    Certificate.replaced_by_id,
    Certificate.replaces_id,
    Certificate.order_id,
    Certificate.revoke_requested_at,
    Certificate.revoke_error,
    Certificate.ari_window_start,
    Certificate.ari_window_end,
    Certificate.ari_error,
)


def certificate_rows(
    session: Session, statement: Executable, now: dt.datetime, names: bool
) -> list[CertificateRow]:
    rows = session.execute(statement).all()
    tenant_names: dict[int, str] = {}
    if names and rows:
        ids = {r.tenant_id for r in rows}
        found = session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids))).all()
        tenant_names = {key: name for key, name in found}
    return [
        CertificateRow(
            id=r.id,
            tenant=tenant_names.get(r.tenant_id),
            domains=r.domains.split(","),
            issuer=r.issuer,
            algorithm=r.key_type,
            profile=r.profile,
            serial=r.serial,
            not_before=r.not_before,
            not_after=r.not_after,
            renew_at=r.renew_at,
            status=status_of(r, now),
            order_id=r.order_id,
            replaces=r.replaces_id,
            replaced_by=r.replaced_by_id,
            revoke_pending=r.revoke_requested_at is not None and r.revoked_at is None,
            revoke_error=r.revoke_error,
            ari_window_start=r.ari_window_start,
            ari_window_end=r.ari_window_end,
            ari_error=r.ari_error,
        )
        for r in rows
    ]


def certificate_records(
    session: Session,
    tenant_id: int | None,
    now: dt.datetime,
    after: int | None,
    live_only: bool,
) -> list[CertificateRow]:
    """A page of certificates after the one with id `after` (keyset: no OFFSET to walk).

    A tenant's by expiry (soonest first; with `live_only` neither revoked, replaced nor
    expired), through (tenant_id, not_after); all tenants' newest first, by id."""
    statement = select(*CERT_COLUMNS)
    if tenant_id is not None:
        statement = statement.where(Certificate.tenant_id == tenant_id)
        if live_only:
            statement = statement.where(
                Certificate.not_after > now,
                Certificate.revoked_at.is_(None),
                Certificate.replaced_by_id.is_(None),
            )
        if after is not None:
            mark = session.scalar(
                select(Certificate.not_after).where(
                    Certificate.id == after, Certificate.tenant_id == tenant_id
                )
            )
            if mark is not None:
                statement = statement.where(
                    tuple_(Certificate.not_after, Certificate.id) > tuple_(mark, after)
                )
        statement = statement.order_by(Certificate.not_after, Certificate.id)
    else:
        if after is not None:
            statement = statement.where(Certificate.id < after)
        statement = statement.order_by(Certificate.id.desc())
    return certificate_rows(session, statement.limit(PAGE_ROWS), now, names=tenant_id is None)


def certificate_record(
    session: Session, tenant_id: int | None, certificate_id: int, now: dt.datetime
) -> CertificateRow | None:
    statement = select(*CERT_COLUMNS).where(Certificate.id == certificate_id)
    if tenant_id is not None:
        statement = statement.where(Certificate.tenant_id == tenant_id)
    rows = certificate_rows(session, statement, now, names=tenant_id is None)
    return rows[0] if rows else None


def certificate_files(
    session: Session, tenant_id: int, certificate_id: int
) -> tuple[str, bytes, int] | None:
    """(chain PEM, encrypted key, order id the key is bound to), or None."""
    row = session.execute(
        select(
            CertificateSecret.certificate_pem, CertificateSecret.key_encrypted, Certificate.order_id
        )
        .join(CertificateSecret, CertificateSecret.certificate_id == Certificate.id)
        .where(Certificate.id == certificate_id, Certificate.tenant_id == tenant_id)
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def certificate_of_order(session: Session, tenant_id: int | None, order_id: int) -> int | None:
    # By order_id alone (its index), the tenant checked on the row: with the tenant in the
    # WHERE clause SQLite may pick the (tenant_id, not_after) index and walk a whole tenant.
    rows = session.execute(
        select(Certificate.id, Certificate.tenant_id).where(Certificate.order_id == order_id)
    ).all()
    for row in rows:
        if tenant_id is None or row.tenant_id == tenant_id:
            return int(row.id)
    return None
