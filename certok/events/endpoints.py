"""A tenant's webhook endpoints and their delivery log: what the API's /v1/webhooks reads
and changes. Every function takes the tenant: another tenant's endpoint id is answered
exactly like an unknown one."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from certok.crypto import SecretBox
from certok.db.models import WebhookDelivery, WebhookEndpoint
from certok.errors import Conflict, NotFound
from certok.events.delivery import endpoint_secret_owner
from certok.events.outbox import PENDING, new_message_id
from certok.events.signing import new_secret
from certok.events.types import WEBHOOK_TEST, payload, rfc3339

E = WebhookEndpoint.__table__
D = WebhookDelivery.__table__
MAX_ENDPOINTS_PER_TENANT = 20


@dataclass(frozen=True)
class Created:
    public_id: str
    secret: str


def not_found(public_id: str) -> NotFound:
    return NotFound(
        f"webhook {public_id!r} not found: GET /v1/webhooks lists this token's endpoints"
    )


def new_public_id() -> str:
    return "wh_" + secrets.token_hex(12)


def count_endpoints(connection: Connection, tenant_id: int) -> int:
    return connection.execute(
        select(func.count()).select_from(E).where(E.c.tenant_id == tenant_id)
    ).scalar_one()


def create_endpoint_job(
    connection: Connection,
    *,
    tenant_id: int,
    public_id: str,
    url: str,
    description: str,
    event_types: str,
    secret_encrypted: bytes,
    now: dt.datetime,
) -> None:
    connection.execute(
        insert(E).values(
            public_id=public_id,
            tenant_id=tenant_id,
            url=url,
            description=description,
            event_types=event_types,
            secret_encrypted=secret_encrypted,
            created_at=now,
        )
    )


def encrypt_new_secret(box: SecretBox, public_id: str) -> tuple[str, bytes]:
    secret = new_secret()
    return secret, box.encrypt(secret.encode("ascii"), endpoint_secret_owner(public_id))


def _endpoint_row(connection: Connection, tenant_id: int, public_id: str) -> Any:
    row = connection.execute(
        select(E).where(E.c.public_id == public_id, E.c.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise not_found(public_id)
    return row


def endpoint_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.public_id,
        "url": row.url,
        "description": row.description,
        "events": row.event_types.split(",") if row.event_types else [],
        "enabled": row.disabled_at is None,
        "disabledReason": row.disabled_reason,
        "createdAt": rfc3339(row.created_at),
    }


def list_endpoints(connection: Connection, tenant_id: int) -> list[dict[str, Any]]:
    rows = connection.execute(
        select(E).where(E.c.tenant_id == tenant_id).order_by(E.c.id.desc())
    ).all()
    return [endpoint_view(row) for row in rows]


def delete_endpoint_job(connection: Connection, *, tenant_id: int, public_id: str) -> None:
    row = _endpoint_row(connection, tenant_id, public_id)
    # Its log goes with it: a delivery in flight records nothing (its row is gone).
    connection.execute(delete(D).where(D.c.endpoint_id == row.id))
    connection.execute(delete(E).where(E.c.id == row.id))


def rotate_secret_job(
    connection: Connection,
    *,
    tenant_id: int,
    public_id: str,
    expected_current: bytes,
    secret_encrypted: bytes,
    previous_reencrypted: bytes,
    previous_until: dt.datetime,
) -> None:
    """Install a new secret; the current one (re-encrypted for the `previous` owner) keeps
    signing as a second signature until `previous_until`."""
    row = _endpoint_row(connection, tenant_id, public_id)
    if bytes(row.secret_encrypted) != expected_current:
        raise Conflict("the secret was rotated by another request just now: try again")
    connection.execute(
        update(E)
        .where(E.c.id == row.id)
        .values(
            secret_encrypted=secret_encrypted,
            previous_secret_encrypted=previous_reencrypted,
            previous_secret_until=previous_until,
        )
    )


def current_secret_ciphertext(connection: Connection, tenant_id: int, public_id: str) -> bytes:
    return bytes(_endpoint_row(connection, tenant_id, public_id).secret_encrypted)


def queue_test_job(
    connection: Connection, *, tenant_id: int, public_id: str, now: dt.datetime
) -> str:
    """A `webhook.test` message to this endpoint alone (even a disabled one is re-enabled:
    testing is how a fixed receiver is brought back)."""
    row = _endpoint_row(connection, tenant_id, public_id)
    if row.disabled_at is not None:
        connection.execute(
            update(E).where(E.c.id == row.id).values(disabled_at=None, disabled_reason=None)
        )
    message_id = new_message_id()
    body = payload(WEBHOOK_TEST, now, {"webhookId": public_id, "messageId": message_id})
    connection.execute(
        insert(D).values(
            message_id=message_id,
            tenant_id=tenant_id,
            endpoint_id=row.id,
            url=None,
            event_type=WEBHOOK_TEST,
            payload=body,
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return message_id


def list_deliveries(
    connection: Connection, tenant_id: int, public_id: str, page: int, size: int
) -> tuple[int, list[dict[str, Any]]]:
    row = _endpoint_row(connection, tenant_id, public_id)
    total = connection.execute(
        select(func.count()).select_from(D).where(D.c.endpoint_id == row.id)
    ).scalar_one()
    rows = connection.execute(
        select(D)
        .where(D.c.endpoint_id == row.id)
        .order_by(D.c.id.desc())
        .limit(size)
        .offset((page - 1) * size)
    ).all()
    return total, [delivery_view(r) for r in rows]


def delivery_view(row: Any) -> dict[str, Any]:
    def when(value: dt.datetime | None) -> str | None:
        return rfc3339(value) if value is not None else None

    return {
        "id": row.message_id,
        "event": row.event_type,
        "status": row.state,
        "attempts": row.attempts,
        "lastStatus": row.last_status,
        "lastError": row.last_error,
        "lastAttemptAt": when(row.last_attempt_at),
        "nextAttemptAt": when(row.next_attempt_at) if row.state == PENDING else None,
        "createdAt": when(row.created_at),
        "finishedAt": when(row.finished_at),
    }
