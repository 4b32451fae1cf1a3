"""Reads asked for at the same moment, made together: one thread hop and one query for many.

Each request the event loop serves that needs the database costs a hop to a thread and back,
and a statement (on PostgreSQL, a round trip). When many clients poll at once, the reads they
ask for while the loop is busy are gathered and run as one batch. A caller's read waits for
the next batch to start, on the loop's next turn: at once when none is running; else, while
fewer than `max_running` run, as soon as enough reads wait to make a batch alongside them
(`alongside_from`) or no batch has started for `alongside_after` seconds (the running ones
are held up: while one is stuck, a poll waits that long more); and when a running one ends,
whichever comes first.

A batch may instead be sent from the loop itself (`start_read`: PostgreSQL's reads through
libpq, `certok.db.loop_reads`), without a thread; whatever it declines goes to a thread.
The batches run on threads of their own, not the event loop's default executor: that one
also runs slow blocking work (DNS checks of delegations, say), and a poll must not queue
behind it. Nor an executor of their own: a batch's trip to a thread and back is what a poll
the cache misses pays for most, after the read itself, and an executor's futures (a
concurrent one, the asyncio one wrapping it, a task awaiting it) cost more than the trip's
two wake-ups. A thread here takes the batch from a queue and hands what it read straight to
the loop, which answers the batch's callers.

A `BatchedReads` may be used from several event loops (a test's clients each run their own);
what it gathers, it gathers per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_RUNNING = 4
# While a batch runs, another starts only once this many reads wait for one. Fewer are read
# sooner by joining the next batch than by a batch of their own: each batch costs a trip to
# a thread and back and a round trip to the database, most of what a few reads cost.
DEFAULT_ALONGSIDE_FROM = 8
# ... or once no batch has started for this long while reads wait: batches held up (a lock, a
# slow disk, a connection that hangs) are gone around, up to `max_running` batches at once.
# A read takes a fraction of this.
DEFAULT_ALONGSIDE_AFTER = 0.01


class BatchedReads(Generic[K, V]):
    """Runs `read(keys)` (blocking: in a thread) for the keys asked for together; `get(key)`
    answers with what it returned for `key`, or None when it returned nothing for it."""

    def __init__(
        self,
        read: Callable[[Sequence[K]], Mapping[K, V]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_running: int = DEFAULT_MAX_RUNNING,
        alongside_from: int = DEFAULT_ALONGSIDE_FROM,
        alongside_after: float = DEFAULT_ALONGSIDE_AFTER,
        start_read: StartRead[K, V] | None = None,
    ) -> None:
        if max_batch < 1 or max_running < 1 or alongside_from < 1:
            raise ValueError("max_batch, max_running and alongside_from must be at least 1")
        if alongside_after < 0:
            raise ValueError("alongside_after must be 0 or more")
        self._read = read
        # Sends a batch's read from the loop, to answer later; False: read it on a thread.
        self._start_read = start_read
        self._max_batch = max_batch
        self._max_running = max_running
        self._alongside_from = alongside_from
        self._alongside_after = alongside_after
        # The batches to read; None tells a thread to end. Each loop hands at most
        # `max_running` batches at once to the `max_running` threads all loops share (one loop
        # in a server), started as batches first need them.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads_lock = threading.Lock()
        self._threads = 0
        # The threads end once this object is collected (they hold the queue, not this).
        weakref.finalize(self, _end_threads, self._jobs, max_running)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBatches[K, V]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        batches = self._loops.get(loop)
        if batches is None:
            # A loop closed with reads still waiting is held by their futures and timer: its
            # entry goes once another loop asks (its first read only).
            for closed in [known for known in self._loops if known.is_closed()]:
                del self._loops[closed]
            batches = self._loops[loop] = _LoopBatches(self)
        return await batches.get(key)

    def _submit(self, job: _Job) -> None:
        """Queue `job` for a thread; raises when there is none and none can be started."""
        if self._threads < self._max_running:
            with self._threads_lock:
                if self._threads < self._max_running:
                    try:
                        threading.Thread(
                            target=_read_batches,
                            args=(self._jobs,),
                            name=f"certok-reads-{self._threads + 1}",
                            daemon=True,  # a read in progress must not hold up the exit
                        ).start()
                    except Exception:
                        if self._threads == 0:
                            raise
                        # The threads already started read it once one is free.
                    else:
                        self._threads += 1
        self._jobs.put(job)


# What takes a batch's result: what was found for its keys, or the error the read raised.
Answer = Callable[[Mapping[Any, Any], BaseException | None], None]
# start_read(keys, answer): sends the read of `keys` from the running loop and returns True,
# `answer` to be called there once; or returns False at once, and never calls `answer`.
StartRead = Callable[[Sequence[K], Callable[[Mapping[K, V], BaseException | None], None]], bool]

# A batch for a thread: the read, its keys, the loop and what there takes the read's result
# (or the error it raised).
_Job = tuple[
    Callable[[Sequence[Any]], Mapping[Any, Any]], Sequence[Any], asyncio.AbstractEventLoop, Answer
]


def _read_batches(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        _read_batch(*job)
        del job  # nothing of a batch is held while waiting for the next


def _read_batch(
    read: Callable[[Sequence[Any]], Mapping[Any, Any]],
    keys: Sequence[Any],
    loop: asyncio.AbstractEventLoop,
    answer: Answer,
) -> None:
    error: BaseException | None = None
    found: Mapping[Any, Any] = {}
    try:
        found = read(keys)
    except StopIteration as stopped:  # a future cannot take it
        error = _future_safe(stopped)
    except BaseException as raised:  # every caller of the batch meets it, as from an executor
        error = raised
    # A closed loop (RuntimeError) has nobody waiting for this batch any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(answer, found, error)


def _end_threads(jobs: queue.SimpleQueue[_Job | None], count: int) -> None:
    for _ in range(count):
        jobs.put(None)


class _LoopBatches(Generic[K, V]):
    """One event loop's waiting reads and the batches running for them."""

    # It runs only on its loop, and finds the loop running there: holding it would keep the
    # owner's entry for the loop (a weak key) alive, and the loop with it, once it is closed.
    def __init__(self, owner: BatchedReads[K, V]) -> None:
        self._owner = owner
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._running = 0
        self._scheduled = False
        # Batches that may start whatever the number of reads waiting: one for each batch
        # that ended, or ran too long, while reads were waiting.
        self._owed = 0
        # Due `alongside_after` after reads began to wait with no batch starting for them.
        self._late: asyncio.TimerHandle | None = None

    async def get(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        self._start_soon()
        return await future

    def _start_soon(self) -> None:
        # Started on the loop's next turn, so every read asked for during this turn joins.
        if self._scheduled:
            return
        if self._may_start():
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        elif self._late is None and self._running < self._owner._max_running:
            self._late = asyncio.get_running_loop().call_later(
                self._owner._alongside_after, self._ran_long
            )

    def _may_start(self) -> bool:
        owner = self._owner
        if self._running == 0:
            return True
        return self._running < owner._max_running and (
            self._owed > 0 or len(self._waiting) >= owner._alongside_from
        )

    def _ran_long(self) -> None:
        self._late = None
        if self._waiting:
            self._owed += 1
            self._start_soon()

    def _start(self) -> None:
        self._scheduled = False
        owner = self._owner
        loop = asyncio.get_running_loop()
        started = False
        while self._waiting and self._may_start():
            batch = self._waiting[: owner._max_batch]
            del self._waiting[: owner._max_batch]
            batch = [(key, future) for key, future in batch if not future.done()]
            if not batch:
                continue
            self._owed = max(0, self._owed - 1)
            self._running += 1
            started = True
            keys = list(dict.fromkeys(key for key, _ in batch))
            answer = functools.partial(self._answer, batch)
            try:
                if owner._start_read is None or not owner._start_read(keys, answer):
                    owner._submit((owner._read, keys, loop, answer))
            except Exception as error:  # no thread to read it: its callers meet why
                answer({}, error)
        if (started or not self._waiting) and self._late is not None:
            self._late.cancel()  # the time limit runs while no batch starts for reads waiting
            self._late = None
        if not self._waiting:
            self._owed = 0
        else:
            self._start_soon()

    def _answer(
        self,
        batch: list[tuple[K, asyncio.Future[V | None]]],
        found: Mapping[K, V],
        error: BaseException | None,
    ) -> None:
        self._running -= 1
        if isinstance(error, StopIteration):  # a future cannot take it
            error = _future_safe(error)
        try:
            for key, future in batch:
                if not future.done():
                    _settle(future, found, key, error)
        finally:
            if self._waiting:
                self._owed += 1  # the ended batch's place goes to the reads waiting
                self._start_soon()


def _settle(
    future: asyncio.Future[V | None], found: Mapping[K, V], key: K, error: BaseException | None
) -> None:
    """Answer one caller of a batch: what the read found for `key`, or why it failed."""
    if error is None:
        try:
            future.set_result(found.get(key))
            return
        except StopIteration as stopped:  # a future cannot take it
            error = _future_safe(stopped)
        except Exception as unreadable:  # `read` returned no mapping, or one that raised
            error = unreadable
    future.set_exception(error)


def _future_safe(stopped: StopIteration) -> RuntimeError:
    """What a caller meets instead of a StopIteration, which a future refuses."""
    error = RuntimeError(f"the read raised StopIteration: {stopped!r}")
    error.__cause__ = stopped
    return error
