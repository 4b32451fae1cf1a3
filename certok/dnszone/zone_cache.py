"""The zone cache: what the authoritative DNS server knows, kept fresh from the database.

The server answers from an immutable in-memory snapshot (``ZoneRecords``, zone_records.py)
held by a ``ZoneCache``; the cache reloads it from the database in the background, so no
query ever waits on a database read (acme-dns reads its database on every query).

A refresh is cheap when nothing changed: the TXT rows (pending dns-01 challenges only, a few
rows) are always read, the labels (one per delegation, tens of thousands) only when the
delegations table's fingerprint moved. Snapshot hooks let the server build its answer index
for a new snapshot in the refresher's thread, before the snapshot is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, String, func, select, true, type_coerce
from sqlalchemy.orm import Session, sessionmaker

from certok.db.cursor_statements import CursorStatement
from certok.db.engine import opened
from certok.db.models import ChallengeRecord, Delegation, Order
from certok.dnszone.zone_records import ZoneRecords, group_txt, label_keys, time_serial
from certok.order_states import PENDING

log = logging.getLogger(__name__)

DNS01_KIND = "dns-01"
# Labels are reread in full at least this often even when the delegations table's fingerprint
# did not move: the fingerprint cannot see a label edited in place (certok never edits one; the
# only column it updates is the event scanner's next_check_at, which the zone does not read) or,
# on SQLite, the highest row deleted and another inserted within one refresh with a clock that
# did not advance. A full read grows with the number of labels, so it is not done every time.
LABELS_FULL_RELOAD_SECONDS = 30.0


# Read on every refresh (after every TXT change under load): built once, on the tables.
_RECORDS = ChallengeRecord.__table__
_DELEGATIONS = Delegation.__table__
_ORDERS = Order.__table__
# Only running orders' values: a stopped order's (its tenant disabled) is not served even if
# a worker that lost its lease wrote it after the stop.
_TXT_ROWS = (
    select(_RECORDS.c.id, _RECORDS.c.name, _RECORDS.c.value)
    .join(_ORDERS, _ORDERS.c.id == _RECORDS.c.order_id)
    .where(_RECORDS.c.kind == DNS01_KIND, _ORDERS.c.state == PENDING)
    .subquery("txt")
)
# count, highest id, and the highest id's created_at: each its own scalar subquery, so SQLite
# answers them from the b-tree (its count(*) shortcut, the rowid's ends) instead of one scan of
# the table per refresh (as one aggregate, count(id), max(id), max(created_at), it scans, and a
# refresh runs once per order under load).
_LABELS_FINGERPRINT = select(
    select(func.count()).select_from(_DELEGATIONS).scalar_subquery().label("labels"),
    select(func.max(_DELEGATIONS.c.id)).scalar_subquery().label("highest"),
    # As the driver returns it: the fingerprint is only compared, and the refresh's rows
    # then need no conversion each (see `CursorStatement`).
    type_coerce(
        select(_DELEGATIONS.c.created_at)
        .order_by(_DELEGATIONS.c.id.desc())
        .limit(1)
        .scalar_subquery(),
        String,
    ).label("newest_at"),
).subquery("fingerprint")
# A refresh's one statement: the fingerprint's one row, joined with every TXT row (or with
# none: one row of NULLs). Newest first: if more values exist than the server presents, the
# newest are the ones a CA is validating right now.
_REFRESH = CursorStatement(
    select(
        _LABELS_FINGERPRINT.c.labels,
        _LABELS_FINGERPRINT.c.highest,
        _LABELS_FINGERPRINT.c.newest_at,
        _TXT_ROWS.c.name,
        _TXT_ROWS.c.value,
    )
    .select_from(_LABELS_FINGERPRINT.outerjoin(_TXT_ROWS, true()))
    .order_by(_TXT_ROWS.c.id.desc())
)
_ALL_LABELS = select(_DELEGATIONS.c.label)


# Called as hook(previous, fresh) by the thread that swaps a snapshot in, before it is published.
SnapshotHook = Callable[[ZoneRecords, ZoneRecords], object]


class ZoneCache:
    """In-memory snapshot the server answers from (never a DB read per query).

    ``refresh`` may be called from any thread (the worker calls it right after writing TXT
    rows); refreshes are serialised so an older read can never replace a newer one.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session] | None,
        *,
        labels_full_reload_seconds: float = LABELS_FULL_RELOAD_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session_factory = session_factory
        self._records = ZoneRecords.empty()
        self._refresh_lock = threading.Lock()
        self._hooks: list[SnapshotHook] = []
        # The labels last read in full, and what the delegations table looked like then.
        self._labels: frozenset[str] = frozenset()
        self._labels_fingerprint: tuple[object, ...] | None = None
        self._labels_read_at = 0.0
        self._labels_full_reload_seconds = labels_full_reload_seconds
        self._monotonic = monotonic
        # Lets request_refresh() wake run_refresher() from any thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        # Counts successful refreshes, so a thread can wait for one that started after it asked.
        self._progress = threading.Condition()
        self._started = 0
        self._completed = 0
        # Event-loop waiters (`refreshed`): (refresh number awaited, future), under _progress.
        self._loop_waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def records(self) -> ZoneRecords:
        return self._records

    def add_snapshot_hook(self, hook: SnapshotHook) -> None:
        """Call ``hook(previous, fresh)`` for every new snapshot, before it is published.

        It runs in the thread that swaps the snapshot in (the refresher's worker thread, or
        whoever calls ``replace``), so work done there stays off the event loop. A hook that
        raises is logged; the snapshot is published anyway.
        """
        self._hooks.append(hook)

    def remove_snapshot_hook(self, hook: SnapshotHook) -> None:
        with contextlib.suppress(ValueError):
            self._hooks.remove(hook)

    def replace(self, records: ZoneRecords) -> None:
        """Serve ``records`` from now on (snapshot hooks run first, in the caller's thread)."""
        self._publish(records)

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
                done = [f for target, f in self._loop_waiters if target <= self._completed]
                self._loop_waiters = [
                    (target, f) for target, f in self._loop_waiters if target > self._completed
                ]
            for future in done:
                with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits
                    future.get_loop().call_soon_threadsafe(_resolve, future)

    def _load(self) -> tuple[frozenset[str], list[tuple[str, str]]]:
        assert self._session_factory is not None
        # A connection, not a session: under load a refresh runs for most orders.
        with opened(self._session_factory).read_connection() as connection:
            # The TXT rows are always read: only pending dns-01 challenges have rows, so they
            # are few, and they are the data that must be served within a refresh of being
            # written. The labels' fingerprint comes with them.
            rows = _REFRESH.run(connection, {}).rows
            fingerprint = (rows[0].labels, rows[0].highest, rows[0].newest_at)
            labels = self._load_labels(connection, fingerprint)
        return labels, [(row.name, row.value) for row in rows if row.name is not None]

    def _load_labels(
        self, connection: Connection, fingerprint: tuple[object, ...]
    ) -> frozenset[str]:
        """The labels, read in full only when the delegations table may have changed.

        The fingerprint moves on every insert (a new highest id, or on SQLite a reused one,
        whose row then has a newer created_at) and every delete (the count), so deleting rows
        and adding others between two refreshes is seen too. The fingerprint is read first, so
        a row added between the two reads only makes the next refresh read the labels again.
        """
        now = self._monotonic()
        if (
            fingerprint == self._labels_fingerprint
            and now - self._labels_read_at < self._labels_full_reload_seconds
        ):
            return self._labels
        self._labels = label_keys(connection.scalars(_ALL_LABELS))
        self._labels_fingerprint = fingerprint
        self._labels_read_at = now
        return self._labels

    def _swap_in(self, labels: frozenset[str], rows: list[tuple[str, str]]) -> None:
        current = self._records
        txt = group_txt(rows)
        # Compared once, and not at all when unchanged: frozenset equality walks every label
        # even for the same object, a cost that grows with the zone.
        same_labels = labels is current.labels or labels == current.labels
        if same_labels and txt == current.txt:
            # Keep the old object: answers cached for it stay valid and the serial stays put.
            return
        if same_labels:
            labels = current.labels  # the same object lets the index skip comparing labels
        serial = max(time_serial(), (current.serial + 1) & 0xFFFFFFFF)
        self._publish(ZoneRecords(labels=labels, txt=txt, serial=serial))

    def _publish(self, fresh: ZoneRecords) -> None:
        previous = self._records
        for hook in list(self._hooks):
            try:
                hook(previous, fresh)
            except Exception:
                log.exception("a DNS snapshot hook failed; the snapshot is published anyway")
        self._records = fresh

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

    async def refreshed(self, timeout: float) -> bool:
        """`wait_for_refresh` for the event loop: ask for a refresh, wait for one that started
        after this call to finish. False on timeout (or when no refresher is running)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._progress:
            entry = (self._started + 1, future)
            self._loop_waiters.append(entry)
        self.request_refresh()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the awaited future completes, and a stopping server must stop.
            async with asyncio.timeout(timeout):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            with self._progress, contextlib.suppress(ValueError):
                self._loop_waiters.remove(entry)

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
                    async with asyncio.timeout(interval):  # see `refreshed`: not wait_for
                        await self._wakeup.wait()
        finally:
            self._loop = None
            self._wakeup = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ZoneNotRefreshed(RuntimeError):
    """The DNS server did not confirm that it serves the latest challenge records in time."""


def wait_until_served(cache: ZoneCache, timeout: float) -> None:
    """For worker threads in the DNS server's process: return once the zone was reloaded."""
    if not cache.wait_for_refresh(timeout):
        raise ZoneNotRefreshed(f"the DNS zone was not reloaded within {timeout:g} s")
