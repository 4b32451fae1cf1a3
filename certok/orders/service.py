"""Recording intent: turn a verification code into an order, and read an order's state.

The API never talks to a CA; it records an order here and the worker drives it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import Connection, CursorResult, Row, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.crypto import SecretBox, certificate_subject, order_key_owner
from certok.db.models import Certificate, Order, VerificationCode
from certok.db.models.base import stored_utc, untyped
from certok.errors import CodeExpired, NotFound
from certok.order_states import ISSUED, PENDING
from certok.orders.codes import code_not_found
from certok.orders.finished_row import FinishedRow


@dataclass(frozen=True)
class OrderView:
    """What /v1/cert/apply shows for an order."""

    id: int
    status: str
    issuer: str
    domains: str
    reason: str | None
    subject: str | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    certificate: str | None = None
    private_key: str | None = None
    # The certificate record the order made (certok/certificates), once issued.
    certificate_id: int | None = None
    renew_at: dt.datetime | None = None


# The API's hot statements, built once on the tables (building a statement and its cache key
# costs several times what executing it does; see certok/orders/rows.py).
_ORDERS = Order.__table__
_CODES = VerificationCode.__table__
_CERTIFICATES = Certificate.__table__
# A code's row as redeem_code uses it (`StoredCodeRow`).
CODE_COLUMNS = (
    _CODES.c.id,
    _CODES.c.tenant_id,
    _CODES.c.order_id,
    _CODES.c.expires_at,
    _CODES.c.challenge_type,
    _CODES.c.domains,
)
_CODE = select(*CODE_COLUMNS).where(_CODES.c.code == bindparam("b_code"))
_NEW_ORDER = insert(_ORDERS).returning(_ORDERS.c.id)
_BIND_CODE = update(_CODES).where(
    _CODES.c.id == bindparam("b_code_id"), _CODES.c.order_id.is_(None)
)
_PENDING_AMONG = select(_ORDERS.c.id).where(
    _ORDERS.c.id.in_(bindparam("b_order_ids", expanding=True)), _ORDERS.c.state == PENDING
)
# What `view_of_row` reads: an order's columns and its certificate record's (outer-joined).
# The times are read untyped: only an issued order's are converted (apply polls are hot).
VIEW_COLUMNS = (
    _ORDERS.c.id,
    _ORDERS.c.state,
    _ORDERS.c.issuer,
    _ORDERS.c.domains,
    _ORDERS.c.reason,
    untyped(_ORDERS.c.not_before),
    untyped(_ORDERS.c.not_after),
    _ORDERS.c.certificate_pem,
    _ORDERS.c.subject,
    _ORDERS.c.key_encrypted,
    _CERTIFICATES.c.id.label("certificate_id"),
    untyped(_CERTIFICATES.c.renew_at),
)
_VIEW = (
    select(*VIEW_COLUMNS)
    .select_from(_ORDERS.outerjoin(_CERTIFICATES, _CERTIFICATES.c.order_id == _ORDERS.c.id))
    .where(_ORDERS.c.id == bindparam("b_order_id"))
)


def redeem_code(
    session: Session | Connection,
    tenant_id: int,
    code: str,
    *,
    algorithm: str,
    issuer: str,
    deadline_seconds: int,
    clock: Clock = utcnow,
    profile: str | None = None,
    replaces_certificate_id: int | None = None,
    code_row: StoredCodeRow | None = None,
) -> tuple[int, bool]:
    """The order for `code`, creating it on first use. Returns (order id, created now).

    A code starts an order only within its validity and only once; later calls with the same
    code read that order (whatever algorithm/issuer they pass). Plain SQL statements, not ORM
    units of work: this runs once per apply call, on the API's hot path. `code_row`: the
    code's row as this transaction read it already (`_CODE`'s columns), not read again.
    """
    if code_row is None:
        row: Any = redeemable_code(session, tenant_id, code, clock)
    else:
        check_redeemable(code_row, tenant_id, code, clock)
        row = code_row
    if row.order_id is not None:
        return row.order_id, False
    now = clock()
    order_id = session.execute(
        _NEW_ORDER,
        {
            "tenant_id": tenant_id,
            "issuer": issuer,
            "algorithm": algorithm,
            "challenge_type": row.challenge_type,
            "domains": row.domains,
            "state": PENDING,
            "attempts": 0,
            "acme_orders": 0,
            "next_attempt_at": now,
            "deadline_at": now + dt.timedelta(seconds=deadline_seconds),
            "created_at": now,
            "profile": profile,
            "replaces_certificate_id": replaces_certificate_id,
        },
    ).scalar_one()
    # Compare-and-set: only one request may bind an order to the code.
    claimed = cast(
        CursorResult[Any],
        session.execute(_BIND_CODE, {"order_id": order_id, "b_code_id": row.id}),
    )
    if claimed.rowcount == 1:
        return order_id, True
    # Another request (another node) bound the code first: drop ours, answer with theirs.
    session.execute(delete(Order).where(Order.id == order_id))
    winner = session.scalar(select(VerificationCode.order_id).where(VerificationCode.id == row.id))
    if winner is None:  # pragma: no cover - the CAS failed, so someone set it
        raise NotFound("verification code vanished: call /v1/cert/dv again")
    return winner, False


def code_order(
    session: Session | Connection, tenant_id: int, code: str, clock: Clock = utcnow
) -> int | None:
    """The order `code` started, or None if it has started none yet (redeem_code would make
    one). Raises as redeem_code does for an unknown, foreign or expired code. A read only:
    the API asks this first and sends only first redemptions to the writer."""
    order_id: int | None = redeemable_code(session, tenant_id, code, clock).order_id
    return order_id


def redeemable_code(
    session: Session | Connection, tenant_id: int, code: str, clock: Clock = utcnow
) -> Row[*tuple[Any, ...]]:
    """`code`'s row (`StoredCodeRow`'s columns), read; raises as redeem_code does for an
    unknown, foreign or expired code."""
    row = session.execute(_CODE, {"b_code": code}).first()
    check_redeemable(row, tenant_id, code, clock)
    assert row is not None  # checked
    return row


class StoredCodeRow(Protocol):
    """A code's row as `redeem_code` uses it (the columns of `_CODE`)."""

    @property
    def id(self) -> int: ...
    @property
    def tenant_id(self) -> int: ...
    @property
    def order_id(self) -> int | None: ...
    @property
    def expires_at(self) -> dt.datetime: ...
    @property
    def challenge_type(self) -> str: ...
    @property
    def domains(self) -> str: ...


class StoredCode(Protocol):
    """What deciding whether a code can be redeemed needs of its stored row."""

    @property
    def tenant_id(self) -> int: ...
    @property
    def order_id(self) -> int | None: ...
    @property
    def expires_at(self) -> dt.datetime: ...


def check_redeemable(
    row: StoredCode | None, tenant_id: int, code: str, clock: Clock = utcnow
) -> None:
    """Raise as redeem_code does when `row` (the stored `code`, or None) is no code of
    `tenant_id`'s, or expired before it started an order."""
    if row is None or row.tenant_id != tenant_id:
        raise code_not_found(code)
    if row.order_id is None and clock() > row.expires_at:
        raise CodeExpired(
            f"verification code {code!r} expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC "
            "(codes are valid for one minute): call /v1/cert/dv again for a new code"
        )


def order_state(session: Session, order_id: int) -> str:
    return session.scalar(select(Order.state).where(Order.id == order_id)) or PENDING


def finished_orders(session: Session, order_ids: list[int]) -> list[int]:
    """The orders among `order_ids` that are no longer pending (or no longer exist)."""
    pending = set(session.scalars(_PENDING_AMONG, {"b_order_ids": order_ids}))
    return [order_id for order_id in order_ids if order_id not in pending]


def view_order(session: Session, order_id: int, box: SecretBox) -> OrderView:
    order = session.execute(_VIEW, {"b_order_id": order_id}).first()
    if order is None:
        raise NotFound("order not found")
    return view_of_row(order, box)


def issued_key_pem(order: Row[*tuple[Any, ...]] | FinishedRow, box: SecretBox) -> str | None:
    """The decrypted private key of an order read with `VIEW_COLUMNS` that is issued with its
    certificate and key; None for any other order (its view shows no certificate)."""
    if order.state != ISSUED or not order.certificate_pem or not order.key_encrypted:
        return None
    return box.decrypt(order.key_encrypted, order_key_owner(order.id)).decode("ascii")


def issued_subject(order: Row[*tuple[Any, ...]] | FinishedRow) -> str:
    """An issued order's subject: as kept at issue, else parsed from the certificate (orders
    issued before the column was kept)."""
    return order.subject or certificate_subject(order.certificate_pem or "")


def view_of_row(order: Row[*tuple[Any, ...]] | FinishedRow, box: SecretBox) -> OrderView:
    """The view of an order read with `VIEW_COLUMNS` (or handed on by the save that finished
    it, certok/orders/finished_row.py): its subject and decrypted key too
    once it is issued (the subject parsed from the certificate for orders issued before
    the column was kept)."""
    key_pem = issued_key_pem(order, box)
    if key_pem is None:
        return OrderView(
            id=order.id,
            status=order.state,
            issuer=order.issuer,
            domains=order.domains,
            reason=order.reason,
        )
    return OrderView(
        id=order.id,
        status=order.state,
        issuer=order.issuer,
        domains=order.domains,
        reason=None,
        subject=issued_subject(order),
        not_before=stored_utc(order.not_before),
        not_after=stored_utc(order.not_after),
        certificate=order.certificate_pem,
        private_key=key_pem,
        certificate_id=order.certificate_id,
        renew_at=stored_utc(order.renew_at),
    )
