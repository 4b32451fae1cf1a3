"""What the console's pages read. Every query of a tenant's objects filters on its tenant id
(operators pass None and see all); an object of another tenant reads exactly like an unknown
one. Lists are bounded and read through indexes, so a page costs the same at 100k rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from certok.console.cert_queries import CERT_COLUMNS, CertificateRow, certificate_rows
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
from certok.order_states import FAILURE, ISSUED, ORDER_STATES, PENDING

PAGE_ROWS = 50


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
        select(*CERT_COLUMNS)
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
        Order.state == FAILURE,
        Order.created_at >= now - dt.timedelta(days=7),
    )
    return Dashboard(
        expiring=certificate_rows(session, expiring, now, names=False),
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

        failure = last(FAILURE)
        reason = None
        if failure is not None:
            reason = session.scalar(
                select(Order.reason)
                .where(
                    Order.issuer == issuer,
                    Order.state == FAILURE,
                    Order.finished_at == failure,
                )
                .limit(1)
            )
        pending = session.scalar(
            select(func.count())
            .select_from(Order)
            .where(Order.issuer == issuer, Order.state == PENDING)
        )
        result.append(IssuerHealth(issuer, last(ISSUED), failure, reason, pending or 0))
    return result
