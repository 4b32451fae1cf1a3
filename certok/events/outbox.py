"""The outbox: events become delivery rows in the transaction of the change they report.

`emit(connection, ...)` runs inside the caller's write transaction (a job of
`certok.db.writes.write`): either the state change and its deliveries commit together, or
neither does, and a kill -9 at any moment loses no event and invents none. One row per
destination: each of the tenant's enabled endpoints that wants the type, plus a notifyUrl
when one is given. The delivery worker (`certok.events.delivery`) sends them.

An order's end with nobody to tell (no notifyUrl, no enabled endpoint of its tenant, as the
worker read the order when it claimed it or last loaded it: `notifies` in
`certok.orders.rows`) runs without this hook, so the issuing save stays one statement on
PostgreSQL. An endpoint enabled between that read and the order's end (typically the few
seconds the CA takes to validate and issue) misses its event, as one enabled a moment after
the end would.

Functions here take a Connection and plain arguments: they run in the writer process of a
multi-process node too.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, select

from certok.db.models import (
    Certificate,
    EventMark,
    OrderNotifyUrl,
    VerificationCode,
    WebhookEndpoint,
)
from certok.db.models import Order as OrderModel
from certok.db.models import WebhookDelivery as DeliveryModel
from certok.events.types import CERTIFICATE_FAILED, CERTIFICATE_ISSUED, payload, rfc3339
from certok.order_states import FAILURE, FINISHED_STATES, ISSUED

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
CANCELLED = "cancelled"

_ENDPOINTS = WebhookEndpoint.__table__
_DELIVERIES = DeliveryModel.__table__
_NOTIFY = OrderNotifyUrl.__table__
_MARKS = EventMark.__table__
_ORDERS = OrderModel.__table__
_CODES = VerificationCode.__table__
_CERTIFICATES = Certificate.__table__


def new_message_id() -> str:
    """A `webhook-id`: unique per message, the same on every attempt of it."""
    return "msg_" + secrets.token_hex(12)


def wants(event_types: str, event_type: str) -> bool:
    return not event_types or event_type in event_types.split(",")


def emit(
    connection: Connection,
    *,
    tenant_id: int,
    event_type: str,
    data: dict[str, Any],
    now: dt.datetime,
    notify_url: str | None = None,
    endpoints: list[tuple[int, str]] | None = None,
) -> int:
    """Queue `event_type` for the tenant's endpoints (and `notify_url`); returns rows queued.

    `endpoints`: the tenant's enabled endpoints as (id, event_types), when the caller read
    them already (None: read here)."""
    body = payload(event_type, now, data)
    rows: list[dict[str, Any]] = []
    if endpoints is None:
        endpoints = [
            (row.id, row.event_types)
            for row in connection.execute(
                select(_ENDPOINTS.c.id, _ENDPOINTS.c.event_types).where(
                    _ENDPOINTS.c.tenant_id == tenant_id, _ENDPOINTS.c.disabled_at.is_(None)
                )
            )
        ]
    for endpoint_id, event_types in endpoints:
        if wants(event_types, event_type):
            rows.append({"endpoint_id": endpoint_id, "url": None})
    if notify_url:
        rows.append({"endpoint_id": None, "url": notify_url})
    for row in rows:
        connection.execute(
            insert(_DELIVERIES).values(
                # One webhook-id per message and destination: the id is what a receiver
                # de-duplicates on, and it stays the same on every attempt of the row.
                message_id=new_message_id(),
                tenant_id=tenant_id,
                event_type=event_type,
                payload=body,
                state=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                **row,
            )
        )
    return len(rows)


def mark_once(connection: Connection, kind: str, subject: str, now: dt.datetime) -> bool:
    """True the first time (kind, subject) is marked: the caller then emits its event in the
    same transaction. The unique constraint makes two nodes' scans agree."""
    exists = connection.execute(
        select(_MARKS.c.id).where(_MARKS.c.kind == kind, _MARKS.c.subject == subject)
    ).first()
    if exists is not None:
        return False
    connection.execute(insert(_MARKS).values(kind=kind, subject=subject, created_at=now))
    return True


def clear_mark(connection: Connection, kind: str, subject: str) -> None:
    connection.execute(delete(_MARKS).where(_MARKS.c.kind == kind, _MARKS.c.subject == subject))


def _of_order(column: Any) -> Any:
    """The first value of `column` in the rows of its table that belong to the order."""
    table = column.table
    return (
        select(column)
        .where(table.c.order_id == _ORDERS.c.id)
        .order_by(table.c[next(iter(table.primary_key.columns)).name])
        .limit(1)
        .scalar_subquery()
    )


# What the event of a finished order says, read in one statement (it runs in the transaction
# that ends every order): the order, its code (the apply id), its notifyUrl, its certificate
# (written earlier in the same transaction when it was issued), and the tenant's enabled
# endpoints, one row each (one row of NULLs without any), so `emit` need not read them.
_FINISHED = (
    select(
        _ORDERS.c.tenant_id,
        _ORDERS.c.state,
        _ORDERS.c.issuer,
        _ORDERS.c.algorithm,
        _ORDERS.c.domains,
        _ORDERS.c.reason,
        _ORDERS.c.not_before,
        _ORDERS.c.not_after,
        _of_order(_CODES.c.code).label("code"),
        _of_order(_NOTIFY.c.url).label("notify_url"),
        _of_order(_CERTIFICATES.c.id).label("certificate_id"),
        _ENDPOINTS.c.id.label("endpoint_id"),
        _ENDPOINTS.c.event_types.label("endpoint_event_types"),
    )
    .select_from(
        _ORDERS.outerjoin(
            _ENDPOINTS,
            and_(_ENDPOINTS.c.tenant_id == _ORDERS.c.tenant_id, _ENDPOINTS.c.disabled_at.is_(None)),
        )
    )
    .where(_ORDERS.c.id == bindparam("b_order_id"))
    .order_by(_ENDPOINTS.c.id)
)


def order_finished(connection: Connection, order_id: int, now: dt.datetime) -> int:
    """In the transaction that ends an order: `certificate.issued` or `certificate.failed`
    for the tenant's endpoints, and the outcome for the order's notifyUrl if it has one.
    Returns the deliveries queued."""
    found = connection.execute(_FINISHED, {"b_order_id": order_id}).all()
    if not found or found[0].state not in FINISHED_STATES:
        return 0
    order = found[0]
    endpoints = [
        (row.endpoint_id, row.endpoint_event_types) for row in found if row.endpoint_id is not None
    ]
    code = order.code
    notify_url = order.notify_url
    if notify_url is not None:
        connection.execute(delete(_NOTIFY).where(_NOTIFY.c.order_id == order_id))
    data: dict[str, Any] = {
        # The POST API's apply id and the GET API's code: the same string.
        "id": code,
        "domains": order.domains.split(","),
        "issuer": order.issuer,
        "algorithm": order.algorithm,
    }
    if order.state == ISSUED:
        event_type = CERTIFICATE_ISSUED
        data["status"] = ISSUED
        # The certificate record (certok/certificates) is written earlier in this transaction.
        data["certificateId"] = order.certificate_id
        data["notBefore"] = rfc3339(order.not_before) if order.not_before else None
        data["notAfter"] = rfc3339(order.not_after) if order.not_after else None
    else:
        event_type = CERTIFICATE_FAILED
        data["status"] = FAILURE
        # The CA's problem (type and detail) or certok's own reason, as /v1/cert/apply shows.
        data["reason"] = order.reason
    return emit(
        connection,
        tenant_id=order.tenant_id,
        event_type=event_type,
        data=data,
        now=now,
        notify_url=notify_url,
        endpoints=endpoints,
    )


def emit_once(
    connection: Connection,
    kind: str,
    subject: str,
    now: dt.datetime,
    tenant_id: int,
    event_type: str,
    data: dict[str, Any],
) -> bool:
    """Emit the event unless `kind` is already marked for `subject`; whether it was."""
    if not mark_once(connection, kind, subject, now):
        return False
    emit(connection, tenant_id=tenant_id, event_type=event_type, data=data, now=now)
    return True
