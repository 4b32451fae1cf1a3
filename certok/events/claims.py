"""The delivery worker's write jobs: claim due rows under a lease, record an outcome, free a
dead run's leases, purge the log. Module-level functions of plain arguments: with
`processes` >= 2 on SQLite they run in the writer process (certok.db.write_channel).

On PostgreSQL the due rows are selected `FOR UPDATE SKIP LOCKED`, so nodes claiming at once
take different rows without waiting on each other; everywhere the lease is then taken with a
compare-and-set UPDATE, so a row leased meanwhile is simply not claimed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, delete, or_, select, update

from certok.db.models import EventMark, WebhookDelivery, WebhookEndpoint
from certok.events.outbox import CANCELLED, PENDING

D = WebhookDelivery.__table__
E = WebhookEndpoint.__table__


def lease_free(now: dt.datetime) -> Any:
    return or_(D.c.lease_until.is_(None), D.c.lease_until < now)


def claim_job(
    connection: Connection, *, worker_id: str, now: dt.datetime, limit: int, lease_seconds: int
) -> list[dict[str, Any]]:
    due = (
        select(D.c.id)
        .where(D.c.state == PENDING, D.c.next_attempt_at <= now, lease_free(now))
        .order_by(D.c.next_attempt_at)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        # Rows another node is claiming right now are skipped, not waited for.
        due = due.with_for_update(skip_locked=True)
    ids = list(connection.execute(due).scalars())
    if not ids:
        return []
    lease = {"lease_owner": worker_id, "lease_until": now + dt.timedelta(seconds=lease_seconds)}
    # Compare-and-set: a row leased by someone else meanwhile fails the WHERE.
    taken = [
        delivery_id
        for delivery_id in ids
        if connection.execute(
            update(D)
            .where(D.c.id == delivery_id, D.c.state == PENDING, lease_free(now))
            .values(lease)
        ).rowcount
        == 1
    ]
    if not taken:
        return []
    rows = connection.execute(
        select(
            D.c.id,
            D.c.message_id,
            D.c.tenant_id,
            D.c.payload,
            D.c.attempts,
            D.c.url.label("notify_url"),
            D.c.endpoint_id,
            E.c.url.label("endpoint_url"),
            E.c.public_id,
            E.c.secret_encrypted,
            E.c.previous_secret_encrypted,
            E.c.previous_secret_until,
            E.c.disabled_at,
        )
        .select_from(D.outerjoin(E, E.c.id == D.c.endpoint_id))
        .where(D.c.id.in_(taken))
    ).all()
    claimed = []
    for row in rows:
        if row.endpoint_id is not None and row.disabled_at is not None:
            connection.execute(
                update(D)
                .where(D.c.id == row.id)
                .values(
                    state=CANCELLED,
                    lease_owner=None,
                    lease_until=None,
                    finished_at=now,
                    last_error="the endpoint is disabled",
                )
            )
            continue
        claimed.append(
            {
                "id": row.id,
                "message_id": row.message_id,
                "tenant_id": row.tenant_id,
                "payload": row.payload,
                "attempts": row.attempts,
                "url": row.endpoint_url if row.endpoint_id is not None else row.notify_url,
                "endpoint_id": row.endpoint_id,
                "public_id": row.public_id,
                "secret_encrypted": row.secret_encrypted,
                "previous_secret_encrypted": row.previous_secret_encrypted,
                "previous_secret_until": row.previous_secret_until,
            }
        )
    return claimed


def record_job(
    connection: Connection,
    *,
    delivery_id: int,
    worker_id: str,
    values: dict[str, Any],
    disable_endpoint: int | None,
    reason: str | None,
    now: dt.datetime,
) -> bool:
    changed = connection.execute(
        update(D).where(D.c.id == delivery_id, D.c.lease_owner == worker_id).values(values)
    ).rowcount
    if changed != 1:
        return False
    if disable_endpoint is not None:
        connection.execute(
            update(E)
            .where(E.c.id == disable_endpoint, E.c.disabled_at.is_(None))
            .values(disabled_at=now, disabled_reason=reason)
        )
        connection.execute(
            update(D)
            .where(D.c.endpoint_id == disable_endpoint, D.c.state == PENDING)
            .values(state=CANCELLED, finished_at=now, last_error="the endpoint was disabled")
        )
    return True


def release_job(connection: Connection, *, worker_id: str) -> int:
    return connection.execute(
        update(D)
        .where(D.c.lease_owner == worker_id, D.c.state == PENDING)
        .values(lease_owner=None, lease_until=None)
    ).rowcount


def purge_job(connection: Connection, *, cutoff: dt.datetime, marks_cutoff: dt.datetime) -> int:
    deleted = connection.execute(
        delete(D).where(D.c.state != PENDING, D.c.finished_at < cutoff)
    ).rowcount
    marks = EventMark.__table__
    return (
        deleted
        + connection.execute(delete(marks).where(marks.c.created_at < marks_cutoff)).rowcount
    )
