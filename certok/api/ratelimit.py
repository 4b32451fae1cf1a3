"""Request limits (token buckets, in memory): per tenant for /v1/cert/dv and /v1/cert/apply,
and per client address for requests whose API token has to be looked up.

Each (subject, kind) has a bucket of `per_minute` tokens that refills continuously; a request
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
# The bucket kind for requests whose token must be looked up (per client address).
UNVERIFIED_TOKENS = "unverified_tokens"


class RateLimiter:
    def __init__(
        self, per_minute: dict[str, int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._buckets: dict[tuple[object, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, tenant_id: int, endpoint: str) -> None:
        """Take one request from the tenant's bucket, or raise RateLimited."""
        limit = self._per_minute.get(endpoint, 0)
        wait = self._take((tenant_id, endpoint), limit)
        if wait is not None:
            raise RateLimited(
                f"too many /v1/cert/{endpoint} requests for this tenant (at most {limit} a "
                f"minute): retry in {wait} s",
                retry_after=wait,
            )

    def check_unverified_token(self, client: str, header: str) -> None:
        """Take one from the client address's bucket of token lookups, or raise RateLimited."""
        limit = self._per_minute.get(UNVERIFIED_TOKENS, 0)
        wait = self._take((client, UNVERIFIED_TOKENS), limit)
        if wait is not None:
            raise RateLimited(
                f"too many requests from {client} with a token that is not accepted here (at "
                f"most {limit} a minute): check the {header} header; retry in {wait} s",
                retry_after=wait,
            )

    def _take(self, key: tuple[object, str], limit: int) -> int | None:
        """Take one token from ``key``'s bucket: None if there was one, else the seconds to
        wait for the next."""
        if limit <= 0:
            return None
        now = self._clock()
        rate = limit / 60.0
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(limit), now))
            tokens = min(float(limit), tokens + (now - stamp) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return math.ceil((1.0 - tokens) / rate)
            if len(self._buckets) >= MAX_BUCKETS and key not in self._buckets:
                self._buckets.clear()
            self._buckets[key] = (tokens - 1.0, now)
            return None
