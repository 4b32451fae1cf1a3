"""When a certificate deployed by an agent is due for renewal, and the clock that decides it.

One function, `renew_at`, so the agents follow certok's certificate records' renewal clock
(ARI window, else a fraction of the lifetime) once that is in place, by changing this module
only. Until then: two thirds into the lifetime (30 days before the end of a 90-day
certificate), as certbot and lego do.
"""

from __future__ import annotations

import datetime as dt

from certok.clock import Clock, utcnow
from certok.settings import Settings

RENEW_AT_FRACTION = 2 / 3


def renew_at(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """Pure: when a certificate valid from `not_before` to `not_after` should be replaced."""
    return not_before + (not_after - not_before) * RENEW_AT_FRACTION


def renewal_clock(settings: Settings) -> Clock:
    """Now, for renewal decisions: shifted by `clock_offset_seconds` (tests only)."""
    offset = dt.timedelta(seconds=settings.clock_offset_seconds)
    if not offset:
        return utcnow
    return lambda: utcnow() + offset
