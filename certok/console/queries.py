"""What the console's pages read. Every query of a tenant's objects filters on its tenant id
(operators pass None and see all); an object of another tenant reads exactly like an unknown
one. Lists are bounded and read through indexes, so a page costs the same at 100k rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select, tuple_
from sqlalchemy.orm import Session

from certok.certificates.service import status_of
from certok.db.models import (
    ApiToken,
    Certificate,
    ConsoleUser,
    Delegation,
    DelegationCheck,
    HttpHostBinding,
    Order,
    Tenant,
)

PAGE_ROWS = 50
ORDER_STATES = ("pending", "issued", "failure")


@dataclass(frozen=True)
class OrderRow:
    id: int
    tenant: str | None
    domains: list[str]
    issuer: str
    algorithm: str
    challenge_type: str
    state: str
    reason: str | None
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    finished_at: dt.datetime | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    has_key: bool = False


def _scope(tenant_id: int | None) -> ColumnElement[bool]:
    return Order.tenant_id == tenant_id if tenant_id is not None else Order.id.is_not(None)


_ORDER_COLUMNS = (
    Order.id,
    Order.tenant_id,
    Order.domains,
    Order.issuer,
    Order.algorithm,
    Order.challenge_type,
    Order.state,
    Order.reason,
    Order.attempts,
    Order.created_at,
    Order.next_attempt_at,
    Order.finished_at,
    Order.not_before,
    Order.not_after,
)


def _order_rows(session: Session, statement, names: bool) -> list[OrderRow]:  # type: ignore[no-untyped-def]
    rows = session.execute(statement).all()
    tenant_names: dict[int, str] = {}
    if names and rows:
        ids = {r.tenant_id for r in rows}
        tenant_names = dict(
            session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids))).all()
        )
    return [
        OrderRow(
            id=r.id,
            tenant=tenant_names.get(r.tenant_id),
            domains=r.domains.split(","),
            issuer=r.issuer,
            algorithm=r.algorithm,
            challenge_type=r.challenge_type,
            state=r.state,
            reason=r.reason,
            attempts=r.attempts,
            created_at=r.created_at,
            next_attempt_at=r.next_attempt_at,
            finished_at=r.finished_at,
            not_before=r.not_before,
            not_after=r.not_after,
        )
        for r in rows
    ]


def orders(
    session: Session, tenant_id: int | None, state: str | None, before: int | None
) -> list[OrderRow]:
    """Newest first, PAGE_ROWS at a time (keyset: ids below `before`)."""
    statement = select(*_ORDER_COLUMNS).where(_scope(tenant_id))
    if state in ORDER_STATES:
        statement = statement.where(Order.state == state)
    if before is not None:
        statement = statement.where(Order.id < before)
    statement = statement.order_by(Order.id.desc()).limit(PAGE_ROWS)
    return _order_rows(session, statement, names=tenant_id is None)


def order(session: Session, tenant_id: int | None, order_id: int) -> OrderRow | None:
    statement = select(*_ORDER_COLUMNS, Order.key_encrypted.is_not(None).label("has_key")).where(
        _scope(tenant_id), Order.id == order_id
    )
    rows = _order_rows(session, statement, names=tenant_id is None)
    return rows[0] if rows else None


@dataclass(frozen=True)
class Dashboard:
    expiring: list[CertificateRow]
    failed: list[OrderRow]
    broken: list[DelegationRow]
    delegations: int
    tokens: int


def dashboard(session: Session, tenant_id: int, now: dt.datetime) -> Dashboard:
    expiring = (
        select(*_CERT_COLUMNS)
        .where(
            Certificate.tenant_id == tenant_id,
            Certificate.not_after > now,
            Certificate.revoked_at.is_(None),
            Certificate.replaced_by_id.is_(None),
        )
        .order_by(Certificate.not_after)
        .limit(10)
    )
    failed = select(*_ORDER_COLUMNS).where(
        Order.tenant_id == tenant_id,
        Order.state == "failure",
        Order.created_at >= now - dt.timedelta(days=7),
    )
    return Dashboard(
        expiring=_certificate_rows(session, expiring, now, names=False),
        failed=_order_rows(session, failed.order_by(Order.id.desc()).limit(10), False),
        broken=[d for d in delegations(session, tenant_id) if d.valid is False],
        delegations=session.scalar(
            select(func.count()).select_from(Delegation).where(Delegation.tenant_id == tenant_id)
        )
        or 0,
        tokens=session.scalar(
            select(func.count())
            .select_from(ApiToken)
            .where(ApiToken.tenant_id == tenant_id, ApiToken.revoked_at.is_(None))
        )
        or 0,
    )


@dataclass(frozen=True)
class DelegationRow:
    id: int
    base_name: str
    label: str
    created_at: dt.datetime
    valid: bool | None
    detail: str | None
    checked_at: dt.datetime | None


def delegations(session: Session, tenant_id: int, limit: int = 500) -> list[DelegationRow]:
    rows = session.execute(
        select(
            Delegation.id,
            Delegation.base_name,
            Delegation.label,
            Delegation.created_at,
            DelegationCheck.valid,
            DelegationCheck.detail,
            DelegationCheck.checked_at,
        )
        .outerjoin(DelegationCheck, DelegationCheck.delegation_id == Delegation.id)
        .where(Delegation.tenant_id == tenant_id)
        .order_by(Delegation.base_name)
        .limit(limit)
    ).all()
    return [DelegationRow(*row) for row in rows]


def delegation(session: Session, tenant_id: int, delegation_id: int) -> DelegationRow | None:
    for row in delegations_by_id(session, tenant_id, [delegation_id]):
        return row
    return None


def delegations_by_id(session: Session, tenant_id: int, ids: list[int]) -> list[DelegationRow]:
    rows = session.execute(
        select(
            Delegation.id,
            Delegation.base_name,
            Delegation.label,
            Delegation.created_at,
            DelegationCheck.valid,
            DelegationCheck.detail,
            DelegationCheck.checked_at,
        )
        .outerjoin(DelegationCheck, DelegationCheck.delegation_id == Delegation.id)
        .where(Delegation.tenant_id == tenant_id, Delegation.id.in_(ids))
    ).all()
    return [DelegationRow(*row) for row in rows]


def http_hosts(session: Session, tenant_id: int) -> list[tuple[str, dt.datetime]]:
    return list(
        session.execute(
            select(HttpHostBinding.host, HttpHostBinding.created_at)
            .where(HttpHostBinding.tenant_id == tenant_id)
            .order_by(HttpHostBinding.host)
            .limit(500)
        ).all()
    )


@dataclass(frozen=True)
class TokenRow:
    id: int
    name: str | None
    hint: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


def tokens(session: Session, tenant_id: int) -> list[TokenRow]:
    rows = session.execute(
        select(
            ApiToken.id,
            ApiToken.name,
            ApiToken.hint,
            ApiToken.created_at,
            ApiToken.last_used_at,
            ApiToken.revoked_at,
        )
        .where(ApiToken.tenant_id == tenant_id)
        .order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())
        .limit(200)
    ).all()
    return [TokenRow(*row) for row in rows]


@dataclass(frozen=True)
class TenantRow:
    id: int
    name: str
    disabled: bool
    created_at: dt.datetime
    users: int
    tokens: int
    delegations: int


def tenants(session: Session) -> list[TenantRow]:
    def counts(column, *where) -> dict[int, int]:  # type: ignore[no-untyped-def]
        statement = select(column, func.count()).where(*where).group_by(column)
        return {key: count for key, count in session.execute(statement).all()}

    users = counts(ConsoleUser.tenant_id, ConsoleUser.tenant_id.is_not(None))
    active = counts(ApiToken.tenant_id, ApiToken.revoked_at.is_(None))
    delegated = counts(Delegation.tenant_id)
    return [
        TenantRow(
            t.id,
            t.name,
            t.disabled,
            t.created_at,
            users.get(t.id, 0),
            active.get(t.id, 0),
            delegated.get(t.id, 0),
        )
        for t in session.scalars(select(Tenant).order_by(Tenant.name).limit(1000))
    ]


@dataclass(frozen=True)
class IssuerHealth:
    issuer: str
    last_success: dt.datetime | None
    last_failure: dt.datetime | None
    last_reason: str | None
    pending: int


def issuer_health(session: Session, issuers: list[str]) -> list[IssuerHealth]:
    """Per CA: when an order last succeeded and last failed (and why), from the orders."""
    result = []
    for issuer in issuers:

        def last(state: str, issuer: str = issuer) -> dt.datetime | None:
            return session.scalar(
                select(func.max(Order.finished_at)).where(
                    Order.issuer == issuer, Order.state == state
                )
            )

        failure = last("failure")
        reason = None
        if failure is not None:
            reason = session.scalar(
                select(Order.reason)
                .where(
                    Order.issuer == issuer,
                    Order.state == "failure",
                    Order.finished_at == failure,
                )
                .limit(1)
            )
        pending = session.scalar(
            select(func.count())
            .select_from(Order)
            .where(Order.issuer == issuer, Order.state == "pending")
        )
        result.append(IssuerHealth(issuer, last("issued"), failure, reason, pending or 0))
    return result


# --- certificate records (certok/certificates/) ------------------------------------------------
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


_CERT_COLUMNS = (
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


def _certificate_rows(
    session: Session, statement, now: dt.datetime, names: bool
) -> list[CertificateRow]:  # type: ignore[no-untyped-def]
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
    statement = select(*_CERT_COLUMNS)
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
    return _certificate_rows(session, statement.limit(PAGE_ROWS), now, names=tenant_id is None)


def certificate_record(
    session: Session, tenant_id: int | None, certificate_id: int, now: dt.datetime
) -> CertificateRow | None:
    statement = select(*_CERT_COLUMNS).where(Certificate.id == certificate_id)
    if tenant_id is not None:
        statement = statement.where(Certificate.tenant_id == tenant_id)
    rows = _certificate_rows(session, statement, now, names=tenant_id is None)
    return rows[0] if rows else None


def certificate_files(
    session: Session, tenant_id: int, certificate_id: int
) -> tuple[str, bytes, int] | None:
    """(chain PEM, encrypted key, order id the key is bound to), or None."""
    row = session.execute(
        select(Certificate.certificate_pem, Certificate.key_encrypted, Certificate.order_id).where(
            Certificate.id == certificate_id, Certificate.tenant_id == tenant_id
        )
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
