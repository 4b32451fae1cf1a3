"""The pre-check budget of dv?type=http (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from certok.errors import RateLimited
from certok.prechecks.budget import PrecheckBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(count: int, domain: str = "example.com") -> list[str]:
    return [f"host{n}.{domain}" for n in range(count)]


def test_a_target_site_is_capped_for_all_tenants_together() -> None:
    clock = FakeClock()
    budget = PrecheckBudget(per_tenant_per_minute=0, per_target_per_minute=100, clock=clock)
    budget.take(1, names(60))
    with pytest.raises(RateLimited) as refused:
        budget.take(2, names(60))  # another tenant, the same site: 40 left
    assert refused.value.retry_after == 12  # 20 more at 100 a minute
    assert "example.com and its subdomains" in refused.value.message
    assert "at most 100 requests a minute" in refused.value.message
    budget.take(2, names(40))  # all or none: the refused call took nothing
    budget.take(2, names(100, "example.org"))  # another site has its own budget
    clock.now += 12
    budget.take(1, names(20))


def test_a_tenant_is_capped_over_all_targets() -> None:
    clock = FakeClock()
    budget = PrecheckBudget(per_tenant_per_minute=150, per_target_per_minute=0, clock=clock)
    budget.take(1, names(100, "a.test"))
    with pytest.raises(RateLimited) as refused:
        budget.take(1, names(100, "b.test"))
    assert "for this tenant" in refused.value.message
    assert refused.value.retry_after == 20
    budget.take(2, names(100, "c.test"))  # another tenant
    clock.now += 20
    budget.take(1, names(100, "b.test"))


def test_a_refusal_takes_nothing_from_any_bucket() -> None:
    budget = PrecheckBudget(per_tenant_per_minute=10, per_target_per_minute=5, clock=FakeClock())
    budget.take(2, names(2, "b.test"))
    with pytest.raises(RateLimited):
        budget.take(1, [*names(3, "a.test"), *names(4, "b.test")])  # b.test has 3 left
    budget.take(1, names(5, "a.test"))
    budget.take(1, names(3, "b.test"))


def test_subdomains_share_their_registrable_domain() -> None:
    budget = PrecheckBudget(per_tenant_per_minute=0, per_target_per_minute=2, clock=FakeClock())
    budget.take(1, ["www.example.co.uk", "example.co.uk"])
    with pytest.raises(RateLimited):
        budget.take(1, ["deep.api.example.co.uk"])
    budget.take(1, ["www.other.co.uk"])


def test_zero_turns_a_limit_off_and_the_table_is_bounded() -> None:
    budget = PrecheckBudget(0, 0, clock=FakeClock())
    for _ in range(100):
        budget.take(1, names(100))
    small = PrecheckBudget(1000, 1000, clock=FakeClock(), max_buckets=4)
    for n in range(50):
        small.take(n, [f"www.site{n}.test"])
    assert len(small._buckets) <= 4
