"""Standard Webhooks signing against the spec's own test vector, and the retry schedule."""

from __future__ import annotations

import datetime as dt

import pytest

from certok.events.schedule import (
    MAX_ATTEMPTS,
    RETRY_DELAYS_SECONDS,
    next_attempt_at,
    parse_retry_after,
)
from certok.events.signing import new_secret, secret_key, sign, signature_headers

# From the Standard Webhooks reference libraries' tests.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def test_the_specs_vector() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_two_secrets_two_signatures() -> None:
    other = new_secret()
    headers = signature_headers([SECRET, other], MSG_ID, TIMESTAMP, BODY)
    assert headers["webhook-signature"].split(" ")[0] == EXPECTED
    assert headers["webhook-signature"].split(" ")[1] == sign(other, MSG_ID, TIMESTAMP, BODY)
    assert headers["webhook-id"] == MSG_ID and headers["webhook-timestamp"] == str(TIMESTAMP)


def test_new_secrets_are_32_random_bytes() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    assert all(len(secret_key(s)) == 32 for s in secrets)
    with pytest.raises(ValueError):
        secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_the_schedule_reads_like_the_spec() -> None:
    assert [int(d) for d in RETRY_DELAYS_SECONDS] == [
        5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400,
    ]  # fmt: skip
    assert MAX_ATTEMPTS == 10
    exact = [
        (next_attempt_at(NOW, n, uniform=lambda a, b: 0.0) - NOW).total_seconds()  # type: ignore[operator]
        for n in range(1, MAX_ATTEMPTS)
    ]
    assert exact == list(RETRY_DELAYS_SECONDS)
    high = next_attempt_at(NOW, 1, uniform=lambda a, b: b)
    assert high == NOW + dt.timedelta(seconds=5.5)
    assert next_attempt_at(NOW, MAX_ATTEMPTS) is None


def test_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after("Tue, 01 Dec 2026 00:10:00 GMT", NOW) == 600
    assert parse_retry_after("Mon, 30 Nov 2026 00:00:00 GMT", NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
    # Longer than the step wins, capped at a day; shorter loses to the schedule.
    assert next_attempt_at(NOW, 1, 600, uniform=lambda a, b: 0.0) == NOW + dt.timedelta(seconds=600)
    assert next_attempt_at(NOW, 1, 10**9, uniform=lambda a, b: 0.0) == NOW + dt.timedelta(days=1)
    assert next_attempt_at(NOW, 2, 1, uniform=lambda a, b: 0.0) == NOW + dt.timedelta(seconds=300)
