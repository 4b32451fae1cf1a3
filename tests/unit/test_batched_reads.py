"""BatchedReads (certok/api/batched_reads.py): reads asked for in the same turn of the event
loop are made together, a batch's failure reaches its own callers only, and nothing waits for
more than the batches ahead of it."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

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

    reads = BatchedReads(slow, max_batch=1, max_running=2, alongside_from=1)

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


class HeldFirst:
    """Negates its keys; notes each batch; holds the first batch until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def __call__(self, keys: Sequence[int]) -> Mapping[int, int]:
        self.batches.append(list(keys))
        if len(self.batches) == 1:
            self.first_started.set()
            self.release.wait(30)
        return {key: -key for key in keys}


def test_a_batch_runs_alongside_another_only_once_enough_reads_wait() -> None:
    reader = HeldFirst()
    # No time limit within the test: only the number of waiting reads starts a batch here.
    reads = BatchedReads(reader, max_running=2, alongside_from=3, alongside_after=30)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(3000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def run() -> list[int | None]:
        first = asyncio.ensure_future(reads.get(0))
        await asyncio.to_thread(reader.first_started.wait, 30)
        # Two reads wait while the first batch runs: too few for a batch alongside it.
        few = [asyncio.ensure_future(reads.get(key)) for key in (1, 2)]
        await asyncio.sleep(0.05)  # time for a wrongly started batch to reach the reader
        assert reader.batches == [[0]]
        # A third makes enough: they are read alongside the held batch, as one.
        more = asyncio.ensure_future(reads.get(3))
        await until(lambda: len(reader.batches) == 2)
        assert reader.batches[1] == [1, 2, 3]
        reader.release.set()
        return list(await asyncio.gather(first, *few, more))

    assert asyncio.run(run()) == [0, -1, -2, -3]


def test_reads_waiting_for_a_running_batch_are_read_together_when_it_ends() -> None:
    reader = HeldFirst()
    reads = BatchedReads(reader, alongside_after=30)

    async def run() -> list[int | None]:
        first = asyncio.ensure_future(reads.get(1))
        await asyncio.to_thread(reader.first_started.wait, 30)
        later = [asyncio.ensure_future(reads.get(key)) for key in (2, 3, 4)]
        await asyncio.sleep(0.05)  # time for a wrongly started batch to reach the reader
        assert reader.batches == [[1]]
        reader.release.set()
        return list(await asyncio.gather(first, *later))

    assert asyncio.run(run()) == [-1, -2, -3, -4]
    assert reader.batches == [[1], [2, 3, 4]]


def test_reads_waiting_start_when_any_running_batch_ends_not_the_last() -> None:
    batches: list[list[int]] = []
    release = {key: threading.Event() for key in (0, 1)}
    started = threading.Semaphore(0)

    def held(keys: Sequence[int]) -> Mapping[int, int]:
        batches.append(list(keys))
        started.release()
        for key in keys:
            if key in release:
                release[key].wait(30)
        return {key: key + 100 for key in keys}

    # Two waiting reads make a batch alongside; one alone starts only when a batch ends.
    reads = BatchedReads(held, max_batch=1, max_running=2, alongside_from=2, alongside_after=30)

    async def run() -> int | None:
        held_long = asyncio.ensure_future(reads.get(0))
        await asyncio.to_thread(started.acquire, True, 30)
        ending = asyncio.ensure_future(reads.get(1))
        waiting = asyncio.ensure_future(reads.get(2))  # no third batch: max_running
        await asyncio.to_thread(started.acquire, True, 30)
        await asyncio.sleep(0.05)  # time for a wrongly started batch to reach the reader
        assert sorted(batches) == [[0], [1]]
        release[1].set()  # the batch of key 1 ends; key 0's still runs
        assert await ending == 101
        answer = await asyncio.wait_for(waiting, 30)
        assert not held_long.done()
        release[0].set()
        assert await held_long == 100
        return answer

    assert asyncio.run(run()) == 102


def test_a_held_up_batch_is_gone_around_after_the_time_limit() -> None:
    release = threading.Event()
    first_started = threading.Event()

    def stuck_first(keys: Sequence[int]) -> Mapping[int, int]:
        if 0 in keys:
            first_started.set()
            release.wait(30)
        return {key: key * 2 for key in keys}

    # One read waiting is far fewer than alongside_from: only the time limit starts it.
    reads = BatchedReads(stuck_first, alongside_from=64, alongside_after=0.05)

    async def run() -> int | None:
        stuck = asyncio.ensure_future(reads.get(0))
        await asyncio.to_thread(first_started.wait, 30)
        answer = await asyncio.wait_for(reads.get(7), 30)
        assert not stuck.done()  # answered while the first batch is still held up
        release.set()
        assert await stuck == 0
        return answer

    assert asyncio.run(run()) == 14


def test_a_thread_that_cannot_start_fails_its_batch_and_not_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = Reader()
    reads = BatchedReads(reader, max_running=1)
    real_start = threading.Thread.start

    def cannot_start(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def run() -> tuple[list[object], list[int | None]]:
        monkeypatch.setattr(threading.Thread, "start", cannot_start)
        failed = await asyncio.wait_for(
            asyncio.gather(reads.get(4), reads.get(5), return_exceptions=True), 30
        )
        monkeypatch.setattr(threading.Thread, "start", real_start)
        return failed, await asyncio.wait_for(asyncio.gather(reads.get(4), reads.get(6)), 30)

    failed, answered = asyncio.run(run())
    assert [str(error) for error in failed] == ["can't start new thread"] * 2
    assert answered == [16, 36]


def test_a_thread_that_cannot_start_leaves_the_batch_to_those_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = Reader()
    reads = BatchedReads(reader, max_running=2)

    def cannot_start(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def run() -> list[int | None]:
        first = await asyncio.wait_for(reads.get(2), 30)  # one thread started
        monkeypatch.setattr(threading.Thread, "start", cannot_start)
        return [first, await asyncio.wait_for(reads.get(3), 30)]

    assert asyncio.run(run()) == [4, 9]


class StoppingMapping(Mapping[int, int]):
    """A mapping whose `get` raises StopIteration for key 1."""

    def __getitem__(self, key: int) -> int:
        return key

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def get(self, key: int, default: object = None) -> Any:
        if key == 1:
            raise StopIteration("from get")
        return key


def test_an_answer_that_cannot_be_given_fails_that_caller_and_answers_the_others() -> None:
    reads = BatchedReads(lambda keys: StoppingMapping())

    async def run() -> list[object]:
        return await asyncio.wait_for(
            asyncio.gather(reads.get(1), reads.get(2), return_exceptions=True), 30
        )

    failed, answered = asyncio.run(run())
    assert isinstance(failed, RuntimeError) and "StopIteration" in str(failed)
    assert answered == 2


def test_a_read_raising_stop_iteration_fails_its_callers_with_why() -> None:
    calls = 0

    def stopping(keys: Sequence[int]) -> Mapping[int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StopIteration("no more")
        return {key: key for key in keys}

    reads = BatchedReads(stopping)

    async def run() -> tuple[list[object], int | None]:
        failed = await asyncio.wait_for(
            asyncio.gather(reads.get(1), reads.get(2), return_exceptions=True), 30
        )
        return failed, await asyncio.wait_for(reads.get(3), 30)

    failed, answered = asyncio.run(run())
    assert [type(error) for error in failed] == [RuntimeError, RuntimeError]
    assert "StopIteration" in str(failed[0])
    assert answered == 3


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


def test_a_closed_event_loop_is_not_kept_alive_by_it() -> None:
    # Each of a test's clients runs a loop of its own: a server's reads must not hold on to
    # every loop that ever asked, nor to what their callbacks hold.
    reads = BatchedReads(Reader())
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(reads.get(4)) == 16
    loop.close()
    gone = weakref.ref(loop)
    del loop
    assert let_go(gone)


def test_a_loop_closed_with_reads_waiting_goes_once_another_loop_asks() -> None:
    # Its waiting reads' futures (and the time limit's timer) hold it: its entry must not.
    reader = HeldFirst()
    reads = BatchedReads(reader, max_running=1)
    loop = asyncio.new_event_loop()

    async def leave_reads_waiting() -> None:
        first = asyncio.ensure_future(reads.get(1))
        await asyncio.to_thread(reader.first_started.wait, 5)
        second = asyncio.ensure_future(reads.get(2))
        await asyncio.sleep(0)
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)

    loop.run_until_complete(leave_reads_waiting())
    loop.close()
    reader.release.set()
    gone = weakref.ref(loop)
    del loop
    assert asyncio.run(reads.get(3)) == -3
    assert let_go(gone)


def let_go(gone: weakref.ref[Any], seconds: float = 5.0) -> bool:
    """Whether what `gone` refers to is collected within `seconds`: a reading thread lets go
    of its batch's loop a moment after it has handed the answer over."""
    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        if gone() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchedReads(Reader(), max_batch=0)


def test_its_threads_end_once_it_is_gone() -> None:
    before = set(threading.enumerate())
    reads = BatchedReads(Reader(), max_running=2)
    assert asyncio.run(reads.get(3)) == 9
    started = [
        thread
        for thread in threading.enumerate()
        if thread not in before and thread.name.startswith("certok-reads")
    ]
    assert started  # as the batches need them
    del reads
    # Collected once the thread that answered has let go of its batch (a moment after the
    # answer reaches the loop), at the collector's next run.
    for _ in range(300):
        gc.collect()
        for thread in started:
            thread.join(0.1)
        if not any(thread.is_alive() for thread in started):
            break
    assert not any(thread.is_alive() for thread in started)


class LoopStarter:
    """A `start_read` that answers on the loop's next turn, from the loop's own thread, with
    squares (as Reader); it declines the batches `decline` says to."""

    def __init__(self, decline: Callable[[Sequence[int]], bool] = lambda keys: False) -> None:
        self.sent: list[list[int]] = []
        self.threads: set[int] = set()
        self.decline = decline
        self.error: BaseException | None = None

    def __call__(
        self, keys: Sequence[int], answer: Callable[[Mapping[int, int], Any], None]
    ) -> bool:
        if self.decline(keys):
            return False
        self.sent.append(list(keys))
        self.threads.add(threading.get_ident())
        found = {key: key * key for key in keys if key != 13}
        asyncio.get_running_loop().call_soon(answer, {} if self.error else found, self.error)
        return True


def test_a_batch_sent_from_the_loop_is_read_there_and_not_on_a_thread() -> None:
    reader, starter = Reader(), LoopStarter()
    reads = BatchedReads(reader, start_read=starter)

    async def run() -> list[int | None]:
        return await asyncio.gather(*(reads.get(key) for key in (1, 2, 13, 2)))

    assert asyncio.run(run()) == [1, 4, None, 4]
    assert starter.sent == [[1, 2, 13]] and reader.batches == []
    assert starter.threads == {threading.get_ident()}  # asyncio.run's loop runs here


def test_a_batch_the_loop_declines_is_read_on_a_thread() -> None:
    reader, starter = Reader(), LoopStarter(decline=lambda keys: 3 in keys)
    reads = BatchedReads(reader, max_batch=2, max_running=1, start_read=starter)

    async def run() -> list[int | None]:
        return await asyncio.gather(*(reads.get(key) for key in range(6)))

    assert asyncio.run(run()) == [key * key for key in range(6)]
    assert starter.sent == [[0, 1], [4, 5]] and reader.batches == [[2, 3]]


def test_a_batch_sent_from_the_loop_that_fails_fails_its_callers() -> None:
    starter = LoopStarter()
    starter.error = StopIteration("a future cannot take this")
    reads = BatchedReads(Reader(), start_read=starter)

    async def run() -> list[Any]:
        return await asyncio.gather(reads.get(1), reads.get(2), return_exceptions=True)

    failures = asyncio.run(run())
    assert all(isinstance(failure, RuntimeError) for failure in failures)
    assert all("StopIteration" in str(failure) for failure in failures)
    starter.error = ConnectionError("the database went away")
    again = asyncio.run(run())
    assert all(isinstance(failure, ConnectionError) for failure in again)
