"""Request limits (token buckets, in memory): per tenant for /v1/cert/dv and /v1/cert/apply,
and per client address for requests whose API token has to be looked up and for the public
HTTP-01 responder.

Each (subject, kind) has a bucket of `per_minute` tokens that refills continuously; a request
takes one or is refused with 429 and how long to wait. Buckets live in the process: with
several certok nodes each node enforces its own share (documented in docs/settings.md).

Memory is bounded (`max_buckets`) without ever resetting everyone's limits: buckets are kept
in least-recently-used order and, when the table is full, the least recently used one goes.
A bucket unused for a minute has refilled completely, so forgetting it loses nothing; pushing
out a bucket that is still in use takes `max_buckets` other subjects in between. IPv6 clients
are counted per /64 (one customer's usual allocation), so a host cycling through the
addresses of its own /64 neither gets a fresh bucket per address nor floods the table.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from certok.clients import client_key
from certok.errors import RateLimited

# Buckets kept at most; past this the least recently used is forgotten.
MAX_BUCKETS = 100_000
# The bucket kind for requests whose token must be looked up (per client address).
UNVERIFIED_TOKENS = "unverified_tokens"
# The bucket kind for the public HTTP-01 responder (per client address).
HTTP01_RESPONDER = "http01_responder"


class RateLimiter:
    def __init__(
        self,
        per_minute: dict[str, int],
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[tuple[object, str], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

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
        subject = client_key(client)
        wait = self._take((subject, UNVERIFIED_TOKENS), limit)
        if wait is not None:
            raise RateLimited(
                f"too many requests from {subject} with a token that is not accepted here (at "
                f"most {limit} a minute): check the {header} header; retry in {wait} s",
                retry_after=wait,
            )

    def check_client(self, client: str, kind: str, what: str) -> None:
        """Take one from the client address's bucket of `kind`, or raise RateLimited;
        `what` names the requests in the message."""
        limit = self._per_minute.get(kind, 0)
        subject = client_key(client)
        wait = self._take((subject, kind), limit)
        if wait is not None:
            raise RateLimited(
                f"too many {what} from {subject} (at most {limit} a minute): retry in {wait} s",
                retry_after=wait,
            )

    def _take(self, key: tuple[object, str], limit: int) -> int | None:
        """Take one token from ``key``'s bucket: None if there was one, else the seconds to
        wait for the next."""
        if limit <= 0:
            return None
        now = self._clock()
        rate = limit / 60.0
        buckets = self._buckets
        with self._lock:
            held = buckets.get(key)
            if held is None:
                tokens = float(limit)
                if len(buckets) >= self._max_buckets:
                    buckets.popitem(last=False)  # the least recently used
            else:
                tokens = min(float(limit), held[0] + (now - held[1]) * rate)
                buckets.move_to_end(key)
            if tokens < 1.0:
                buckets[key] = (tokens, now)
                return math.ceil((1.0 - tokens) / rate)
            buckets[key] = (tokens - 1.0, now)
            return None
