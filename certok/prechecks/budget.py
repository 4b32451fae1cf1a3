"""How many HTTP-01 pre-check requests `dv?type=http` may send: per tenant and per target.

Each name of a `dv?type=http` is one request (and its redirects) to a web server the tenant
names. Without a cap, one tenant at the `dv` rate limit with 100 names a call would send
thousands of requests a minute at any public host, through certok. Two token buckets per
minute bound that: one per tenant (everything it makes certok fetch) and one per target, for
all tenants together. A target is the name's registrable domain (`www.example.com` and
`api.example.com` are both `example.com`): a hundred subdomains of one site, usually on one
server, share its budget.

A `dv` takes a token for each of its names, all or none: it is checked in full or refused with
how long to wait, never checked in part. The buckets live in the process (each certok process
and node counts its own), bounded in number with the least recently used forgotten first.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from certok.errors import InvalidDomain, RateLimited
from certok.names import registrable_domain

MAX_BUCKETS = 100_000


class PrecheckBudget:
    def __init__(
        self,
        per_tenant_per_minute: int,
        per_target_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._per_tenant = per_tenant_per_minute
        self._per_target = per_target_per_minute
        self._clock = clock
        self._max_buckets = max_buckets
        # key -> (tokens, when): least recently used first.
        self._buckets: OrderedDict[tuple[str, object], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, tenant_id: int, names: list[str]) -> None:
        """Take one request per name from the tenant's and each target's bucket, or raise
        RateLimited (taking nothing) saying which limit and when to retry."""
        targets = Counter(_target(name) for name in names)
        with self._lock:
            now = self._clock()
            wanted: list[tuple[tuple[str, object], int, int]] = []
            if self._per_tenant > 0:
                wanted.append((("tenant", tenant_id), len(names), self._per_tenant))
            if self._per_target > 0:
                wanted.extend(
                    (("target", target), count, self._per_target)
                    for target, count in sorted(targets.items())
                )
            levels = [self._level(key, limit, now) for key, _, limit in wanted]
            for (key, count, limit), level in zip(wanted, levels, strict=True):
                # A request for more than a whole bucket waits for a full one.
                need = min(count, limit)
                if level < need:
                    wait = max(1, math.ceil((need - level) * 60.0 / limit))
                    raise RateLimited(_refusal(key, limit, wait), retry_after=wait)
            for (key, count, _), level in zip(wanted, levels, strict=True):
                self._store(key, level - count, now)

    def _level(self, key: tuple[str, object], limit: int, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(limit)
        tokens, when = held
        return min(float(limit), tokens + (now - when) * limit / 60.0)

    def _store(self, key: tuple[str, object], tokens: float, now: float) -> None:
        if key in self._buckets:
            self._buckets.move_to_end(key)
        elif len(self._buckets) >= self._max_buckets:
            self._buckets.popitem(last=False)
        self._buckets[key] = (tokens, now)


def _target(name: str) -> str:
    try:
        return registrable_domain(name)
    except InvalidDomain:
        return name


def _refusal(key: tuple[str, object], limit: int, wait: int) -> str:
    kind, subject = key
    if kind == "tenant":
        return (
            f"too many HTTP pre-checks for this tenant: dv with type=http fetches one URL per "
            f"name, at most {limit} a minute; retry in {wait} s, or check fewer names at once"
        )
    return (
        f"too many HTTP pre-checks of {subject} and its subdomains (at most {limit} requests a "
        f"minute to one site, for all of certok's tenants): retry in {wait} s"
    )
