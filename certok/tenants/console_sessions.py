"""Console sessions, kept server-side: the cookie holds a random secret, the database its
SHA-256 digest. Signing out, a password change, or disabling the user or its tenant deletes
the rows, so the cookie stops working at once (a signed client-side cookie cannot do that).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.db.models import ConsoleSession, ConsoleUser, Tenant
from certok.tenants.users import secret_digest

MAX_SECRET_CHARS = 100


@dataclass(frozen=True)
class SignedIn:
    session_id: int
    user_id: int
    email: str
    operator: bool
    tenant_id: int | None
    tenant_name: str | None
    tenant_handle: str | None
    mfa_pending: bool
    totp: bool


def start_session(
    session: Session, user_id: int, hours: float, *, mfa_pending: bool, clock: Clock = utcnow
) -> str:
    """A new session for the user; returns the cookie's secret (never stored)."""
    secret = secrets.token_urlsafe(32)
    now = clock()
    session.add(
        ConsoleSession(
            digest=secret_digest(secret),
            user_id=user_id,
            mfa_pending=mfa_pending,
            created_at=now,
            expires_at=now + dt.timedelta(hours=hours),
        )
    )
    return secret


def find_session(session: Session, secret: str | None, clock: Clock = utcnow) -> SignedIn | None:
    """Who holds this cookie: None when unknown, expired, or the user or tenant is disabled."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        return None
    row = session.execute(
        select(
            ConsoleSession.id,
            ConsoleSession.expires_at,
            ConsoleSession.mfa_pending,
            ConsoleUser.id.label("user_id"),
            ConsoleUser.email,
            ConsoleUser.operator,
            ConsoleUser.disabled,
            ConsoleUser.password_hash,
            ConsoleUser.totp_encrypted,
            ConsoleUser.tenant_id,
            Tenant.name.label("tenant_name"),
            Tenant.http_handle,
            Tenant.disabled.label("tenant_disabled"),
        )
        .join(ConsoleUser, ConsoleUser.id == ConsoleSession.user_id)
        .outerjoin(Tenant, Tenant.id == ConsoleUser.tenant_id)
        .where(ConsoleSession.digest == secret_digest(secret))
    ).first()
    if row is None or row.expires_at <= clock() or row.disabled or row.password_hash is None:
        return None
    if row.tenant_id is not None and row.tenant_disabled:
        return None
    if row.tenant_id is None and not row.operator:
        return None
    return SignedIn(
        session_id=row.id,
        user_id=row.user_id,
        email=row.email,
        operator=row.operator,
        tenant_id=row.tenant_id,
        tenant_name=row.tenant_name,
        tenant_handle=row.http_handle,
        mfa_pending=row.mfa_pending,
        totp=row.totp_encrypted is not None,
    )


def end_session(session: Session, secret: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.digest == secret_digest(secret)))


def end_user_sessions(session: Session, user_id: int) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))


def end_tenant_sessions(session: Session, tenant_id: int) -> None:
    users = select(ConsoleUser.id).where(ConsoleUser.tenant_id == tenant_id)
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id.in_(users)))


def purge_expired(session: Session, clock: Clock = utcnow) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= clock()))
