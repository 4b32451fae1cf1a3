"""Accepting connections without dying of a full file table, and the file-descriptor budget.

asyncio's own accept loop logs every failed `accept()` and, on uvloop, a full file table
(EMFILE) closes the listening socket for good: the API and DNS-over-TCP listeners would stop
answering until certok restarts. `Acceptor` accepts in a loop of its own: out of descriptors,
it logs once, asks its owner to shed a connection (the oldest idle one), waits a moment (no
busy loop: the pending connection stays in the kernel's queue) and tries again; once the
queue is empty again it logs the recovery.

`raise_open_files_limit` lifts the soft RLIMIT_NOFILE to the hard limit at start, and
`api_connection_budget` says how many API connections one process may hold so that the DNS
server's TCP connections and certok's own files (database, outbound requests) always have
descriptors left.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

# accept() failures that mean "no resources right now": wait and retry, never stop serving.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() failures about one connection (it was reset before we took it): skip it.
_ONE_CONNECTION = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
RETRY_SECONDS = 0.1
SHED_GRACE_SECONDS = 1.0
# Connections taken from the queue before the loop gets a turn. A connection closed to make
# room (or refused) frees its descriptor only in a later turn of the loop, and one accepted
# is handed over only then: taking a long queue in one go would hold all of them open at once,
# past the reserve, and starve the process's own files (database, the writer channel).
ACCEPT_BURST = 32
# Descriptors a process keeps for itself besides client connections: database connections,
# outbound requests (pre-checks, the CA), resolver sockets, logs, the listening sockets.
RESERVED_DESCRIPTORS = 256


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit; the soft limit now."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return soft


def api_connection_budget(wanted: int, open_files: int, dns_connections: int) -> int:
    """API connections one process may hold: `wanted`, or fewer if the open-files limit
    could not also hold `dns_connections` DNS TCP connections (0 when the DNS server runs in
    another process) and the reserve. At least 1."""
    room = open_files - RESERVED_DESCRIPTORS - dns_connections
    return max(1, min(wanted, room))


class Acceptor:
    """Accept on a listening socket until cancelled; `on_connection(sock, address)` gets each
    accepted socket (non-blocking). `shed(since)` is called while descriptors are out: it
    closes a connection of the owner's choosing, if it has one to spare, idle since `since`
    (`time.monotonic()` when they ran out) or before: one accepted during the shortage is
    not closed before it could send anything."""

    def __init__(
        self,
        sock: socket.socket,
        on_connection: Callable[[socket.socket, Any], None],
        *,
        name: str,
        shed: Callable[[float], object] = lambda since: None,
        retry_seconds: float = RETRY_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sock = sock
        self._on_connection = on_connection
        self._name = name
        self._shed = shed
        self._retry_seconds = retry_seconds
        self._sleep = sleep
        self.exhausted = False
        self._exhausted_at = 0.0
        self._taken_in_a_row = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        while True:
            try:
                conn, address = await self._accept(loop)
            except OSError as error:
                if error.errno in OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(error)
                    # Idle since the shortage began, or for a grace period: a connection
                    # accepted during it gets its chance to send a request first.
                    self._shed(max(self._exhausted_at, time.monotonic() - SHED_GRACE_SECONDS))
                    await self._sleep(self._retry_seconds)
                    continue
                if error.errno in _ONE_CONNECTION:
                    continue
                raise
            conn.setblocking(False)
            try:
                self._on_connection(conn, address)
            except Exception:
                conn.close()
                log.exception("%s: dropping a connection after an unexpected error", self._name)

    async def _accept(self, loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, Any]:
        # What is queued is taken without a round through the loop, ACCEPT_BURST at a time;
        # the shortage is over once the queue is empty.
        if self._taken_in_a_row >= ACCEPT_BURST:
            self._taken_in_a_row = 0
            await asyncio.sleep(0)
        try:
            accepted = self._sock.accept()
        except BlockingIOError:
            self._taken_in_a_row = 0
        else:
            self._taken_in_a_row += 1
            return accepted
        if self.exhausted:
            self.exhausted = False
            log.warning("%s: accepting connections again", self._name)
        return await loop.sock_accept(self._sock)

    def _out_of_descriptors(self, error: OSError) -> None:
        if self.exhausted:
            return  # logged once per episode: a flood must not become a flood of log lines
        self.exhausted = True
        self._exhausted_at = time.monotonic()
        log.error(
            "%s: cannot accept connections: %s; closing idle connections and retrying every "
            "%.1f s (raise the open-files limit, e.g. LimitNOFILE in the systemd unit, or "
            "lower api_max_connections)",
            self._name,
            error.strerror or error,
            self._retry_seconds,
        )
