"""The writer process: every write transaction of a multi-process node, run in one place.

With `processes` ≥ 2 on SQLite, the API + worker processes do not run their own write
transactions: the thread holding SQLite's one writer would compete for its process's GIL with
dozens of busy threads between SQLite calls, and every writer of every process would queue
behind that (0.25 ms of SQL became 3-5 ms per transaction under load). Instead they send each
write job to the writer process over a Unix socket; its one batching thread
(`certok.db.writes.WriteBatcher`) runs the jobs of all processes in shared transactions, in
a process that does nothing else.

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
import socket
import struct
import threading
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from certok.errors import Unavailable

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
CONNECT_TIMEOUT_SECONDS = 1.0


class WriterUnavailable(Unavailable):
    """The writer process went away while it had a job of ours; it may have committed."""


# --- the writer process ------------------------------------------------------------------------


def serve_writes(path: Path, engine: Engine, stop: threading.Event) -> None:
    """Accept connections on `path` until `stop` is set; each gets a thread of its own."""
    from certok.db.writes import batcher_for  # the batcher imports this module's client

    batcher = batcher_for(engine)
    if batcher is None:
        raise ValueError("the writer process serves a SQLite file database only")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(128)
    listener.settimeout(0.2)
    try:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            if not _same_user(connection):
                connection.close()
                continue
            connection.settimeout(None)
            threading.Thread(
                target=_serve_connection, args=(connection, batcher), daemon=True
            ).start()
    finally:
        listener.close()


def _same_user(connection: socket.socket) -> bool:
    """Whether the peer runs as our user (the directory's mode already ensures it; this is
    the second lock on a socket that accepts pickles)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(credentials)
    return uid == os.getuid()


def _serve_connection(connection: socket.socket, batcher: Any) -> None:
    with connection:
        while True:
            try:
                job = pickle.loads(_receive(connection))  # noqa: S301 - see the module docstring
            except (ConnectionError, OSError):
                return
            try:
                answer: tuple[bool, Any] = (True, batcher.run(job))
            except Exception as error:
                answer = (False, error)
            try:
                payload = pickle.dumps(answer)
            except Exception as error:  # an exception that does not pickle
                payload = pickle.dumps((False, RuntimeError(f"{type(error).__name__}: {error}")))
            try:
                _send(connection, payload)
            except (ConnectionError, OSError):
                return


# --- the other processes -----------------------------------------------------------------------


class RemoteWriter:
    """Sends jobs to the writer process; one connection per calling thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()

    def run(self, job: Any) -> tuple[bool, Any]:
        """(True, result) once the writer ran `job`; (False, None) if it was not reached."""
        payload = pickle.dumps(job)  # before anything is sent: a job that does not pickle
        connection = self._send(payload)
        if connection is None:
            return False, None
        try:
            ok, value = pickle.loads(_receive(connection))  # noqa: S301 - our writer process
        except (ConnectionError, OSError) as error:
            self._drop()
            raise WriterUnavailable(
                "the writer process went away during a write: try again in a moment"
            ) from error
        if not ok:
            raise value
        return True, value

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
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(CONNECT_TIMEOUT_SECONDS)
        try:
            connection.connect(str(self._path))
        except OSError:
            connection.close()
            return None
        connection.settimeout(None)
        self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()


_REMOTE: weakref.WeakKeyDictionary[Engine, RemoteWriter] = weakref.WeakKeyDictionary()


def use_writer_process(engine: Engine, path: Path) -> None:
    """Send this engine's write jobs to the writer process listening on `path`."""
    _REMOTE[engine] = RemoteWriter(path)


def remote_writer(engine: Engine) -> RemoteWriter | None:
    return _REMOTE.get(engine)


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
