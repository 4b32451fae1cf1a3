"""The writer process: every write transaction of a multi-process node, run in one place.

With `processes` ≥ 2 on SQLite, the API + worker processes do not run their own write
transactions: the thread holding SQLite's one writer would compete for its process's GIL with
dozens of busy threads between SQLite calls, and every writer of every process would queue
behind that (a transaction held many times as long as its SQL takes). Instead they send each
write job to the writer process over a Unix socket; its one thread runs the jobs of all
processes in shared transactions (`certok.db.writes.run_jobs`), in a process that does
nothing else.

A job is `functools.partial` of a module-level function taking the connection first, with
plain arguments: it is pickled, sent, run, and its result or exception is pickled back. Pickle
is safe here because only this node's own processes can reach the socket: it lives in the
supervisor's private (0700) directory and is itself 0600.

If the writer process cannot be reached (it is being restarted), a job runs in the caller's
process with the writer lock, as in a single process: nothing was sent, so it cannot run
twice. A connection that breaks after a job was sent raises `WriterUnavailable`: the job may
or may not have committed, and the caller treats that like a crash at that point.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import socket
import struct
import threading
import weakref
from pathlib import Path
from typing import Any, TypeVar, cast

from certok.db import writes
from certok.db.engine import SessionFactory, Writer, is_sqlite_file
from certok.db.writes import MAX_BATCH, Job
from certok.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_LENGTH = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
CONNECT_TIMEOUT_SECONDS = 1.0
# How often the writer process looks at its stop event while idle.
STOP_CHECK_SECONDS = 0.2
# An answer not taken by its peer within this long drops that connection.
SEND_TIMEOUT_SECONDS = 10.0
READ_CHUNK = 1 << 16


class WriterUnavailable(Unavailable):
    """The writer process went away while it had a job of ours; it may have committed."""


# --- the writer process ------------------------------------------------------------------------


def serve_writes(path: Path, sessions: SessionFactory, stop: threading.Event) -> None:
    """Serve the API + worker processes' write jobs on `path` until `stop` is set.

    One thread does everything: it waits for connections with something to read, takes every
    job that has arrived, runs them in one transaction (`certok.db.writes.run_jobs`) and
    answers each. While a batch runs, the next one gathers in the sockets. (A thread per
    connection handing jobs to a batching thread cost more than the SQL: a GIL hand-off per
    wake-up, two per job.)
    """
    if not is_sqlite_file(sessions.engine):
        raise ValueError("the writer process serves a SQLite file database only")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(128)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    received: dict[socket.socket, bytearray] = {}
    try:
        while not stop.is_set():
            jobs: list[tuple[socket.socket, Any]] = []
            for key, _ in selector.select(timeout=STOP_CHECK_SECONDS):
                if key.fileobj is listener:
                    _accept(listener, selector, received)
                else:
                    connection = cast(socket.socket, key.fileobj)
                    frames = _read_frames(connection, received[connection])
                    if frames is None:
                        _close(connection, selector, received)
                    else:
                        jobs.extend((connection, frame) for frame in frames)
            for start in range(0, len(jobs), MAX_BATCH):
                batch = jobs[start : start + MAX_BATCH]
                outcomes = _run_frames(sessions, [frame for _, frame in batch])
                for (connection, _), outcome in zip(batch, outcomes, strict=True):
                    try:
                        _send(connection, _pickled(outcome))
                    except (ConnectionError, OSError):
                        _close(connection, selector, received)
    finally:
        for connection in list(received):
            _close(connection, selector, received)
        selector.close()
        listener.close()


def _accept(
    listener: socket.socket,
    selector: selectors.BaseSelector,
    received: dict[socket.socket, bytearray],
) -> None:
    try:
        connection, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return
    if not _same_user(connection):
        connection.close()
        return
    # Reads happen only once select says there is data; the timeout bounds an answer's send
    # to a peer that stopped reading.
    connection.settimeout(SEND_TIMEOUT_SECONDS)
    received[connection] = bytearray()
    selector.register(connection, selectors.EVENT_READ)


def _read_frames(connection: socket.socket, buffer: bytearray) -> list[bytes] | None:
    """The whole frames that arrived on `connection`; None once it is closed or broken."""
    try:
        chunk = connection.recv(READ_CHUNK)
    except (BlockingIOError, InterruptedError, TimeoutError):
        return []
    except OSError:
        return None
    if not chunk:
        return None
    buffer += chunk
    frames = []
    while len(buffer) >= _LENGTH.size:
        (length,) = _LENGTH.unpack_from(buffer)
        end = _LENGTH.size + length
        if len(buffer) < end:
            break
        frames.append(bytes(buffer[_LENGTH.size : end]))
        del buffer[:end]
    return frames


def _run_frames(sessions: SessionFactory, frames: list[bytes]) -> list[tuple[bool, Any]]:
    """Each frame's outcome: its job's, or the reason it could not be read."""
    outcomes: list[tuple[bool, Any] | None] = []
    jobs = []
    for frame in frames:
        try:
            jobs.append(pickle.loads(frame))  # noqa: S301 - see the module docstring
            outcomes.append(None)
        except Exception as error:
            outcomes.append((False, RuntimeError(f"unreadable write job: {error}")))
    try:
        ran = iter(writes.run_jobs(sessions.engine, sessions.writer_lock, jobs) if jobs else [])
    except Exception as error:  # no connection, no lock: each caller hears it; serving goes on
        log.warning("a batch of %d write jobs could not run: %s", len(jobs), error)
        ran = iter([(False, error)] * len(jobs))
    return [outcome if outcome is not None else next(ran) for outcome in outcomes]


def _pickled(outcome: tuple[bool, Any]) -> bytes:
    try:
        return pickle.dumps(outcome)
    except Exception as error:  # an exception that does not pickle
        return pickle.dumps((False, RuntimeError(f"{type(error).__name__}: {outcome[1]}")))


def _close(
    connection: socket.socket,
    selector: selectors.BaseSelector,
    received: dict[socket.socket, bytearray],
) -> None:
    received.pop(connection, None)
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(connection)
    connection.close()


def _same_user(connection: socket.socket) -> bool:
    """Whether the peer runs as our user (the directory's mode already ensures it; this is
    the second lock on a socket that accepts pickles)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(credentials)
    return bool(uid == os.getuid())


# --- the other processes -----------------------------------------------------------------------


class RemoteWriter:
    """Sends jobs to the writer process, one connection per calling thread; runs them with
    `local` (this process's writer) while the writer process cannot be reached."""

    def __init__(self, path: Path, local: Writer) -> None:
        self._path = path
        self._local_writer = local
        self._local = threading.local()

    def run(self, job: Job[T]) -> T:
        """`job`'s result, once the writer process ran it (or, not reached, this process)."""
        payload = pickle.dumps(job)  # before anything is sent: a job that does not pickle
        connection = self._send(payload)
        if connection is None:
            return self._local_writer.run(job)
        try:
            ok, value = pickle.loads(_receive(connection))  # noqa: S301 - our writer process
        except (ConnectionError, OSError) as error:
            self._drop()
            raise WriterUnavailable(
                "the writer process went away during a write: try again in a moment"
            ) from error
        if not ok:
            raise value
        return cast(T, value)

    def _send(self, payload: bytes) -> socket.socket | None:
        """Send on this thread's connection, the connection it went on; None if not sent.

        A failed send means the connection was to a writer process that has since been
        replaced and got none of the job (a writer acts on whole frames only): one more try
        on a fresh connection.
        """
        for _ in range(2):
            connection = self._connection()
            if connection is None:
                return None
            try:
                _send(connection, payload)
            except (ConnectionError, OSError):
                self._drop()
            else:
                return connection
        return None

    def _connection(self) -> socket.socket | None:
        connection: socket.socket | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as error:  # out of descriptors: this process, not the writer
            raise Unavailable(
                f"cannot open a connection to the writer process ({error.strerror or error}): "
                "try again in a moment"
            ) from error
        connection.settimeout(CONNECT_TIMEOUT_SECONDS)
        try:
            connection.connect(str(self._path))
        except OSError:
            connection.close()
            return None
        connection.settimeout(None)
        self._local.connection = connection
        # Closed when the thread ends and its locals are collected, rather than left to the
        # garbage collector (which warns about an unclosed socket).
        thread_end = _ThreadEnd()
        weakref.finalize(thread_end, connection.close)
        self._local.thread_end = thread_end
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()


class _ThreadEnd:
    """Kept in a thread's locals only: collected when the thread ends."""


# --- framing -----------------------------------------------------------------------------------


def _send(connection: socket.socket, payload: bytes) -> None:
    connection.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive(connection: socket.socket) -> bytes:
    (length,) = _LENGTH.unpack(_receive_exactly(connection, _LENGTH.size))
    return _receive_exactly(connection, length)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = connection.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)
