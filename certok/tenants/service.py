"""Tenants and their API tokens.

A token is 32 hex characters (128 random bits; the httpsok token shape). Only its SHA-256
digest is stored; a lookup is by digest, so checking a token costs one hash and one indexed
read, and no bcrypt-style work that would let anyone burn our CPU with bad tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.db.models import ApiToken, ChallengeRecord, Order, Tenant
from certok.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from certok.order_states import FAILURE, PENDING

TOKEN_PATTERN = re.compile(r"^[0-9a-f]{32}$")
TENANT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class TenantRef:
    id: int
    name: str
    http_handle: str = ""


@dataclass(frozen=True)
class TenantInfo:
    id: int
    name: str
    disabled: bool
    active_tokens: int


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_token() -> str:
    return secrets.token_hex(16)


def create_tenant(session: Session, name: str, clock: Clock = utcnow) -> TenantRef:
    name = name.strip().lower()
    if not TENANT_NAME_PATTERN.match(name):
        raise InvalidRequest(
            f"tenant name {name!r} is not valid: use 1-63 characters of a-z, 0-9, '.', '_', '-'"
        )
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"tenant {name!r} already exists: pick another name")
    tenant = Tenant(name=name, disabled=False, http_handle=secrets.token_hex(8), created_at=clock())
    session.add(tenant)
    session.flush()
    return TenantRef(tenant.id, tenant.name, tenant.http_handle)


def find_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name.strip().lower()))
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}: see `certok tenant list`")
    return tenant


def list_tenants(session: Session) -> list[TenantInfo]:
    result = []
    for tenant in session.scalars(select(Tenant).order_by(Tenant.name)):
        active = session.scalars(
            select(ApiToken.id).where(
                ApiToken.tenant_id == tenant.id, ApiToken.revoked_at.is_(None)
            )
        ).all()
        result.append(TenantInfo(tenant.id, tenant.name, tenant.disabled, len(active)))
    return result


def set_disabled(session: Session, name: str, disabled: bool, clock: Clock = utcnow) -> int:
    """Disable or enable a tenant. Disabling also stops its running orders, in the same
    transaction: each fails with the reason, its challenge material goes (the DNS server and
    the HTTP-01 responder stop serving it), and a worker driving one loses its lease, so its
    next save is refused (a request to the CA it sends before that save, within one poll
    interval of its last one, may still go out). Returns how many orders were stopped."""
    tenant = find_tenant(session, name)
    tenant.disabled = disabled
    if not disabled:
        return 0
    running = select(Order.id).where(Order.tenant_id == tenant.id, Order.state == PENDING)
    session.execute(
        delete(ChallengeRecord).where(ChallengeRecord.order_id.in_(running)),
        execution_options={"synchronize_session": False},
    )
    stop = (
        update(Order)
        .where(Order.tenant_id == tenant.id, Order.state == PENDING)
        .values(
            state=FAILURE,
            reason="stopped: the tenant was disabled by the operator; enable it and apply again",
            finished_at=clock(),
            lease_owner=None,
            lease_until=None,
        )
    )
    # An UPDATE's result is a CursorResult, which has the count (Session types it as Result).
    stopped = cast(
        CursorResult[Any],
        session.execute(stop, execution_options={"synchronize_session": False}),
    )
    return stopped.rowcount


def issue_token(session: Session, tenant_name: str, clock: Clock = utcnow) -> str:
    """Create a token for the tenant and return it; it is shown this once and never stored."""
    tenant = find_tenant(session, tenant_name)
    token = new_token()
    session.add(
        ApiToken(
            tenant_id=tenant.id, digest=token_digest(token), hint=token[:6], created_at=clock()
        )
    )
    return token


def revoke_token(session: Session, token_or_hint: str, clock: Clock = utcnow) -> int:
    """Revoke by the full token or by its first characters (as `certok tenant list` shows)."""
    value = token_or_hint.strip().lower()
    if TOKEN_PATTERN.match(value):
        rows = session.scalars(select(ApiToken).where(ApiToken.digest == token_digest(value))).all()
    elif len(value) >= 6:
        rows = session.scalars(select(ApiToken).where(ApiToken.hint == value[:6])).all()
    else:
        raise InvalidRequest("give the whole token or at least its first 6 characters")
    live = [row for row in rows if row.revoked_at is None]
    if not live:
        raise NotFound("no active token matches: nothing was revoked")
    if len(live) > 1:
        raise Conflict("several tokens share those characters: give the whole token")
    live[0].revoked_at = clock()
    return live[0].tenant_id


def authenticate(session: Session, token: str | None) -> TenantRef:
    """The tenant owning an active token, or Unauthenticated. Same cost for every bad token."""
    if not token:
        raise Unauthenticated("missing token: send the header `httpsok-token: <your token>`")
    token = token.strip().lower()
    if not TOKEN_PATTERN.match(token):
        raise Unauthenticated("invalid token: a token is 32 hex characters, see your console")
    digest = token_digest(token)
    row = session.execute(
        select(
            ApiToken.digest,
            ApiToken.revoked_at,
            Tenant.id,
            Tenant.name,
            Tenant.disabled,
            Tenant.http_handle,
        )
        .join(Tenant, Tenant.id == ApiToken.tenant_id)
        .where(ApiToken.digest == digest)
    ).first()
    # The index lookup already matched the digest; compare again in constant time so the
    # check does not depend on how the database compares strings.
    if row is None or not hmac.compare_digest(row.digest, digest) or row.revoked_at is not None:
        raise Unauthenticated("invalid or revoked token: ask the operator for a new one")
    if row.disabled:
        raise Unauthenticated("this tenant is disabled: contact the operator")
    return TenantRef(row.id, row.name, row.http_handle)
