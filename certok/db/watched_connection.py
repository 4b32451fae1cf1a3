"""One PostgreSQL connection watched by an event loop, reading one statement at a time through
libpq's non-blocking calls (for `certok.db.loop_reads`, which keeps them).

It sends a read (its statement prepared first, once per statement, unless the connection
prepares none), takes the result only once libpq holds the whole answer (the loop never
waits inside libpq), makes the rows with psycopg's loaders as a cursor would, and hands them
to the read's `done` on the loop. A read that fails or is not answered within `timeout`
seconds fails its caller, and its connection is dropped by its keeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection

if TYPE_CHECKING:
    from psycopg.pq.abc import PGconn, PGresult

# done(rows, None) with the statement's rows, or done(None, error).
Done = Callable[[Sequence[Any] | None, BaseException | None], None]


class Keeper(Protocol):
    """What keeps a watched connection: takes it back when a read ends well, drops it (its
    connection closed) when one fails."""

    def give_back(self, watched: WatchedConnection) -> None: ...

    def drop(self, watched: WatchedConnection) -> None: ...


class WatchedConnection:
    """One kept connection, its socket watched by the loop; at most one read at a time."""

    def __init__(
        self,
        owner: Keeper,
        connection: Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float,
        make_row: Callable[[Sequence[Any]], Any],
    ) -> None:
        from psycopg.adapt import Transformer

        driver: Any = connection.connection.driver_connection
        self._owner = owner
        self._timeout = timeout
        self._make_row = make_row
        self._connection: Connection | None = connection
        self._pgconn: PGconn = driver.pgconn
        self._transformer = Transformer(driver)
        # The database URL's prepare_threshold=none (PgBouncer's transaction mode) reaches
        # psycopg's connection: statements are sent whole there.
        self._prepares = driver.prepare_threshold is not None
        self._socket = self._pgconn.socket
        # Values are sent in the connection's client encoding (as psycopg sends them, but
        # under SQL_ASCII, where psycopg sends UTF-8: there a non-ASCII value is declined).
        self._encoding: str = driver.info.encoding
        self._loop = weakref.ref(loop)
        self.last_used = loop.time()
        # The statements prepared on it: by this reader only, as it closes the connection
        # when done with it (a pooled connection's next user could deallocate them all).
        self._prepared: set[bytes] = set()
        # The read in progress: its statement's name while it is being prepared, its values
        # and who takes its rows.
        self._preparing: bytes | None = None
        self._values: list[bytes] = []
        self._done: Done | None = None
        self._late: asyncio.TimerHandle | None = None
        # The statement's result, kept until libpq has the rest of its answer.
        self._result: PGresult | None = None
        loop.add_reader(self._socket, self._readable)

    def usable(self) -> bool:
        from psycopg import pq

        return self._connection is not None and self._pgconn.status == pq.ConnStatus.OK

    def encoded(self, values: Sequence[str]) -> list[bytes]:
        return [value.encode(self._encoding) for value in values]

    def announce(self, sql: bytes, values: list[bytes]) -> None:
        """Tell the engine's `before_cursor_execute` listeners of the read about to be sent
        (no cursor, no context: the rows arrive later, on the loop)."""
        connection = self._connection
        if connection is not None and connection.engine.dispatch.before_cursor_execute:
            connection.engine.dispatch.before_cursor_execute(
                connection, None, sql.decode(), tuple(values), None, False
            )

    def send(self, sql: bytes, name: bytes, values: list[bytes], done: Done) -> None:
        """Send the read (`sql`: the statement for as many values, prepared as `name`);
        `done` is taken only once it is sent (a failure raises, and never calls it)."""
        self._values = values  # kept for the read itself, sent once its statement is prepared
        # One prepared statement per number of values, unless the connection prepares none.
        if not self._prepares:
            self._pgconn.send_query_params(sql, values)
        elif name in self._prepared:
            self._pgconn.send_query_prepared(name, values)
        else:
            self._preparing = name
            self._pgconn.send_prepare(name, sql)
        self._flush()
        loop = asyncio.get_running_loop()
        self.last_used = loop.time()
        self._done = done
        self._late = loop.call_later(self._timeout, self._timed_out)

    def _flush(self) -> None:
        # A statement this short goes in one write; anything left is sent once writable.
        if self._pgconn.flush():
            asyncio.get_running_loop().add_writer(self._socket, self._writable)

    def _writable(self) -> None:
        try:
            if not self._pgconn.flush():
                asyncio.get_running_loop().remove_writer(self._socket)
        except Exception as error:
            self._fail(error)

    def _readable(self) -> None:
        from psycopg import pq

        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            if self._done is None:  # nothing asked: a notice, or the server going away
                if pgconn.status != pq.ConnStatus.OK:
                    self._owner.drop(self)
                return
            # Results are taken only while libpq has them whole: `get_result` would wait
            # for the rest inside libpq, holding up the loop (and the interpreter's lock).
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    break  # the statement's answer is complete
                if self._result is None:
                    self._result = result
            else:
                return  # the rest comes with a later read of the socket
            result, self._result = self._result, None
            if result is None:
                raise _error("the database sent no result")
            name = self._preparing
            if name is not None and result.status == pq.ExecStatus.COMMAND_OK:
                # The statement is prepared: now the read itself.
                self._prepared.add(name)
                self._preparing = None
                pgconn.send_query_prepared(name, self._values)
                self._flush()
                return
            rows = self._rows(result)
        except Exception as error:
            self._fail(error)
            return
        done = self._finish()
        self._owner.give_back(self)
        if done is not None:
            done(rows, None)

    def _rows(self, result: PGresult) -> list[Any]:
        from psycopg import pq

        if result.status != pq.ExecStatus.TUPLES_OK:
            message = (result.error_message or b"").decode("utf-8", "replace").strip()
            raise _error(message or f"the read ended with {pq.ExecStatus(result.status).name}")
        self._transformer.set_pgresult(result)
        return self._transformer.load_rows(0, result.ntuples, self._make_row)

    def _timed_out(self) -> None:
        self._late = None
        self._fail(TimeoutError("the database did not answer the read in time"))

    def _fail(self, error: BaseException) -> None:
        done = self._finish()
        self._owner.drop(self)
        if done is not None:
            done(None, error)

    def _finish(self) -> Done | None:
        done, self._done, self._preparing, self._values = self._done, None, None, []
        self._result = None
        if self._late is not None:
            self._late.cancel()
            self._late = None
        return done

    def end(self) -> None:
        """Stop watching the socket and close the connection, its place back in the pool (a
        read in flight on it fails its caller)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._socket)
            loop.remove_writer(self._socket)
        done = self._finish()
        discard(connection)
        if done is not None:
            # A closed loop (RuntimeError) has nobody waiting any more; whatever the caller's
            # answer raises must not keep the other connections from closing.
            with contextlib.suppress(Exception):
                done(None, _error("the read was given up: its reader was closed"))


def discard(connection: Connection) -> None:
    """Close `connection`'s driver connection and hand its place back to the pool (never the
    connection: it may hold this module's prepared statements, or a read in flight)."""
    with contextlib.suppress(Exception):
        connection.invalidate()
    with contextlib.suppress(Exception):
        connection.close()


def _error(message: str) -> Exception:
    from psycopg import OperationalError

    return OperationalError(message)
