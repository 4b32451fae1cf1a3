"""Reads asked for at the same moment, made together: one thread hop and one query for many.

Each request the event loop serves that needs the database costs a hop to a thread and back,
and a statement (on PostgreSQL, a round trip). When many clients poll at once, the reads they
ask for while the loop is busy are gathered and run as one batch: a caller's read waits for
the next batch to start, never for more than the batch ahead of it to finish.

The batches run on threads of their own, not the event loop's default executor: that one
also runs slow blocking work (DNS checks of delegations, say), and a poll must not queue
behind it.

A `BatchedReads` may be used from several event loops (a test's clients each run their own);
what it gathers, it gathers per loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_RUNNING = 4


class BatchedReads(Generic[K, V]):
    """Runs `read(keys)` (blocking: in a thread) for the keys asked for together; `get(key)`
    answers with what it returned for `key`, or None when it returned nothing for it."""

    def __init__(
        self,
        read: Callable[[Sequence[K]], Mapping[K, V]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_running: int = DEFAULT_MAX_RUNNING,
    ) -> None:
        if max_batch < 1 or max_running < 1:
            raise ValueError("max_batch and max_running must be at least 1")
        self._read = read
        self._max_batch = max_batch
        self._max_running = max_running
        self._threads = ThreadPoolExecutor(max_running, thread_name_prefix="certok-reads")
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBatches[K, V]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        batches = self._loops.get(loop)
        if batches is None:
            batches = self._loops[loop] = _LoopBatches(self, loop)
        return await batches.get(key)


class _LoopBatches(Generic[K, V]):
    """One event loop's waiting reads and the batches running for them."""

    def __init__(self, owner: BatchedReads[K, V], loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._running = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak ones

    async def get(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = self._loop.create_future()
        self._waiting.append((key, future))
        self._start_soon()
        return await future

    def _start_soon(self) -> None:
        # Started on the loop's next turn, so every read asked for during this turn joins.
        if not self._scheduled and self._running < self._owner._max_running:
            self._scheduled = True
            self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        while self._waiting and self._running < self._owner._max_running:
            batch = self._waiting[: self._owner._max_batch]
            del self._waiting[: self._owner._max_batch]
            batch = [(key, future) for key, future in batch if not future.done()]
            if batch:
                self._running += 1
                task = self._loop.create_task(self._run(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V | None]]]) -> None:
        keys = list(dict.fromkeys(key for key, _ in batch))
        try:
            found = await self._loop.run_in_executor(self._owner._threads, self._owner._read, keys)
        except Exception as error:  # every caller of the batch meets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for key, future in batch:
                if not future.done():
                    future.set_result(found.get(key))
        finally:
            self._running -= 1
            if self._waiting:
                self._start_soon()
