"""When a failed delivery is tried again: the Standard Webhooks schedule, with jitter.

Attempt 1 goes at once; after each failure the next waits the table's entry for it, spread by
up to ±JITTER of itself (so the receivers of a burst are not all retried in the same second).
A receiver's `Retry-After` is honoured when it asks for longer (capped at the table's longest
step). After the last entry the delivery has failed for good.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from collections.abc import Callable

# Seconds to wait before attempt n + 1 after attempt n failed (n = 1 .. 9):
# immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
RETRY_DELAYS_SECONDS: tuple[float, ...] = (
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    14 * 3600,
    20 * 3600,
    24 * 3600,
)
MAX_ATTEMPTS = len(RETRY_DELAYS_SECONDS) + 1
JITTER = 0.1
MAX_RETRY_AFTER_SECONDS = 24 * 3600


def next_attempt_at(
    now: dt.datetime,
    failed_attempts: int,
    retry_after_seconds: float | None = None,
    *,
    uniform: Callable[[float, float], float] = random.uniform,
) -> dt.datetime | None:
    """When to try again after `failed_attempts` failures; None: give up."""
    if failed_attempts >= MAX_ATTEMPTS:
        return None
    base = RETRY_DELAYS_SECONDS[failed_attempts - 1]
    delay = base * (1 + uniform(-JITTER, JITTER))
    if retry_after_seconds is not None:
        delay = max(delay, min(retry_after_seconds, MAX_RETRY_AFTER_SECONDS))
    return now + dt.timedelta(seconds=delay)


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())
