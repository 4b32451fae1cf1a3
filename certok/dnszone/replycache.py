"""The fast path's reply cache: bounded, evicting at random, shared by consecutive snapshots.

An entry is the canonical reply for one question key plus what it was built from:

    (full, truncated, stamp, serial_at, serial)

- ``truncated`` is the TC=1 form, or None when ``full`` fits in 512 bytes (then no UDP limit
  certok applies ever truncates it, and the TC form is not worth its memory).
- ``stamp`` is the zone index node the reply was built from (``None`` for a name that does not
  exist). Snapshot indexes share unchanged nodes by identity and give every changed name a new
  node object, so ``entry[2] is index.nodes.get(qname)`` says whether the entry still holds for
  an index: no invalidation pass is needed when a snapshot changes, and one cache can serve
  every index of a zone at once.
- ``serial_at`` is the offset of the SOA serial in ``full`` for negative replies (NXDOMAIN and
  NODATA carry the SOA), else 0; ``serial`` is the serial written there. A new serial is
  patched into those four bytes on the next hit instead of asking dnspython again.

Random eviction, not LRU: resolvers sweeping more names than fit would make an LRU (or FIFO)
miss on every question, while random eviction keeps a hit rate near size / working set. Hits
touch nothing but a dict lookup.
"""

from __future__ import annotations

import random
import threading
from typing import Final

from certok.dnszone.wire import ReplyKey

Entry = tuple[bytes, bytes | None, object, int, int]

# Positions in an Entry (literals, so a type checker knows what each index holds).
FULL: Final = 0
TRUNCATED: Final = 1
STAMP: Final = 2
SERIAL_AT: Final = 3
SERIAL: Final = 4

# Under half a kilobyte per entry (key, reply bytes, bookkeeping): room for a zone of 100k
# delegations asked two ways each without evicting anything, for some tens of MB at most.
MAX_CACHED_REPLIES = 200_000


class ReplyCache:
    """Entries per question key, at most ``max_entries`` of them.

    ``get`` is the dict's own lookup (the hot path pays no Python call); ``put`` takes a lock
    so threads answering at once (tests do) cannot corrupt the eviction bookkeeping.
    """

    def __init__(self, max_entries: int = MAX_CACHED_REPLIES) -> None:
        if max_entries < 1:
            raise ValueError("a reply cache needs room for at least one entry")
        self.max_entries = max_entries
        self._entries: dict[ReplyKey, Entry] = {}
        self.get = self._entries.get
        # Every key once, so a random victim is one index away. Keys leave only by eviction
        # (an outdated entry is replaced in place when its question comes again).
        self._keys: list[ReplyKey] = []
        self._lock = threading.Lock()
        self._random = random.Random()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def clear(self) -> None:
        """Forget every entry (bench/dns_miss.py times misses with it)."""
        with self._lock:
            self._entries.clear()
            self._keys.clear()

    def put(self, key: ReplyKey, entry: Entry) -> None:
        with self._lock:
            if key not in self._entries:
                if len(self._keys) >= self.max_entries:
                    self._evict_one()
                self._keys.append(key)
            self._entries[key] = entry

    def _evict_one(self) -> None:
        keys = self._keys
        slot = self._random.randrange(len(keys))
        last = keys.pop()
        victim = keys[slot] if slot < len(keys) else last
        if slot < len(keys):
            keys[slot] = last
        del self._entries[victim]
