"""Held `apply` requests wait here for their order to finish.

This process's worker wakes a request the moment it finishes the order (`finished`), handing
it what the finishing save wrote (certok/orders/finished_row.py), so the request needs no read
of its order. Orders another process or node drives are found by one poller that reads,
every `poll_seconds`, which of all the waited-for orders have finished: one query per
interval for every held request together, instead of one read per request per interval (200
held requests cost 200 reads a second that way, a seventh of the process's CPU under load).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from certok.orders.finished_row import FinishedRow

log = logging.getLogger(__name__)

# (order ids) → the ones among them that are no longer pending.
FinishedReader = Callable[[list[int]], Iterable[int]]
# Keeps each poll's IN (...) list well inside every database's parameter limit.
POLL_BATCH = 500


class OrderWaiters:
    def __init__(self) -> None:
        self._watches: dict[int, set[Watch]] = defaultdict(set)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._polling = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def polling(self) -> bool:
        """Whether a poller runs: then a waiter needs no polling of its own."""
        return self._polling

    def finished(self, order_id: int, row: FinishedRow | None = None) -> None:
        """Wake the requests waiting for `order_id`, with what its finishing save wrote
        (`row`; None: they read the order). Thread-safe: worker threads call it."""
        self._wake([order_id], row)

    def _wake(self, order_ids: Iterable[int], row: FinishedRow | None = None) -> None:
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            watches = [w for order_id in order_ids for w in self._watches.get(order_id, ())]
            if row is not None:
                for watch in watches:
                    watch.row = row
        for event in (watch.event for watch in watches):
            # RuntimeError: the loop closed meanwhile (shutdown); nobody is left to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def watch(self, order_id: int) -> Iterator[Watch]:
        """Listen for `order_id` finishing. Enter before reading the order's state, so a
        finish between that read and the wait still wakes the request."""
        watch = Watch(asyncio.Event())
        with self._lock:
            self._watches[order_id].add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                self._watches[order_id].discard(watch)
                if not self._watches[order_id]:
                    del self._watches[order_id]

    async def run_poller(self, read_finished: FinishedReader, poll_seconds: float) -> None:
        """Wake waiters whose order finished elsewhere, checking all of them every interval."""
        self._loop = asyncio.get_running_loop()
        self._polling = True
        try:
            while True:
                await asyncio.sleep(poll_seconds)
                with self._lock:
                    waited = list(self._watches)
                if not waited:
                    continue
                try:
                    done = await asyncio.to_thread(_read_in_batches, read_finished, waited)
                except Exception:
                    log.exception("reading the state of held orders failed; trying again")
                    continue
                self._wake(done)
        finally:
            self._polling = False


class Watch:
    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        # What the save that finished the order wrote, when this process's worker finished
        # it (set before `event`); the order is this request's own (it watches its id).
        self.row: FinishedRow | None = None

    async def wait(self, timeout: float) -> bool:
        """Wait until the order is reported finished or `timeout` passes; True when woken."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow cancellation
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()
        return True


def _read_in_batches(read_finished: FinishedReader, order_ids: list[int]) -> list[int]:
    done: list[int] = []
    for start in range(0, len(order_ids), POLL_BATCH):
        done.extend(read_finished(order_ids[start : start + POLL_BATCH]))
    return done
