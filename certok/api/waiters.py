"""Wake API requests waiting for an order when a worker thread finishes it."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict


class OrderWaiters:
    """In-process notification; requests also poll the database, so several nodes still work."""

    def __init__(self) -> None:
        self._events: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def finished(self, order_id: int) -> None:
        """Thread-safe: called from worker threads."""
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            events = list(self._events.get(order_id, ()))
        for event in events:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, order_id: int, timeout: float) -> None:
        event = asyncio.Event()
        with self._lock:
            self._events[order_id].add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._events[order_id].discard(event)
                if not self._events[order_id]:
                    del self._events[order_id]
