"""What a finishing save wrote, handed to the requests waiting for the order.

A held apply request reads its order's view once the order has finished
(certok/api/routes.py). When this process's worker finished it, the save that ended the order
has just written every column that view shows: the worker hands them on
(`OrderWaiters.finished`), so the request builds its view without reading the row back. An
order another process or node finished is read as before. The key stays encrypted, as
stored: only a request that waits for the order decrypts it (`view_of_row`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class FinishedRow:
    """An order's columns as `certok.orders.service.VIEW_COLUMNS` names them."""

    id: int
    state: str
    issuer: str
    # As stored: the names joined with ",".
    domains: str
    reason: str | None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    certificate_pem: str | None = None
    subject: str | None = None
    key_encrypted: bytes | None = None
    certificate_id: int | None = None
    renew_at: dt.datetime | None = None
    # The webhook deliveries the save queued for the order's end; None when not known.
    deliveries_queued: int | None = None
