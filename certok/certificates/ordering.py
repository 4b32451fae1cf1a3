"""newOrder for an order that may renew a certificate: `profile`, and `replaces` (RFC 9773 §5).

`replaces` goes out only when the directory lists renewalInfo, the predecessor is the same
tenant's, has an ARI certID and was issued through the same ACME account: a CA answers 403
when another account issued the predecessor (go-acme/lego#3147). If the CA refuses it all the
same (409 alreadyReplaced, 403, malformed), the order is asked for once more without it: a
renewal must not fail because the CA will not link it to its predecessor.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from certok.db.models import Certificate
from certok.issuance import AcmeProblem, AcmeSession, OrderInfo

log = logging.getLogger(__name__)

_CERTIFICATES = Certificate.__table__
_PREDECESSOR = select(
    _CERTIFICATES.c.ari_cert_id, _CERTIFICATES.c.issuer, _CERTIFICATES.c.account_url
).where(
    _CERTIFICATES.c.id == bindparam("b_id"),
    _CERTIFICATES.c.tenant_id == bindparam("b_tenant_id"),
)
REFUSED_REPLACES_TYPES = frozenset({"alreadyReplaced", "malformed", "unauthorized"})


class OrderFacts(Protocol):
    """What newOrder needs of an order (the driver's snapshot)."""

    @property
    def id(self) -> int: ...
    @property
    def tenant_id(self) -> int: ...
    @property
    def issuer(self) -> str: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def replaces_certificate_id(self) -> int | None: ...


def replaces_cert_id(
    sessions: sessionmaker[Session], order: OrderFacts, session: AcmeSession
) -> str | None:
    """The certID to send as `replaces`, or None when it must not be sent."""
    if order.replaces_certificate_id is None or session.renewal_info_url() is None:
        return None
    with sessions() as db:
        row = db.execute(
            _PREDECESSOR, {"b_id": order.replaces_certificate_id, "b_tenant_id": order.tenant_id}
        ).first()
    if row is None or row.ari_cert_id is None or row.issuer != order.issuer:
        return None
    if row.account_url is not None and row.account_url != session.account_url:
        return None
    return str(row.ari_cert_id)


def refused_replaces(problem: AcmeProblem) -> bool:
    """Whether the CA's refusal is about `replaces` (so asking without it may succeed)."""
    return problem.type in REFUSED_REPLACES_TYPES or problem.http_status in (403, 409)


def new_order_for(
    sessions: sessionmaker[Session], session: AcmeSession, order: OrderFacts, csr_pem: bytes
) -> OrderInfo:
    """newOrder (without its authorizations) with the order's profile and, for a renewal,
    `replaces`; once more without `replaces` when the CA refuses it."""
    replaces = replaces_cert_id(sessions, order, session)
    try:
        return session.new_order(
            csr_pem, include_authorizations=False, profile=order.profile, replaces=replaces
        )
    except AcmeProblem as problem:
        if replaces is None or not refused_replaces(problem):
            raise
        log.warning(
            "order %s: the CA refused replaces=%s (%s: %s); asking again without it",
            order.id,
            replaces,
            problem.type,
            problem.detail,
        )
    return session.new_order(csr_pem, include_authorizations=False, profile=order.profile)
