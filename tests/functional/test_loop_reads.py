"""apply's reads sent from the event loop through libpq (certok/db/loop_reads.py), on a real
PostgreSQL: the rows a cursor reads, a statement prepared once per number of values (or sent
whole with prepare_threshold=none), a read declined whenever it cannot be sent at once, a read
that fails or hangs failing its caller and dropping its connection, a connection the server
closes dropped while idle, and every connection back in the pool once closed or once its loop
is. On SQLite nothing is read from the loop."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Engine,
    bindparam,
    column,
    event,
    func,
    literal_column,
    make_url,
    select,
    table,
    text,
)

from certok.db import loop_reads
from certok.db.engine import make_engine, opened
from certok.db.loop_reads import LoopReads
from certok.db.sessions import make_session_factory
from certok.db.watched_connection import WatchedConnection
from certok.orders.code_reads import code_rows_on_loop, read_code_rows, start_code_rows
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.functional.test_api_fastpath import _issued_code
from tests.functional.test_postgres_pool import _with_threshold, cut

DEADLINE = 10.0  # seconds a loop is given to open a connection, on a loaded machine


@pytest.fixture
def pg(store: Store) -> Store:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("reads from the event loop are PostgreSQL's")
    return store


async def sent(start: Callable[[Callable[[Any, Any], None]], bool]) -> tuple[Any, Any]:
    """(rows, error) of a read started with `start(done)`, retried while it declines (no
    connection of this loop open yet)."""
    answered: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()
    deadline = time.monotonic() + DEADLINE
    while not start(lambda rows, error: answered.set_result((rows, error))):
        assert time.monotonic() < deadline, "no connection opened for the loop"
        await asyncio.sleep(0.01)
    return await answered


def read(reads: LoopReads, values: Sequence[str]) -> Any:
    rows, error = asyncio.run(sent(lambda done: reads.start(values, done)))
    assert error is None
    return rows


def _checked_out(engine: Engine) -> int:
    return int(engine.pool.checkedout())  # type: ignore[attr-defined]


_PREPARED = table("pg_prepared_statements", column("name"))
# The statements LoopReads prepared on the connection that runs it (for any of the values "x").
_OURS_PREPARED = select(_PREPARED.c.name).where(
    _PREPARED.c.name.like(literal_column("'certok_loop_%'")),
    literal_column("'x'").in_(bindparam("v", expanding=True)),
)


def _backend_after(seconds: float) -> Any:
    """The backend serving the read, after `seconds` (a read held in flight) and for any of
    the values "x"."""
    return select(
        func.pg_backend_pid().label("pid"),
        func.pg_sleep(literal_column(repr(float(seconds)))).label("slept"),
    ).where(literal_column("'x'").in_(bindparam("v", expanding=True)))


def test_the_loops_rows_are_a_cursors_rows_and_only_the_asking_tenants(pg: Store) -> None:
    with pg.sessions() as session, session.begin():
        alpha = tenants.create_tenant(session, "alpha").id
        beta = tenants.create_tenant(session, "beta").id
    alphas = [_issued_code(pg, alpha, f"alpha{i}") for i in range(3)]
    beta_code = _issued_code(pg, beta, "beta0")
    wanted = [(alpha, code) for code in alphas] + [(alpha, beta_code), (alpha, "no-such-code")]
    reads = code_rows_on_loop(opened(pg.sessions), most=1)
    assert reads is not None

    async def on_loop() -> tuple[Any, Any]:
        return await sent(lambda done: start_code_rows(reads, wanted, done))

    rows, error = asyncio.run(on_loop())
    assert error is None
    with opened(pg.sessions).read_connection() as connection:
        cursors = read_code_rows(connection, wanted)
    assert sorted(map(tuple, rows)) == sorted(map(tuple, cursors))
    assert sorted(row.code for row in rows) == sorted(alphas)  # beta's code is not alpha's
    assert [row._fields for row in rows[:1]] == [cursors[0]._fields]
    reads.close()


def test_a_statement_is_prepared_once_for_each_number_of_values(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's prepared statements")
    # A pool of one connection: a second reader gets the first one's place in it.
    engine = make_engine(database_url, threads=1)
    try:
        factory = make_session_factory(engine)
        reads = LoopReads(factory, _OURS_PREPARED, most=1)

        async def on_loop(reads: LoopReads) -> list[int]:
            held = []
            for values in (["x"], ["x", "x"], ["x"], ["x", "x"]):
                rows, error = await sent(lambda done, v=values: reads.start(v, done))
                assert error is None
                held.append(len(rows))
            return held

        # Each read is prepared before it runs, so it sees itself; never twice.
        assert asyncio.run(on_loop(reads)) == [1, 2, 2, 2]
        reads.close()
        assert _checked_out(engine) == 0
        # Its connection was closed, not pooled with the statements: another reader's new
        # connection prepares its own.
        other = LoopReads(factory, _OURS_PREPARED, most=1)
        assert asyncio.run(on_loop(other)) == [1, 2, 2, 2]
        other.close()
    finally:
        engine.dispose()


def test_with_prepare_threshold_none_nothing_is_prepared(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's prepared statements")
    engine = make_engine(_with_threshold(database_url, "none"))
    try:
        reads = LoopReads(make_session_factory(engine), _OURS_PREPARED, most=1)
        assert read(reads, ["x"]) == []
        assert read(reads, ["x", "x"]) == []
        reads.close()
    finally:
        engine.dispose()


def test_a_read_is_declined_when_it_cannot_be_sent_at_once(pg: Store) -> None:
    reads = LoopReads(opened(pg.sessions), _backend_after(0.3), most=1)

    async def on_loop() -> None:
        ignore: Callable[[Any, Any], None] = lambda rows, error: None  # noqa: E731
        assert not reads.start(["x"], ignore)  # none open yet: one is opened on a thread
        await _until(lambda: reads.kept() == 1)
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        assert reads.start(["x"], lambda rows, error: answered.set_result((rows, error)))
        assert not reads.start(["x"], ignore)  # the one connection is reading (pg_sleep)
        rows, error = await answered
        assert error is None and len(rows) == 1
        assert not reads.start(["x\x00y"], ignore)  # libpq cannot send a NUL
        assert not reads.start(["\ud800"], ignore)  # nor what the encoding cannot hold
        assert not reads.start([], ignore)
        assert reads.start(["x"], ignore)  # free again: the declined ones took nothing

    asyncio.run(on_loop())
    reads.close()


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


def test_a_read_a_listener_refuses_is_declined_and_its_connection_kept(pg: Store) -> None:
    reads = LoopReads(opened(pg.sessions), _backend_after(0), most=1)
    answers: list[Any] = []

    def refuse(*_args: Any) -> None:
        raise RuntimeError("a listener that fails")

    async def on_loop() -> None:
        await _until(lambda: reads.start(["x"], lambda *answer: answers.append(answer)))
        await _until(lambda: len(answers) == 1)
        event.listen(pg.engine, "before_cursor_execute", refuse)
        try:
            assert not reads.start(["x"], lambda *answer: answers.append(answer))
        finally:
            event.remove(pg.engine, "before_cursor_execute", refuse)
        # Nothing was sent: the connection is kept, and reads on.
        assert reads.kept() == 1
        assert reads.start(["x"], lambda *answer: answers.append(answer))
        await _until(lambda: len(answers) == 2)

    asyncio.run(on_loop())
    assert [error for _, error in answers] == [None, None]  # the refused one: never answered
    reads.close()


def test_a_read_whose_sending_fails_is_declined_never_answered_and_its_connection_goes(
    pg: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = LoopReads(opened(pg.sessions), _backend_after(0), most=1)
    answers: list[Any] = []

    def broken(self: WatchedConnection) -> None:
        raise OSError("the socket broke while sending")

    async def on_loop() -> None:
        await _until(lambda: reads.start(["x"], lambda *answer: answers.append(answer)))
        await _until(lambda: len(answers) == 1)
        with monkeypatch.context() as patched:
            patched.setattr(WatchedConnection, "_flush", broken)
            assert not reads.start(["x"], lambda *answer: answers.append(answer))
        assert reads.kept() == 0  # it may have sent half a read: closed
        await asyncio.sleep(0.2)  # and nothing is answered later either

    asyncio.run(on_loop())
    assert len(answers) == 1
    reads.close()


def test_a_connection_unused_for_long_is_closed_before_it_is_read_on(
    pg: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = LoopReads(opened(pg.sessions), _backend_after(0), most=1)

    async def on_loop() -> None:
        (first,) = (await sent(lambda done: reads.start(["x"], done)))[0]
        (again,) = (await sent(lambda done: reads.start(["x"], done)))[0]
        assert again.pid == first.pid  # kept while in use
        monkeypatch.setattr(loop_reads, "IDLE_SECONDS", 1.0)
        await asyncio.sleep(1.1)
        (later,) = (await sent(lambda done: reads.start(["x"], done)))[0]
        assert later.pid != first.pid

    asyncio.run(on_loop())
    reads.close()


def test_a_read_that_hangs_fails_its_caller_and_its_connection_goes(pg: Store) -> None:
    reads = LoopReads(opened(pg.sessions), _backend_after(30), most=1, timeout=0.2)
    quick = LoopReads(opened(pg.sessions), _backend_after(0), most=1)

    async def on_loop() -> None:
        ignore: Callable[[Any, Any], None] = lambda rows, error: None  # noqa: E731
        assert not reads.start(["x"], ignore)  # opens one
        await _until(lambda: reads.kept() == 1)
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        assert reads.start(["x"], lambda rows, error: answered.set_result((rows, error)))
        rows, error = await answered
        assert rows is None and isinstance(error, TimeoutError)
        assert time.monotonic() - started < 15  # not held until the statement ended (30 s)

    before = _checked_out(pg.engine)
    asyncio.run(on_loop())
    # The hanging connection was closed, not handed back to the pool for another.
    assert _checked_out(pg.engine) == before
    read(quick, ["x"])
    reads.close()
    quick.close()


def test_a_connection_the_server_closes_fails_its_read_or_goes_while_idle(pg: Store) -> None:
    reads = LoopReads(opened(pg.sessions), _backend_after(0), most=1)
    held = LoopReads(opened(pg.sessions), _backend_after(60), most=1)

    async def on_loop() -> None:
        loop = asyncio.get_running_loop()
        (first,) = (await sent(lambda done: reads.start(["x"], done)))[0]
        await loop.run_in_executor(None, cut, pg.engine, first.pid)  # while idle
        await _until(lambda: reads.kept() == 0)  # the loop's watch saw the socket close
        rows, error = await sent(lambda done: reads.start(["x"], done))
        assert error is None and rows[0].pid != first.pid

        reading = asyncio.create_task(sent(lambda done: held.start(["x"], done)))
        pids: list[int] = []
        deadline = time.monotonic() + DEADLINE
        while not pids:
            assert time.monotonic() < deadline, "the held read never reached the server"
            pids = await loop.run_in_executor(None, _backends_sleeping, pg.engine, "60.0")
        assert len(pids) == 1
        await loop.run_in_executor(None, cut, pg.engine, pids[0])  # mid-read
        rows, error = await reading
        assert rows is None and error is not None

    asyncio.run(on_loop())
    reads.close()
    held.close()


def _backends_sleeping(engine: Engine, seconds: str) -> list[int]:
    """The backends of this database running a read held `seconds` (as the SQL writes it)."""
    with engine.connect() as connection:
        found = connection.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND query LIKE :held AND pid <> pg_backend_pid()"
            ),
            {"held": f"%pg_sleep({seconds})%"},
        )
        return [int(pid) for (pid,) in found]


def test_connections_go_back_to_the_pool_once_closed_or_once_their_loop_is(
    pg: Store,
) -> None:
    reads = LoopReads(opened(pg.sessions), _backend_after(0), most=1)
    before = _checked_out(pg.engine)

    async def on_loop() -> int:
        rows, error = await sent(lambda done: reads.start(["x"], done))
        assert error is None and len(rows) == 1
        return _checked_out(pg.engine)

    kept = asyncio.new_event_loop()  # closed, but not collected while the test holds it
    try:
        assert kept.run_until_complete(on_loop()) == before + 1
    finally:
        kept.close()
    assert _checked_out(pg.engine) == before + 1
    # A new loop's first read hands the closed loop's connection back.
    assert asyncio.run(on_loop()) == before + 1
    gc.collect()  # asyncio.run's loop: closed and collected, its connection back as well
    assert _checked_out(pg.engine) == before
    assert asyncio.run(on_loop()) == before + 1
    reads.close()
    assert _checked_out(pg.engine) == before
    ignore: Callable[[Any, Any], None] = lambda rows, error: None  # noqa: E731

    async def after_close() -> bool:
        return reads.start(["x"], ignore)

    assert not asyncio.run(after_close())
    # Closing the store closes it too (certok.db.engine's keepers).
    again = LoopReads(opened(pg.sessions), _backend_after(0), most=1)
    stays = asyncio.new_event_loop()
    try:
        stays.run_until_complete(sent(lambda done: again.start(["x"], done)))
        assert _checked_out(pg.engine) == before + 1
        opened(pg.sessions).release_kept_connections()
        assert _checked_out(pg.engine) == before
    finally:
        stays.close()


def test_sqlite_reads_nothing_from_the_loop(store: Store) -> None:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite")
    assert code_rows_on_loop(opened(store.sessions), most=1) is None


def test_a_statement_without_one_expanding_parameter_is_refused(pg: Store) -> None:
    plain = select(literal_column("1").label("one")).where(column("a") == bindparam("a"))
    with pytest.raises(ValueError, match="one expanding parameter"):
        LoopReads(opened(pg.sessions), plain, most=1)


def test_the_loop_never_waits_for_the_end_of_an_answer(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's protocol")
    hold = 3.0
    url = make_url(database_url)
    with subprocess.Popen(
        [sys.executable, "-m", "tests.kit.held_ready", str(url.port or 5432), str(hold)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],  # where `tests` is a package
    ) as proxy:
        assert proxy.stdin is not None and proxy.stdout is not None
        try:
            proxied = url.set(port=int(proxy.stdout.readline())).update_query_dict(
                {"sslmode": "disable", "gssencmode": "disable"}
            )
            engine = make_engine(proxied.render_as_string(hide_password=False), threads=1)
            with engine.connect():
                pass  # opened and pooled before the proxy holds anything (dialect queries)
            proxy.stdin.write("arm\n")
            proxy.stdin.flush()
            assert proxy.stdout.readline().strip() == "armed"
            _read_through(engine, hold)
        finally:
            proxy.kill()


def _read_through(engine: Engine, hold: float) -> None:
    reads = LoopReads(make_session_factory(engine), _backend_after(0), most=1)
    stalls: list[float] = []

    async def beat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            stalls.append(now - last)
            last = now

    async def on_loop() -> tuple[Any, Any]:
        beating = asyncio.create_task(beat())
        try:
            # Prepared, then read: two answers, each ended `hold` seconds late.
            return await sent(lambda done: reads.start(["x"], done))
        finally:
            beating.cancel()

    try:
        rows, error = asyncio.run(on_loop())
    finally:
        reads.close()
        engine.dispose()
    assert error is None and len(rows) == 1
    assert max(stalls) < hold / 2  # the loop went on beating while libpq waited
