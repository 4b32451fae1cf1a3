"""Per-tenant token buckets (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from certok.errors import RateLimited
from certok.ratelimit import UNVERIFIED_TOKENS, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_per_tenant_and_endpoint() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"dv": 3, "apply": 0}, clock=clock)
    for _ in range(3):
        limiter.check(1, "dv")
    with pytest.raises(RateLimited) as refused:
        limiter.check(1, "dv")
    assert refused.value.retry_after == 20  # one request every 20 s at 3 a minute
    assert "at most 3 a minute" in refused.value.message
    assert refused.value.http_status == 429
    limiter.check(2, "dv")  # another tenant has its own bucket
    for _ in range(100):
        limiter.check(1, "apply")  # 0 = no limit
    clock.now += 20
    limiter.check(1, "dv")
    with pytest.raises(RateLimited):
        limiter.check(1, "dv")


def test_token_lookups_have_a_bucket_per_client_address() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"dv": 1, UNVERIFIED_TOKENS: 2}, clock=clock)
    for _ in range(2):
        limiter.check_unverified_token("192.0.2.1", "httpsok-token")
    with pytest.raises(RateLimited) as refused:
        limiter.check_unverified_token("192.0.2.1", "httpsok-token")
    assert refused.value.retry_after == 30
    assert "192.0.2.1" in refused.value.message
    assert "check the httpsok-token header" in refused.value.message
    limiter.check_unverified_token("192.0.2.2", "httpsok-token")  # another address
    limiter.check(1, "dv")  # tenant buckets are apart from address buckets
    clock.now += 30
    limiter.check_unverified_token("192.0.2.1", "httpsok-token")


def test_token_lookups_unlimited_when_set_to_zero() -> None:
    limiter = RateLimiter({UNVERIFIED_TOKENS: 0}, clock=FakeClock())
    for _ in range(1000):
        limiter.check_unverified_token("192.0.2.1", "httpsok-token")


def test_a_full_table_forgets_the_least_recently_used_never_everyone() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"dv": 1, UNVERIFIED_TOKENS: 1}, clock=clock, max_buckets=8)
    limiter.check(1, "dv")  # tenant 1 has used its one request
    for n in range(1000):  # a flood of distinct addresses, each a new bucket
        limiter.check_unverified_token(f"10.0.{n // 256}.{n % 256}", "h")
        # tenant 1 keeps asking: its bucket stays recently used and stays empty
        with pytest.raises(RateLimited):
            limiter.check(1, "dv")
        assert len(limiter) <= 8
    clock.now += 60
    limiter.check(1, "dv")


def test_an_idle_bucket_is_the_one_forgotten() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"dv": 1}, clock=clock, max_buckets=2)
    limiter.check(1, "dv")
    limiter.check(2, "dv")
    with pytest.raises(RateLimited):
        limiter.check(1, "dv")  # 1 is now the most recently used
    limiter.check(3, "dv")  # the table is full: 2, the least recently used, goes
    with pytest.raises(RateLimited):
        limiter.check(1, "dv")
    limiter.check(2, "dv")  # forgotten, so a fresh bucket


def test_ipv6_clients_are_counted_per_64() -> None:
    limiter = RateLimiter({UNVERIFIED_TOKENS: 2}, clock=FakeClock())
    limiter.check_unverified_token("2001:db8:1:2::1", "h")
    limiter.check_unverified_token("2001:db8:1:2:ffff:ffff:ffff:ffff", "h")
    with pytest.raises(RateLimited) as refused:
        limiter.check_unverified_token("2001:db8:1:2:abcd::9", "h")
    assert "2001:db8:1:2::/64" in refused.value.message
    limiter.check_unverified_token("2001:db8:1:3::1", "h")  # the next /64 is someone else
    assert len(limiter) == 2


def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address() -> None:
    limiter = RateLimiter({UNVERIFIED_TOKENS: 1}, clock=FakeClock())
    limiter.check_unverified_token("192.0.2.7", "h")
    with pytest.raises(RateLimited):
        limiter.check_unverified_token("::ffff:192.0.2.7", "h")
    limiter.check_unverified_token("192.0.2.8", "h")
