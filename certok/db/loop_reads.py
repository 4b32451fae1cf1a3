"""A hot read on PostgreSQL sent from the event loop itself, through libpq, without a thread.

apply's read of polled codes (`certok.api.apply_reads`) runs once for every few polls the
cache of issued answers misses: with a million stored codes, almost every poll. Run on a
thread, each batch costs wake-ups and hand-overs of the interpreter's lock between the thread
and the event loop, several context switches per batch on the core the two share, on top of
psycopg's own work around a cursor. Here the loop sends the statement on a connection kept
for it (libpq's non-blocking calls, `psycopg.pq`), the loop's selector watches the
connection's socket, and the rows are made by psycopg's loaders (`psycopg.adapt.Transformer`),
as a cursor makes them: the caller sees the values a cursor gives.

What holds for these connections:
- each is opened on a thread (a checkout may connect, or ping), and kept out of the pool for
  this read alone, watched by one event loop; up to `most` per loop; closed when done with
  (its place goes back to the pool), never handed to another user with this module's
  prepared statements or a read in flight on it;
- a connection the server closes (a restart) is seen by the watch and dropped at once, even
  while idle; one unused for `IDLE_SECONDS` is closed before it is read on (a firewall may
  have dropped it without a word); a read that fails, or gets no answer within `timeout`
  seconds (a connection that hangs), drops its connection, and its caller meets the error;
- the loop never waits inside libpq: a result is taken only once libpq holds the whole
  answer;
- the statement is prepared once per connection and per number of values, unless the
  database URL turned prepared statements off (`prepare_threshold=none`, PgBouncer's
  transaction mode): then every read sends it whole;
- listeners of the engine's `before_cursor_execute` event see each read (its cursor and
  context None, its values as sent, in bytes), and nothing else of SQLAlchemy's handling of
  a statement happens: no `after_cursor_execute`, no echo, no `handle_error`; a listener
  that raises makes `start` decline;
- `start` declines (returns False) whenever it cannot send at once: no connection free or
  open yet, a value libpq cannot send (a NUL, or a character outside the connection's
  encoding), a closed reader. The caller reads another way
  (`certok.api.batched_reads` on a thread), so nothing waits for a connection here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import Select

from certok.db.engine import SessionFactory
from certok.db.watched_connection import Done, WatchedConnection, discard

# A read the server has not answered within this long drops its connection: a connection
# that hangs (the network between) would otherwise hold its callers for TCP's timeout.
READ_TIMEOUT_SECONDS = 10.0
# A connection unused for longer than this is closed rather than read on: a firewall or NAT
# between may have dropped it silently (their idle timeouts are minutes).
IDLE_SECONDS = 60.0
# `close` from another thread waits this long for the loop to close its connections.
CLOSE_WAIT_SECONDS = 2.0
# After a connection could not be opened, the next try waits this long.
OPEN_RETRY_SECONDS = 1.0
# SQLAlchemy's numbered parameters ($1, $2, ...), as libpq's calls take them.
_DOLLAR_PARAMETERS = postgresql.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


def on_loop_reads_supported(factory: SessionFactory) -> bool:
    """Whether `factory`'s database can take `LoopReads`: PostgreSQL through psycopg."""
    url = factory.engine.url
    return url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg"


class LoopReads:
    """`statement` (a SELECT whose one parameter is an expanding IN list) run from the event
    loop: `start(values, done)` sends it for `values` and returns at once; `done` is called on
    the loop with the rows (tuples named by the statement's columns) or the error."""

    def __init__(
        self,
        factory: SessionFactory,
        statement: Select[Any],
        *,
        most: int,
        timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        if most < 1:
            raise ValueError("most must be at least 1")
        self._factory = factory
        self._statement = statement
        self._most = most
        self._timeout = timeout
        self._parameter = _expanding_key(statement)
        keys = [str(column.key) for column in statement.selected_columns]
        row_type: Any = namedtuple("LoopRow", keys, rename=True)  # type: ignore[misc]
        self._make_row = row_type._make
        # The statement for each number of values: its SQL, and its prepared statement's name.
        self._sql: dict[int, tuple[bytes, bytes]] = {}
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        factory.keep_track(self)

    def start(self, values: Sequence[str], done: Done) -> bool:
        """Send the read for `values` (on the running loop): True once sent, `done` to follow;
        False when it cannot be sent now, and `done` is never called."""
        if self._closed or not values or any("\x00" in value for value in values):
            return False
        loop = asyncio.get_running_loop()
        connections = self._loops.get(loop)
        if connections is None:
            for closed in [known for known in self._loops if known.is_closed()]:
                self._loops.pop(closed).close()
            connections = self._loops[loop] = _LoopConnections(self)
            # A loop collected without being closed first hands its connections back too (a
            # loop closed with a read in flight is held by it: swept as above, or by `close`).
            weakref.finalize(loop, connections.close).atexit = False
        watched = connections.free()
        if watched is None:
            return False
        sql, name = self._sql_for(len(values))
        try:
            # Nothing sent yet: the connection stays as it was whatever fails here.
            encoded = watched.encoded(values)  # not in its encoding: the thread path says so
            watched.announce(sql, encoded)  # a listener that fails here may not on a thread
        except Exception:
            connections.give_back(watched)
            return False
        try:
            watched.send(sql, name, encoded, done)
        except Exception:
            # Nothing was answered, nor will be: `done` is taken only once all was sent.
            connections.drop(watched)
            return False
        return True

    def kept(self) -> int:
        """How many connections the running loop keeps open now (free or reading)."""
        connections = self._loops.get(asyncio.get_running_loop())
        return 0 if connections is None else connections.kept()

    def close(self) -> None:
        """Hand every connection back and send nothing more (certok.db.engine's keepers)."""
        self._closed = True
        for connections in list(self._loops.values()):
            connections.close()

    def _sql_for(self, count: int) -> tuple[bytes, bytes]:
        known = self._sql.get(count)
        if known is None:
            compiled = self._statement.params({self._parameter: [None] * count}).compile(
                dialect=_DOLLAR_PARAMETERS, compile_kwargs={"render_postcompile": True}
            )
            sql = compiled.string.encode()
            known = self._sql[count] = (sql, b"certok_loop_%d" % count)
        return known


def _expanding_key(statement: Select[Any]) -> str:
    binds = statement.compile(dialect=_DOLLAR_PARAMETERS).binds.values()
    keys = [str(bind.key) for bind in binds]
    if len(keys) != 1 or not all(bind.expanding for bind in binds):
        raise ValueError("LoopReads takes a statement with one expanding parameter only")
    return keys[0]


class _LoopConnections:
    """One event loop's connections: the free ones, and how many there are or are opening."""

    def __init__(self, owner: LoopReads) -> None:
        self._owner = owner
        self._all: set[WatchedConnection] = set()
        self._free: list[WatchedConnection] = []
        self._opening = 0
        # Connections opened on a thread for this loop, not yet taken by it.
        self._arriving: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        # After a connection failed to open, none is tried again before this (loop time).
        self._retry_at = 0.0
        # The loop, weakly: this object is the value of the owner's entry keyed by the loop.
        self._loop = weakref.ref(asyncio.get_running_loop())

    def free(self) -> WatchedConnection | None:
        """A free connection, or None (one more is opened on a thread while fewer than
        `most` exist)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._free:
            watched = self._free.pop()
            # One unused for long may have been cut by a firewall without a word: a read on
            # it would wait for the timeout. It goes; another opens (pinged by the pool).
            if watched.usable() and now - watched.last_used <= IDLE_SECONDS:
                return watched
            self.drop(watched)
        if len(self._all) + self._opening < self._owner._most and now >= self._retry_at:
            try:
                loop.run_in_executor(None, self._open, loop)
            except RuntimeError:  # the loop's executor is shut down: the loop is ending
                return None
            self._opening += 1
        return None

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a thread: a connection for this loop, handed over to it."""
        try:
            connection = self._owner._factory.read_connection()
        except Exception:
            # The database is down, say: reads go to threads meanwhile, which meet its error.
            with contextlib.suppress(Exception):  # a closed loop wants none any more
                loop.call_soon_threadsafe(self._not_opened)
            return
        # Kept here until the loop takes it: a loop that closes first never will, and
        # `close` hands back what is still here.
        with self._lock:
            self._arriving.append(connection)
        try:
            loop.call_soon_threadsafe(self._adopt)
        except Exception:  # the loop is closed
            self._hand_back_arriving()

    def _not_opened(self) -> None:
        self._opening -= 1
        self._retry_at = asyncio.get_running_loop().time() + OPEN_RETRY_SECONDS

    def _adopt(self) -> None:
        with self._lock:
            arrived, self._arriving = self._arriving, []
        loop = asyncio.get_running_loop()
        for connection in arrived:
            self._opening -= 1
            if self._closed:
                discard(connection)
                continue
            try:
                watched = WatchedConnection(
                    self,
                    connection,
                    loop,
                    timeout=self._owner._timeout,
                    make_row=self._owner._make_row,
                )
            except Exception:
                discard(connection)
                continue
            self._all.add(watched)
            self._free.append(watched)

    def _hand_back_arriving(self) -> None:
        with self._lock:
            arrived, self._arriving = self._arriving, []
        for connection in arrived:
            discard(connection)

    def kept(self) -> int:
        return len(self._all)

    def give_back(self, watched: WatchedConnection) -> None:
        if self._closed:
            self.drop(watched)
        else:
            self._free.append(watched)

    def drop(self, watched: WatchedConnection) -> None:
        """Stop watching `watched` and close its connection for good (the pool opens another
        in its place)."""
        if watched in self._free:
            self._free.remove(watched)
        self._all.discard(watched)
        watched.end()

    def close(self) -> None:
        """Close every connection (a read in flight fails its caller, if the loop is there
        to answer it)."""
        loop = self._loop()
        if loop is not None and loop.is_running() and not _on_loop(loop):
            # This state is the loop's to change: closed there, on its next turn; here only
            # if the loop does not get to it (it is stopping, or stuck).
            closed_there = threading.Event()

            def close_there() -> None:
                try:
                    self.close()
                finally:
                    closed_there.set()

            with contextlib.suppress(RuntimeError):  # closed meanwhile: closed here
                loop.call_soon_threadsafe(close_there)
                if closed_there.wait(CLOSE_WAIT_SECONDS):
                    return
        self._closed = True
        self._hand_back_arriving()
        watched_all, self._all, self._free = self._all, set(), []
        for watched in watched_all:
            watched.end()  # never raises: each connection is closed whatever the others do


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
