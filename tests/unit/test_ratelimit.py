"""Per-tenant token buckets (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from certok.api.ratelimit import UNVERIFIED_TOKENS, RateLimiter
from certok.errors import RateLimited


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
