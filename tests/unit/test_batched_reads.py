"""BatchedReads (certok/api/batched_reads.py): reads asked for in the same turn of the event
loop are made together, a batch's failure reaches its own callers only, and nothing waits for
more than the batches ahead of it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence

import pytest

from certok.api.batched_reads import BatchedReads


class Reader:
    """Squares its keys; notes each batch it was given. Key 13 is not found."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, keys: Sequence[int]) -> Mapping[int, int]:
        with self.lock:
            self.batches.append(list(keys))
        return {key: key * key for key in keys if key != 13}


def test_reads_asked_for_together_are_one_batch() -> None:
    reader = Reader()
    reads = BatchedReads(reader)

    async def run() -> list[int | None]:
        return await asyncio.gather(*(reads.get(key) for key in (1, 2, 13, 2, 3)))

    assert asyncio.run(run()) == [1, 4, None, 4, 9]
    assert reader.batches == [[1, 2, 13, 3]]  # each key once


def test_batches_are_at_most_max_batch_and_run_one_after_another() -> None:
    reader = Reader()
    reads = BatchedReads(reader, max_batch=4, max_running=1)

    async def run() -> list[int | None]:
        return await asyncio.gather(*(reads.get(key) for key in range(10)))

    assert asyncio.run(run()) == [key * key for key in range(10)]
    assert reader.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_at_most_max_running_batches_run_at_once() -> None:
    started = threading.Semaphore(0)
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def slow(keys: Sequence[int]) -> Mapping[int, int]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        started.release()
        release.wait(30)
        with lock:
            running -= 1
        return {key: key for key in keys}

    reads = BatchedReads(slow, max_batch=1, max_running=2)

    async def run() -> list[int | None]:
        polls = asyncio.gather(*(reads.get(key) for key in range(6)))
        # Two batches start; the other four keys wait for them.
        for _ in range(2):
            await asyncio.to_thread(started.acquire, True, 30)
        assert running == 2
        release.set()
        return await polls

    assert asyncio.run(run()) == list(range(6))
    assert most == 2


def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    calls: list[list[int]] = []

    def flaky(keys: Sequence[int]) -> Mapping[int, int]:
        calls.append(list(keys))
        if len(calls) == 1:
            raise ConnectionError("database unavailable")
        return {key: -key for key in keys}

    reads = BatchedReads(flaky)

    async def run() -> tuple[list[object], list[int | None]]:
        first = await asyncio.gather(reads.get(1), reads.get(2), return_exceptions=True)
        second = await asyncio.gather(reads.get(1), reads.get(3))
        return first, second

    first, second = asyncio.run(run())
    assert [type(error) for error in first] == [ConnectionError, ConnectionError]
    assert second == [-1, -3]
    assert calls == [[1, 2], [1, 3]]


def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    reader = Reader()
    reads = BatchedReads(reader)

    async def run() -> list[int | None]:
        gone = asyncio.ensure_future(reads.get(5))
        kept = [asyncio.ensure_future(reads.get(key)) for key in (6, 7)]
        await asyncio.sleep(0)  # all three asked
        gone.cancel()
        return list(await asyncio.gather(*kept))

    assert asyncio.run(run()) == [36, 49]


def test_each_event_loop_gathers_its_own_reads() -> None:
    reader = Reader()
    reads = BatchedReads(reader)
    for key in (2, 3):  # asyncio.run makes a new loop each time
        assert asyncio.run(reads.get(key)) == key * key
    assert reader.batches == [[2], [3]]


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchedReads(Reader(), max_batch=0)
