"""When to try again after a retryable problem: a table you can read.

| consecutive failures | wait before the next try | elapsed (about) |
|---|---|---|
| 1 | 1 s | 1 s |
| 2 | 2 s | 3 s |
| 3 | 5 s | 8 s |
| 4 | 10 s | 18 s |
| 5 | 30 s | 48 s |
| 6 | 1 min | 2 min |
| 7 | 2 min | 4 min |
| 8 | 5 min | 9 min |
| 9 | 10 min | 19 min |
| 10 | 30 min | 49 min |
| 11 and more | 1 h | then hourly until the order's deadline (24 h by default) |

A CA's Retry-After always wins when it is later. Permanent problems are not retried: they
fail the order at once with the CA's reason (see certok.issuance.problems).
"""

from __future__ import annotations

import datetime as dt

RETRY_DELAYS_SECONDS: tuple[int, ...] = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def next_attempt(
    now: dt.datetime, failures: int, retry_after: dt.datetime | None = None
) -> dt.datetime:
    """The time of the next try after `failures` consecutive retryable failures (≥ 1)."""
    index = min(max(failures, 1), len(RETRY_DELAYS_SECONDS)) - 1
    when = now + dt.timedelta(seconds=RETRY_DELAYS_SECONDS[index])
    if retry_after is not None and retry_after > when:
        return retry_after
    return when
