"""Per-tenant token buckets (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from certok.api.ratelimit import RateLimiter
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
