"""Small in-process caches for the hot polling path of /v1/cert/apply.

- Tokens: a valid token's tenant is remembered for a few seconds, so polling does not hash,
  query and compare on every request. Revoking a token or disabling a tenant therefore takes
  effect within `token_cache_seconds` on every node.
- Issued orders never change: their rendered answer is kept (bounded, with a time limit), so
  polling an issued code costs no database read and no decryption.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded LRU map whose entries expire `ttl` seconds after they were stored."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        if self._ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, value = entry
            if expires < self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def token_key(token: str) -> bytes:
    """Cache key for a token: its digest, so the map never holds tokens themselves."""
    return hashlib.sha256(token.strip().lower().encode("utf-8", "replace")).digest()
