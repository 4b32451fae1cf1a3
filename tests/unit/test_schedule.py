"""The retry schedule and the polling cadence (pure functions of `now`)."""

from __future__ import annotations

import datetime as dt

from certok.orders.polling import MAX_POLL_SECONDS, poll_delay
from certok.orders.schedule import RETRY_DELAYS_SECONDS, next_attempt

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def test_schedule_follows_the_table_then_stays_hourly() -> None:
    waits = [(next_attempt(NOW, n) - NOW).total_seconds() for n in range(1, 15)]
    assert waits[:11] == list(RETRY_DELAYS_SECONDS)
    assert waits[11:] == [3600, 3600, 3600]
    assert waits == sorted(waits)


def test_retry_after_wins_only_when_later() -> None:
    later = NOW + dt.timedelta(hours=2)
    assert next_attempt(NOW, 1, later) == later
    sooner = NOW + dt.timedelta(milliseconds=10)
    assert next_attempt(NOW, 3, sooner) == NOW + dt.timedelta(seconds=5)


def test_polls_fast_while_young_then_slower_capped() -> None:
    assert poll_delay(dt.timedelta(0), 0.1) == 0.1
    assert poll_delay(dt.timedelta(seconds=30), 0.1) == 3.0
    assert poll_delay(dt.timedelta(hours=5), 0.1) == MAX_POLL_SECONDS
