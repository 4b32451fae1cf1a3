"""When to renew: a pure function of the certificate, what the CA said, and `now`.

- With ARI (RFC 9773): a uniformly random moment in the CA's suggestedWindow, chosen once
  and kept while the window stays the same; a window the CA moves (before a mass revocation,
  say) gets a new moment. The CA is asked again at its Retry-After, clamped to [60 s, 24 h],
  and 6 h after a failed check.
- Without ARI: at 2/3 of the lifetime (1/2 for certificates of 10 days or less), as certbot
  and lego do.
- In any case no later than when 1/20 of the lifetime remains (certmagic's emergency rule):
  a window the CA puts too late, or one the CA never sent, cannot let a certificate lapse.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from certok.certificates.ari import RenewalInfo

RETRY_AFTER_MIN = dt.timedelta(seconds=60)
RETRY_AFTER_MAX = dt.timedelta(hours=24)
# RFC 9773 §4.3.3 asks clients to back off after errors; certok waits this long.
CHECK_AFTER_ERROR = dt.timedelta(hours=6)
# Without Retry-After the RFC suggests a check every few hours; certok uses 6 h.
DEFAULT_CHECK_INTERVAL = dt.timedelta(hours=6)
SHORT_LIVED = dt.timedelta(days=10)


@dataclass(frozen=True)
class Renewal:
    """What the renewal clock stores for one certificate."""

    renew_at: dt.datetime
    # When to ask the CA's renewalInfo again (None: never, e.g. expired or no ARI).
    next_check_at: dt.datetime | None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None


def lifetime_fallback(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """2/3 of the lifetime (1/2 at 10 days or less): 1/3 (1/2) of it left at renewal."""
    lifetime = not_after - not_before
    fraction = 0.5 if lifetime <= SHORT_LIVED else 2 / 3
    return not_before + lifetime * fraction


def emergency_limit(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """The latest moment to renew: when 1/20 of the lifetime remains."""
    return not_after - (not_after - not_before) / 20


def clamp_retry_after(now: dt.datetime, retry_after: dt.datetime | None) -> dt.datetime:
    """When to ask again: the CA's Retry-After kept within [60 s, 24 h] from now."""
    if retry_after is None:
        return now + DEFAULT_CHECK_INTERVAL
    wait = retry_after - now
    return now + min(max(wait, RETRY_AFTER_MIN), RETRY_AFTER_MAX)


def initial(
    not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime, *, ari: bool
) -> Renewal:
    """The renewal clock of a certificate just issued: the lifetime rule, and an ARI check
    at once when the issuer offers renewalInfo."""
    renew_at = min(lifetime_fallback(not_before, not_after), emergency_limit(not_before, not_after))
    return Renewal(renew_at=renew_at, next_check_at=now if ari and now < not_after else None)


def after_ari(
    not_before: dt.datetime,
    not_after: dt.datetime,
    previous: Renewal,
    info: RenewalInfo,
    now: dt.datetime,
    rng: random.Random,
) -> Renewal:
    """The clock after a renewalInfo answer.

    The moment is drawn once per window: the same window keeps `previous.renew_at` (when that
    was drawn from it), a new or moved window draws again. The draw is then held to the
    emergency limit.
    """
    limit = emergency_limit(not_before, not_after)
    same_window = previous.window_start == info.start and previous.window_end == info.end
    if same_window:
        renew_at = previous.renew_at
    else:
        span = (info.end - info.start).total_seconds()
        renew_at = info.start + dt.timedelta(seconds=rng.uniform(0, span))
    renew_at = min(renew_at, limit)
    next_check = clamp_retry_after(now, info.retry_after)
    return Renewal(
        renew_at=renew_at,
        next_check_at=next_check if next_check < not_after else None,
        window_start=info.start,
        window_end=info.end,
    )


def after_error(not_after: dt.datetime, previous: Renewal, now: dt.datetime) -> Renewal:
    """A failed check keeps the moment already chosen and asks again in 6 hours."""
    next_check = now + CHECK_AFTER_ERROR
    return Renewal(
        renew_at=previous.renew_at,
        next_check_at=next_check if next_check < not_after else None,
        window_start=previous.window_start,
        window_end=previous.window_end,
    )
