"""The events certok sends, and the JSON body every delivery carries.

Standard Webhooks payloads are `{"type", "timestamp", "data"}`; `timestamp` is when the event
happened (RFC 3339, UTC), not when it was sent, so a redelivery's body is byte for byte the
first one's.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

CERTIFICATE_ISSUED = "certificate.issued"
CERTIFICATE_FAILED = "certificate.failed"
CERTIFICATE_RENEWAL_DUE = "certificate.renewal_due"
CERTIFICATE_EXPIRING = "certificate.expiring"
CERTIFICATE_REVOKED = "certificate.revoked"
DELEGATION_BROKEN = "delegation.broken"
# Sent only by POST /v1/webhooks/{id}/test.
WEBHOOK_TEST = "webhook.test"

EVENT_TYPES: tuple[str, ...] = (
    CERTIFICATE_ISSUED,
    CERTIFICATE_FAILED,
    CERTIFICATE_RENEWAL_DUE,
    CERTIFICATE_EXPIRING,
    CERTIFICATE_REVOKED,
    DELEGATION_BROKEN,
    WEBHOOK_TEST,
)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def payload(event_type: str, at: dt.datetime, data: dict[str, Any]) -> str:
    """The body of every delivery of one event (compact JSON, keys in a stable order)."""
    return json.dumps(
        {"type": event_type, "timestamp": rfc3339(at), "data": data},
        ensure_ascii=False,
        separators=(",", ":"),
    )
