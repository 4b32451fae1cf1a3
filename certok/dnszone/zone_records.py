"""One snapshot of what the authoritative DNS server knows: allocated labels and TXT values.

Immutable once built: the server answers from it without locks, and ``ZoneCache``
(zone_cache.py) swaps in a whole new one when the database changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def time_serial() -> int:
    """A SOA serial from the clock (seconds, as 32 bits)."""
    return int(time.time()) & 0xFFFFFFFF


@dataclass(frozen=True)
class ZoneRecords:
    """One consistent snapshot of the zone's dynamic data.

    Names are relative to the zone (normally one 16-hex-digit label) and lowercase. TXT values
    keep the order they should be served in (newest first from the database).
    """

    labels: frozenset[str]
    txt: Mapping[str, tuple[str, ...]]
    # SOA serial; not part of equality so a reload that changed nothing compares equal.
    serial: int = field(default_factory=time_serial, compare=False)
    # Lookup structures derived from this snapshot, memoised by whoever derives them (the
    # answer index per ZoneConfig, see zoneindex.py). Not part of the data.
    derived: dict[Any, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def empty(cls) -> ZoneRecords:
        return cls(labels=frozenset(), txt=MappingProxyType({}))

    @classmethod
    def build(
        cls,
        labels: Iterable[str],
        txt_rows: Iterable[tuple[str, str]],
        *,
        serial: int | None = None,
    ) -> ZoneRecords:
        """Normalise names (lowercase, no trailing dot) and drop duplicate values."""
        return cls(
            labels=label_keys(labels),
            txt=group_txt(txt_rows),
            serial=time_serial() if serial is None else serial & 0xFFFFFFFF,
        )


def owner_key(name: str) -> str:
    """The key a snapshot stores a name under: no surrounding spaces, no trailing dot,
    lowercase (unlike `certok.names.normalise_name`, it checks nothing)."""
    return name.strip().rstrip(".").lower()


def label_keys(labels: Iterable[str]) -> frozenset[str]:
    return frozenset(owner_key(label) for label in labels)


def group_txt(txt_rows: Iterable[tuple[str, str]]) -> Mapping[str, tuple[str, ...]]:
    """Values per normalised name, in the order given, without duplicates."""
    grouped: dict[str, dict[str, None]] = {}
    for name, value in txt_rows:
        grouped.setdefault(owner_key(name), {})[value] = None
    return MappingProxyType({name: tuple(values) for name, values in grouped.items()})
