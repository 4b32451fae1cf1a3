"""HTTP-01 key authorizations and host bindings, as the responder and the verifier see them.

Two redirect forms reach the responder:
- tenant-bound (recommended): `/v1/dv/<tenant handle>/<host>/<token>`; only that tenant's
  orders are answered there;
- host-only (the seed's block): `/v1/dv/<host>/<token>`; the host belongs to the first tenant
  that verified it through this form, and only that tenant's orders are answered.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.db.models import ChallengeRecord, HttpHostBinding, Order, Tenant
from certok.order_states import PENDING

HTTP01_KIND = "http-01"
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
HANDLE_PATTERN = re.compile(r"^[0-9a-f]{16}$")


def record_name(host: str, token: str) -> str:
    return f"{host.lower()}/{token}"


def key_authorization(
    session: Session, host: str, token: str, handle: str | None = None
) -> str | None:
    """The key authorization to serve for host/token through one redirect form, or None."""
    if not TOKEN_PATTERN.match(token) or (handle is not None and not HANDLE_PATTERN.match(handle)):
        return None
    query = (
        select(ChallengeRecord.value)
        .join(Order, Order.id == ChallengeRecord.order_id)
        .where(
            ChallengeRecord.kind == HTTP01_KIND,
            ChallengeRecord.name == record_name(host, token),
            # Only running orders' material: a stopped order's (its tenant disabled) is not
            # served even if a worker that lost its lease wrote it after the stop.
            Order.state == PENDING,
        )
    )
    if handle is not None:
        query = query.join(Tenant, Tenant.id == Order.tenant_id).where(Tenant.http_handle == handle)
    else:
        query = query.join(
            HttpHostBinding,
            (HttpHostBinding.host == host.lower()) & (HttpHostBinding.tenant_id == Order.tenant_id),
        )
    return session.scalars(query.limit(1)).first()


def host_owner(session: Session, host: str) -> int | None:
    return session.scalar(select(HttpHostBinding.tenant_id).where(HttpHostBinding.host == host))


def claim_host(session: Session, host: str, tenant_id: int, clock: Clock = utcnow) -> int:
    """Bind `host` to `tenant_id` unless already bound; returns the owning tenant's id."""
    owner = host_owner(session, host)
    if owner is not None:
        return owner
    try:
        with session.begin_nested():
            session.add(HttpHostBinding(host=host, tenant_id=tenant_id, created_at=clock()))
    except IntegrityError:  # another request bound it first
        owner = host_owner(session, host)
        assert owner is not None
        return owner
    return tenant_id


def release_host(session: Session, host: str) -> bool:
    binding = session.scalar(select(HttpHostBinding).where(HttpHostBinding.host == host.lower()))
    if binding is None:
        return False
    session.delete(binding)
    return True
