"""Reading a tenant's certificates and recording revocation requests (the API's side).

Every query is scoped by tenant: another tenant's id reads exactly like an unknown one.
Statuses are derived at read time from the record and `now`:

- ``revoked``: the CA confirmed the revocation;
- ``replaced``: a renewal of it was issued;
- ``expired``: past notAfter;
- ``expiring``: past renewAt (time to renew);
- ``valid``: otherwise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, bindparam, exists, func, select, update
from sqlalchemy.orm import Session

from certok.crypto import SecretBox, order_key_owner
from certok.db.models import Certificate, CertificateName, CertificateSecret
from certok.errors import InvalidRequest, NotFound

VALID = "valid"
EXPIRING = "expiring"
EXPIRED = "expired"
REVOKED = "revoked"
REPLACED = "replaced"
STATUSES = (VALID, EXPIRING, EXPIRED, REVOKED, REPLACED)
MAX_PAGE_SIZE = 100

# RFC 5280 §5.3.1 CRLReason codes a subscriber may ask for (CA/B Forum BR §7.2.2; Let's
# Encrypt accepts these): unspecified, keyCompromise, affiliationChanged, superseded,
# cessationOfOperation.
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}

_C = Certificate.__table__
_NAMES = CertificateName.__table__
_SECRETS = CertificateSecret.__table__
_LIST_COLUMNS = (
    _C.c.id,
    _C.c.domains,
    _C.c.issuer,
    _C.c.key_type,
    _C.c.profile,
    _C.c.not_before,
    _C.c.not_after,
    _C.c.renew_at,
    _C.c.revoked_at,
    _C.c.replaced_by_id,
    _C.c.replaces_id,
    _C.c.serial,
    _C.c.revoke_requested_at,
    _C.c.revoke_error,
)


@dataclass(frozen=True)
class CertificateView:
    id: int
    domains: list[str]
    issuer: str
    algorithm: str
    profile: str | None
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    renew_at: dt.datetime
    status: str
    replaces: int | None
    replaced_by: int | None
    revoke_pending: bool
    revoke_error: str | None
    certificate: str | None = None
    private_key: str | None = None


def status_of(row: Any, now: dt.datetime) -> str:
    if row.revoked_at is not None:
        return REVOKED
    if row.replaced_by_id is not None:
        return REPLACED
    if now >= row.not_after:
        return EXPIRED
    if now >= row.renew_at:
        return EXPIRING
    return VALID


def _status_condition(status: str, now: dt.datetime) -> ColumnElement[bool]:
    live = and_(_C.c.revoked_at.is_(None), _C.c.replaced_by_id.is_(None))
    if status == REVOKED:
        return _C.c.revoked_at.is_not(None)
    if status == REPLACED:
        return and_(_C.c.revoked_at.is_(None), _C.c.replaced_by_id.is_not(None))
    if status == EXPIRED:
        return and_(live, _C.c.not_after <= now)
    if status == EXPIRING:
        # not_after inside coalesce(): without statistics SQLite would take the not_after
        # index (nearly every record is unexpired) and read them all; the few past renew_at
        # are what the (tenant_id, renew_at) index finds.
        unexpired = func.coalesce(_C.c.not_after, _C.c.not_after) > now
        return and_(live, unexpired, _C.c.renew_at <= now)
    return and_(live, _C.c.not_after > now, _C.c.renew_at > now)


def _view(row: Row[*tuple[Any, ...]], now: dt.datetime, **extra: Any) -> CertificateView:
    return CertificateView(
        id=row.id,
        domains=row.domains.split(","),
        issuer=row.issuer,
        algorithm=row.key_type,
        profile=row.profile,
        serial=row.serial,
        not_before=row.not_before,
        not_after=row.not_after,
        renew_at=row.renew_at,
        status=status_of(row, now),
        replaces=row.replaces_id,
        replaced_by=row.replaced_by_id,
        revoke_pending=row.revoke_requested_at is not None and row.revoked_at is None,
        revoke_error=row.revoke_error,
        **extra,
    )


def list_certificates(
    session: Session,
    tenant_id: int,
    now: dt.datetime,
    *,
    page: int = 1,
    size: int = 20,
    domain: str | None = None,
    status: str | None = None,
) -> tuple[int, list[CertificateView]]:
    """(total, one page) of the tenant's certificates, newest first."""
    conditions: list[ColumnElement[bool]] = [_C.c.tenant_id == tenant_id]
    if domain:
        # Whole names only, through the names table's (tenant_id, name) index.
        conditions.append(
            _C.c.id.in_(
                select(_NAMES.c.certificate_id).where(
                    _NAMES.c.tenant_id == tenant_id, _NAMES.c.name == domain
                )
            )
        )
    if status:
        conditions.append(_status_condition(status, now))
    count = select(func.count()).select_from(_C).where(*conditions)
    page_query = (
        select(*_LIST_COLUMNS)
        .where(*conditions)
        .order_by(_C.c.id.desc())
        .limit(size)
        .offset((page - 1) * size)
    )
    total = session.scalar(count) or 0
    rows = session.execute(page_query).all()
    return int(total), [_view(row, now) for row in rows]


def _row(
    session: Session, tenant_id: int, certificate_id: int, *columns: Any
) -> Row[*tuple[Any, ...]]:
    query = select(*_LIST_COLUMNS, *columns).where(
        _C.c.id == certificate_id, _C.c.tenant_id == tenant_id
    )
    if columns:
        query = query.join(_SECRETS, _SECRETS.c.certificate_id == _C.c.id)
    row = session.execute(query).first()
    if row is None:
        raise NotFound(f"certificate {certificate_id} not found: list yours with GET /v1/cert/list")
    return row


def get_certificate(
    session: Session,
    tenant_id: int,
    certificate_id: int,
    now: dt.datetime,
    box: SecretBox | None = None,
) -> CertificateView:
    """One certificate; with `box`, its full chain and decrypted private key as well."""
    if box is None:
        return _view(_row(session, tenant_id, certificate_id), now)
    row = _row(
        session,
        tenant_id,
        certificate_id,
        _SECRETS.c.certificate_pem,
        _SECRETS.c.key_encrypted,
        _C.c.order_id,
    )
    # The key is the order's ciphertext, bound to the order's id (see records.py).
    key = box.decrypt(row.key_encrypted, order_key_owner(row.order_id)).decode("ascii")
    return _view(row, now, certificate=row.certificate_pem, private_key=key)


def revocation_reason(value: Any) -> int:
    """An RFC 5280 reason by name or code, or InvalidRequest listing the accepted ones."""
    if value is None:
        return 0
    if isinstance(value, str) and value in REVOCATION_REASONS:
        return REVOCATION_REASONS[value]
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value in REVOCATION_REASONS.values()
    ):
        return value
    accepted = ", ".join(f"{name} ({code})" for name, code in REVOCATION_REASONS.items())
    raise InvalidRequest(f"reason {value!r} is not accepted: use one of {accepted}")


def request_revocation(
    session: Session, tenant_id: int, certificate_id: int, reason: int, now: dt.datetime
) -> bool:
    """Record that the tenant wants the certificate revoked; the worker asks the CA.

    Returns whether there is anything for the worker to do (False: revoked already).
    """
    row = _row(session, tenant_id, certificate_id)
    if row.revoked_at is not None:
        return False
    if now >= row.not_after:
        raise InvalidRequest(
            f"certificate {certificate_id} expired at {row.not_after:%Y-%m-%d %H:%M:%S} UTC: "
            "CAs do not revoke expired certificates"
        )
    session.execute(
        update(_C)
        .where(_C.c.id == certificate_id, _C.c.tenant_id == tenant_id)
        .values(revoke_reason=reason, revoke_requested_at=now, revoke_error=None)
    )
    return True


def revocation_settled(session: Session, tenant_id: int, certificate_id: int) -> bool:
    """Whether the worker has finished with the request (revoked, or refused by the CA)."""
    row = _row(session, tenant_id, certificate_id)
    return row.revoked_at is not None or row.revoke_requested_at is None


# The certificate a new order renews: the tenant's newest live (not revoked, not replaced)
# certificate whose names are exactly the order's (`renewal_parameters`); built once, every
# new order reads it (certok/certificates/order_profile.py). Through the names' indexes: the
# (tenant, name) index finds the certificates carrying one of the names, and each one's names
# (its certificate_id index) must be as many as the order's, none of them another; so any
# number of the tenant's other certificates sharing that name, expired or live, do not hide
# it.
_ITS_NAMES = _NAMES.alias("its_names")
RENEWED_CERTIFICATE = (
    select(_C.c.id, _C.c.profile, _C.c.issuer)
    .join(_NAMES, _NAMES.c.certificate_id == _C.c.id)
    .where(
        _NAMES.c.tenant_id == bindparam("b_tenant_id"),
        _NAMES.c.name == bindparam("b_name"),
        _C.c.revoked_at.is_(None),
        _C.c.replaced_by_id.is_(None),
        select(func.count()).where(_ITS_NAMES.c.certificate_id == _C.c.id).scalar_subquery()
        == bindparam("b_name_count"),
        ~exists().where(
            _ITS_NAMES.c.certificate_id == _C.c.id,
            _ITS_NAMES.c.name.not_in(bindparam("b_names", expanding=True)),
        ),
    )
    .order_by(_C.c.id.desc())
    .limit(1)
)


def renewal_parameters(domains: list[str]) -> dict[str, Any]:
    """`RENEWED_CERTIFICATE`'s parameters for an order of `domains` (but the tenant's): the
    names as certificates keep them (lower case), looked up by the smallest."""
    names = sorted({domain.lower() for domain in domains})
    return {"b_name": names[0], "b_names": names, "b_name_count": len(names)}
