"""Renewal timing and ARI certIDs: pure functions, fixed clocks, thousands of certificates."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from certok.certificates import timing
from certok.certificates.ari import (
    AriError,
    RenewalInfo,
    cert_id_from_parts,
    parse_renewal_info,
    serial_der_bytes,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def test_rfc9773_appendix_a_vector() -> None:
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert cert_id_from_parts(aki, 0x0087654321) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


@pytest.mark.parametrize(
    ("serial", "encoded"),
    [(0x7F, b"\x7f"), (0x80, b"\x00\x80"), (0xFF01, b"\x00\xff\x01"), (0x0102, b"\x01\x02")],
)
def test_serial_keeps_its_leading_zero_when_the_high_bit_is_set(
    serial: int, encoded: bytes
) -> None:
    assert serial_der_bytes(serial) == encoded


def test_parse_renewal_info_wire_format() -> None:
    body = (
        b'{"suggestedWindow": {"start": "2026-02-01T00:00:00Z", "end": "2026-02-03T00:00:00Z"},'
        b' "explanationURL": "https://ca.test/why"}'
    )
    info = parse_renewal_info(body, None)
    assert info.start == dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    assert info.end == dt.datetime(2026, 2, 3, tzinfo=dt.UTC)
    assert info.explanation_url == "https://ca.test/why"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"suggestedWindow": {"start": "2026-02-03T00:00:00Z", "end": "2026-02-01T00:00:00Z"}}',
        b'{"suggestedWindow": {"start": "2026-02-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}}',
        b'{"suggestedWindow": {"start": "yesterday", "end": "2026-02-01T00:00:00Z"}}',
        b'{"suggestedWindow": {"start": "2026-02-01T00:00:00", "end": "2026-02-02T00:00:00Z"}}',
    ],
)
def test_invalid_renewal_info_is_refused(body: bytes) -> None:
    with pytest.raises(AriError):
        parse_renewal_info(body, None)


def _info(start: dt.datetime, end: dt.datetime, retry: dt.datetime | None = None) -> RenewalInfo:
    return RenewalInfo(start=start, end=end, explanation_url=None, retry_after=retry)


def test_fallback_two_thirds_and_half_for_short_lived() -> None:
    assert timing.initial(T0, T0 + 90 * DAY, T0, ari=False).renew_at == T0 + 60 * DAY
    assert timing.initial(T0, T0 + 10 * DAY, T0, ari=False).renew_at == T0 + 5 * DAY
    six_days = timing.initial(T0, T0 + dt.timedelta(hours=160), T0, ari=False)
    assert six_days.renew_at == T0 + dt.timedelta(hours=80)
    assert timing.initial(T0, T0 + 90 * DAY, T0, ari=False).next_check_at is None
    assert timing.initial(T0, T0 + 90 * DAY, T0, ari=True).next_check_at == T0


def test_thousands_of_certificates_with_ari_windows() -> None:
    """Every draw lies in its window, the draws spread over it, and the same window keeps its
    moment across re-checks."""
    rng = random.Random(1)
    draws = []
    for i in range(5000):
        not_before = T0 + dt.timedelta(minutes=i)
        not_after = not_before + 90 * DAY
        start, end = not_before + 58 * DAY, not_before + 62 * DAY
        clock = timing.initial(not_before, not_after, not_before, ari=True)
        now = not_before + dt.timedelta(hours=1)
        clock = timing.after_ari(not_before, not_after, clock, _info(start, end), now, rng)
        assert start <= clock.renew_at <= end
        again = timing.after_ari(not_before, not_after, clock, _info(start, end), now + DAY, rng)
        assert again.renew_at == clock.renew_at
        draws.append((clock.renew_at - start) / (end - start))
    # uniform over the window: each quarter holds about a quarter of the draws
    quarters = [sum(1 for d in draws if q / 4 <= d < (q + 1) / 4) for q in range(4)]
    assert all(1100 < count < 1400 for count in quarters), quarters


def test_a_moved_window_moves_renew_at() -> None:
    rng = random.Random(2)
    not_after = T0 + 90 * DAY
    clock = timing.after_ari(
        T0,
        not_after,
        timing.initial(T0, not_after, T0, ari=True),
        _info(T0 + 60 * DAY, T0 + 62 * DAY),
        T0,
        rng,
    )
    # A mass revocation: the CA asks for renewal now.
    moved = timing.after_ari(
        T0, not_after, clock, _info(T0 + DAY, T0 + DAY + dt.timedelta(hours=2)), T0 + DAY, rng
    )
    assert T0 + DAY <= moved.renew_at <= T0 + DAY + dt.timedelta(hours=2)
    assert moved.window_start == T0 + DAY


def test_emergency_limit_overrides_a_late_window() -> None:
    rng = random.Random(3)
    not_after = T0 + 100 * DAY
    late = _info(T0 + 98 * DAY, T0 + 99 * DAY)
    clock = timing.after_ari(
        T0, not_after, timing.initial(T0, not_after, T0, ari=True), late, T0, rng
    )
    assert clock.renew_at == T0 + 95 * DAY  # 1/20 of the lifetime left


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, timing.DEFAULT_CHECK_INTERVAL),
        (dt.timedelta(seconds=5), dt.timedelta(seconds=60)),
        (dt.timedelta(hours=3), dt.timedelta(hours=3)),
        (dt.timedelta(days=7), dt.timedelta(hours=24)),
        (dt.timedelta(seconds=-30), dt.timedelta(seconds=60)),
    ],
)
def test_retry_after_is_clamped(retry_after: dt.timedelta | None, expected: dt.timedelta) -> None:
    now = T0 + DAY
    info = _info(T0 + 60 * DAY, T0 + 61 * DAY, None if retry_after is None else now + retry_after)
    previous = timing.initial(T0, T0 + 90 * DAY, T0, ari=True)
    clock = timing.after_ari(T0, T0 + 90 * DAY, previous, info, now, random.Random(4))
    assert clock.next_check_at == now + expected


def test_errors_keep_the_moment_and_check_again_in_six_hours() -> None:
    previous = timing.Renewal(T0 + 60 * DAY, T0, T0 + 59 * DAY, T0 + 61 * DAY)
    clock = timing.after_error(T0 + 90 * DAY, previous, T0 + DAY)
    assert clock.renew_at == previous.renew_at
    assert clock.next_check_at == T0 + DAY + dt.timedelta(hours=6)
    # no checks past expiry
    assert timing.after_error(T0 + DAY, previous, T0 + DAY).next_check_at is None
