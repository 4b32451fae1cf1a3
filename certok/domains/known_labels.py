"""The delegations one process has read, so dv and the order-time ownership check do not read
them again for every request.

A delegation's row is written once and never changed or removed by certok (its label is a
keyed hash of the tenant and the name: certok/domains/delegations.py), so a label read once
stays true: the map keeps only what was read or committed, and a name it does not know is
read from the database as before. Bounded: the least recently used entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

# About 300 bytes an entry: a few megabytes at most per process.
KNOWN_LABELS_MAX = 20_000


class KnownLabels:
    """(tenant id, base name) → label, for delegations read from the database."""

    def __init__(self, max_entries: int = KNOWN_LABELS_MAX) -> None:
        self._max = max_entries
        self._labels: OrderedDict[tuple[int, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, tenant_id: int, bases: Iterable[str]) -> dict[str, str]:
        """The labels of those of `bases` this map knows."""
        found: dict[str, str] = {}
        with self._lock:
            for base in bases:
                label = self._labels.get((tenant_id, base))
                if label is not None:
                    self._labels.move_to_end((tenant_id, base))
                    found[base] = label
        return found

    def remember(self, tenant_id: int, labels: dict[str, str]) -> None:
        """Labels as read from the database, or as committed to it (never ones about to be
        written: the write may still fail)."""
        with self._lock:
            for base, label in labels.items():
                self._labels[(tenant_id, base)] = label
                self._labels.move_to_end((tenant_id, base))
            while len(self._labels) > self._max:
                self._labels.popitem(last=False)
