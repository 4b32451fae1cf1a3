"""Per-tenant request limits for /v1/cert/dv and /v1/cert/apply (token buckets, in memory).

Each (tenant, endpoint) has a bucket of `per_minute` tokens that refills continuously; a request
takes one or is refused with 429 and how long to wait. Buckets live in the process: with
several certok nodes each node enforces its own share (documented in docs/settings.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from certok.errors import RateLimited

# Forget idle buckets past this many, so a flood of distinct tenants cannot grow memory.
MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(
        self, per_minute: dict[str, int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._buckets: dict[tuple[int, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, tenant_id: int, endpoint: str) -> None:
        """Take one request from the tenant's bucket, or raise RateLimited."""
        limit = self._per_minute.get(endpoint, 0)
        if limit <= 0:
            return
        now = self._clock()
        rate = limit / 60.0
        key = (tenant_id, endpoint)
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(limit), now))
            tokens = min(float(limit), tokens + (now - stamp) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / rate)
                raise RateLimited(
                    f"too many /v1/cert/{endpoint} requests for this tenant (at most {limit} a "
                    f"minute): retry in {wait} s",
                    retry_after=wait,
                )
            if len(self._buckets) >= MAX_BUCKETS and key not in self._buckets:
                self._buckets.clear()
            self._buckets[key] = (tokens - 1.0, now)
