"""The hot-path caches: bounded, expiring, never keyed by a raw token."""

from __future__ import annotations

from certok.api.caches import TtlCache, token_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_and_the_size_is_bounded() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(ttl=2.0, max_entries=3, clock=clock)
    for i, key in enumerate("abcd"):
        cache.put(key, i)
    assert len(cache) == 3 and cache.get("a") is None  # least recently used went first
    assert cache.get("b") == 1
    clock.now = 2.5
    assert cache.get("b") is None and cache.get("d") is None


def test_zero_ttl_disables_the_cache() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=0, max_entries=3)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0


def test_token_keys_are_digests() -> None:
    token = "0123456789abcdef0123456789abcdef"
    key = token_key(token)
    assert token.encode() not in key and len(key) == 32
    assert token_key(token.upper() + " ") == key
