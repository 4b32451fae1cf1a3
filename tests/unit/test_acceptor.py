"""The accept loop when descriptors run out: it waits between tries (never spins), sheds one
idle connection per try, logs once per shortage, and keeps accepting afterwards."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

import pytest

from certok.acceptor import ACCEPT_BURST, RESERVED_DESCRIPTORS, Acceptor, api_connection_budget


class ShortOfDescriptors(socket.socket):
    """A listening socket whose first `failures` accepts fail with EMFILE."""

    failures = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_waits_sheds_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="certok")
    listener = ShortOfDescriptors()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.failures = 5
    pauses: list[float] = []
    sheds: list[float] = []
    accepted: list[socket.socket] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0)

    async def main() -> None:
        done = asyncio.Event()

        def on_connection(sock: socket.socket, address: Any) -> None:
            accepted.append(sock)
            if len(accepted) == 2:
                done.set()

        acceptor = Acceptor(listener, on_connection, name="test", shed=sheds.append, sleep=pause)
        task = asyncio.create_task(acceptor.run())
        clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        for client in clients:
            client.close()

    asyncio.run(main())
    assert pauses == [0.1] * 5  # a pause before every retry: no busy loop
    assert len(sheds) == 5
    assert len(accepted) == 2
    messages = [record.getMessage() for record in caplog.records]
    assert sum("cannot accept connections" in m for m in messages) == 1
    assert sum("accepting connections again" in m for m in messages) == 1
    for sock in accepted:
        sock.close()
    listener.close()


def test_a_long_queue_is_taken_a_burst_at_a_time() -> None:
    # Connections shed or refused while the queue is taken close only when the loop turns:
    # a queue taken in one go would hold every one of them open at once.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    queued = 10 * ACCEPT_BURST
    clients = [socket.create_connection(listener.getsockname()) for _ in range(queued)]
    turns = 0
    taken_in_turn: dict[int, int] = {}
    accepted: list[socket.socket] = []

    async def main() -> None:
        nonlocal turns
        done = asyncio.Event()

        def on_connection(sock: socket.socket, address: Any) -> None:
            accepted.append(sock)
            taken_in_turn[turns] = taken_in_turn.get(turns, 0) + 1
            if len(accepted) == queued:
                done.set()

        task = asyncio.create_task(Acceptor(listener, on_connection, name="test").run())
        while not done.is_set():
            await asyncio.sleep(0)
            turns += 1
            assert turns < 100 * queued, "the queue was never taken"
        task.cancel()

    asyncio.run(main())
    assert len(accepted) == queued
    assert max(taken_in_turn.values()) == ACCEPT_BURST
    assert len(taken_in_turn) >= queued // ACCEPT_BURST
    for sock in [*accepted, *clients, listener]:
        sock.close()


def test_the_api_budget_leaves_room_for_dns_and_the_reserve() -> None:
    assert api_connection_budget(4096, 1 << 20, 256) == 4096
    assert api_connection_budget(4096, 1024, 256) == 1024 - RESERVED_DESCRIPTORS - 256
    assert api_connection_budget(4096, 1024, 0) == 1024 - RESERVED_DESCRIPTORS
    assert api_connection_budget(4096, 300, 256) == 1


def test_a_low_open_files_limit_lowers_the_api_cap_with_a_warning(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from certok.http_listeners import connection_limits
    from certok.settings import Settings

    settings = Settings(data_dir=tmp_path, api_max_connections=4096, api_header_timeout_seconds=3)
    limits = connection_limits(settings, 700, 256)
    assert limits.max_connections == 700 - RESERVED_DESCRIPTORS - 256
    assert limits.header_timeout == 3
    assert "raise LimitNOFILE" in caplog.text and "api_max_connections (4096)" in caplog.text
    caplog.clear()
    assert connection_limits(settings, 1 << 20, 256).max_connections == 4096
    assert not caplog.text
