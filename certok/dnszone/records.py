"""What the authoritative DNS server knows: allocated labels and the TXT values presented.

The server answers from an immutable in-memory snapshot (``ZoneRecords``) held by a
``ZoneCache``; the cache reloads it from the database in the background, so no query ever
waits on a database read (acme-dns reads its database on every query).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from certok.db.models import ChallengeRecord, Delegation

log = logging.getLogger(__name__)

DNS01_KIND = "dns-01"


def _time_serial() -> int:
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
    serial: int = field(default_factory=_time_serial, compare=False)

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
        grouped: dict[str, list[str]] = {}
        for name, value in txt_rows:
            values = grouped.setdefault(normalise_name(name), [])
            if value not in values:
                values.append(value)
        return cls(
            labels=frozenset(normalise_name(label) for label in labels),
            txt=MappingProxyType({name: tuple(values) for name, values in grouped.items()}),
            serial=_time_serial() if serial is None else serial & 0xFFFFFFFF,
        )


def normalise_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


class ZoneCache:
    """In-memory snapshot the server answers from (never a DB read per query).

    ``refresh`` may be called from any thread (the worker calls it right after writing TXT
    rows); refreshes are serialised so an older read can never replace a newer one.
    """

    def __init__(self, session_factory: sessionmaker[Session] | None) -> None:
        self._session_factory = session_factory
        self._records = ZoneRecords.empty()
        self._refresh_lock = threading.Lock()
        # Lets request_refresh() wake run_refresher() from any thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        # Counts successful refreshes, so a thread can wait for one that started after it asked.
        self._progress = threading.Condition()
        self._started = 0
        self._completed = 0

    @property
    def records(self) -> ZoneRecords:
        return self._records

    def replace(self, records: ZoneRecords) -> None:
        self._records = records

    def refresh(self) -> None:
        """Load labels and dns-01 TXT rows from the database and swap in a new snapshot."""
        if self._session_factory is None:
            return
        with self._refresh_lock:
            with self._progress:
                self._started += 1
                number = self._started
            labels, rows = self._load()
            self._swap_in(labels, rows)
            with self._progress:
                self._completed = max(self._completed, number)
                self._progress.notify_all()

    def _load(self) -> tuple[list[str], list[tuple[str, str]]]:
        assert self._session_factory is not None
        with self._session_factory() as session:
            labels = list(session.scalars(select(Delegation.label)))
            # Newest first: if more values exist than the server presents, the newest are
            # the ones a CA is validating right now.
            rows = session.execute(
                select(ChallengeRecord.name, ChallengeRecord.value)
                .where(ChallengeRecord.kind == DNS01_KIND)
                .order_by(ChallengeRecord.id.desc())
            ).all()
        return labels, [(name, value) for name, value in rows]

    def _swap_in(self, labels: list[str], rows: list[tuple[str, str]]) -> None:
        current = self._records
        fresh = ZoneRecords.build(labels, rows)
        if fresh == current:
            # Keep the old object: answers cached for it stay valid and the serial stays put.
            return
        serial = max(fresh.serial, (current.serial + 1) & 0xFFFFFFFF)
        self._records = ZoneRecords(labels=fresh.labels, txt=fresh.txt, serial=serial)

    def request_refresh(self) -> None:
        """Wake the refresher now; safe to call from any thread, never blocks."""
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None:
            return
        # RuntimeError: the loop closed between our read and the call; nobody is left to wake.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wakeup.set)

    def wait_for_refresh(self, timeout: float) -> bool:
        """Ask for a refresh and block until one that started after this call has finished.

        For worker threads that must know their TXT rows are served before telling the CA to
        validate. Returns False on timeout (or when no refresher is running).
        """
        with self._progress:
            target = self._started + 1
        self.request_refresh()
        with self._progress:
            return self._progress.wait_for(lambda: self._completed >= target, timeout)

    async def run_refresher(self, interval: float) -> None:
        """Refresh every ``interval`` seconds or at once when requested, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        try:
            while True:
                # Clear before reading: a request that arrives during the read triggers
                # another refresh, so a write made just before it is never missed.
                self._wakeup.clear()
                try:
                    await asyncio.to_thread(self.refresh)
                except Exception:
                    log.exception("DNS zone refresh failed; serving the previous snapshot")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), interval)
        finally:
            self._loop = None
            self._wakeup = None
