"""How often a pending order is polled, and when a poll must read its authorizations too."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from certok.issuance import STATUS_INVALID, STATUS_PENDING, OrderInfo
from certok.orders.rows import PresentedRecord

MAX_POLL_SECONDS = 10.0
# While every challenge of a pending order was answered less than this long ago, a poll reads
# the order alone (see authorizations_needed).
AUTHZ_RECHECK_SECONDS = 10.0


def poll_delay(age: dt.timedelta, base_seconds: float) -> float:
    """Poll fast while an order is young, then slower (a tenth of its age, at most 10 s)."""
    return min(max(base_seconds, age.total_seconds() / 10), MAX_POLL_SECONDS)


def authorizations_needed(
    info: OrderInfo, presented: Mapping[str, PresentedRecord], now: dt.datetime
) -> bool:
    """Whether a poll that read ``info`` (the order alone) must read its authorizations too.

    An invalid order needs them for the reason. A pending one does, unless every challenge
    is answered and the answers are recent: then the order's own status says all there is to
    know (RFC 8555 §7.1.6: ready once every authorization is valid, invalid as soon as one
    fails), and each poll costs one request instead of one per name. Past
    AUTHZ_RECHECK_SECONDS the authorizations are read again all the same, for a CA that is
    slow to move its order along.
    """
    if info.status == STATUS_INVALID:
        return True
    if info.status != STATUS_PENDING:
        return False
    recent = now - dt.timedelta(seconds=AUTHZ_RECHECK_SECONDS)
    return not info.authorization_urls or not all(
        (record := presented.get(url)) is not None
        and record.answered_at is not None
        and record.answered_at >= recent
        for url in info.authorization_urls
    )
