"""The clock the agents' renewal decisions read.

When a certificate is due is the certificate record's `renew_at` (certok/certificates/timing:
the CA's ARI window when it has one, else two thirds of the lifetime, never later than the
last twentieth); the agents only compare it with now. Tests shift that now with
`clock_offset_seconds` to see a renewal without waiting months for it.
"""

from __future__ import annotations

import datetime as dt

from certok.clock import Clock, utcnow
from certok.settings import Settings


def renewal_clock(settings: Settings) -> Clock:
    """Now, for renewal decisions: shifted by `clock_offset_seconds` (tests only)."""
    offset = dt.timedelta(seconds=settings.clock_offset_seconds)
    if not offset:
        return utcnow
    return lambda: utcnow() + offset
