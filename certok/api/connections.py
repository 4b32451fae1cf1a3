"""The API's listeners under hostile load: a connection cap, a header timeout, bounded request
heads, and the envelope for requests the HTTP parser refuses.

uvicorn alone holds a connection that never finishes its request head for ever (slowloris),
accepts connections until the process runs out of file descriptors, and answers a request it
cannot parse with a plain-text 400. Here:

- `ConnectionGuard` (one per process, shared by the HTTP and HTTPS listeners) counts every
  accepted connection, TLS handshakes included, up to `api_max_connections`. A connection
  that waits for a request head (just opened, or idle between keep-alive requests) is kept
  in arrival order; when the cap is reached the oldest waiting one is closed for the new one,
  so idle and slow connections can never lock out a client. Only when every connection is in
  the middle of a request is a new one closed at once.
- A request head must be complete `api_header_timeout_seconds` after the connection opened
  (or the previous response ended); the guard's sweep closes those that are not, checked ten
  times a second by the listener's tick. TLS handshakes get the same time.
- `GuardedProtocol` (uvicorn's httptools protocol) counts head bytes; a head over
  `api_max_request_head_bytes` is answered 414 (the request line) or 431 (the headers), a
  head the parser refuses and an HTTP/0.9 request line (`GET /` and a newline, which the
  parser would wait on for ever) 400, all in the `{code, msg, data, traceId}` envelope, and
  the connection closed.
- `GuardedServer` (a uvicorn Server) accepts with `certok.acceptor.Acceptor`, which survives
  running out of descriptors.

The request path pays two dict operations per request (leaving and re-entering the waiting
table) and one integer addition per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from certok.acceptor import Acceptor
from certok.api.envelope import new_trace_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float
    max_head_bytes: int


class ConnectionGuard:
    """Open API connections of one process and those waiting for a request head."""

    def __init__(self, limits: ConnectionLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self.open: set[GuardedProtocol] = set()
        # Insertion order is waiting order: the first entry has waited longest.
        self._waiting: dict[GuardedProtocol, float] = {}
        self._full_logged = False

    def admit(self) -> bool:
        """Room for one more connection: closes the longest-waiting one if the cap is
        reached; False if every connection is busy with a request."""
        cap = self.limits.max_connections
        if len(self.open) < cap:
            if self._full_logged and len(self.open) < cap * 0.9:
                self._full_logged = False
            return True
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "the API holds %d connections (api_max_connections): closing the longest idle "
                "ones for new clients",
                cap,
            )
        return self.shed()

    def shed(self, waiting_since: float | None = None) -> bool:
        """Close the connection that has waited longest for a request head, if any (and if it
        has waited since `waiting_since` or before: out of descriptors, connections accepted
        since then get their chance first)."""
        for protocol, since in self._waiting.items():
            if waiting_since is not None and since > waiting_since:
                return False
            self._close(protocol)
            return True
        return False

    def opened(self, protocol: GuardedProtocol) -> None:
        """Accepted: counted, and waiting for its head from now (TLS: the handshake too)."""
        self.open.add(protocol)
        self._waiting[protocol] = self._clock()

    def waiting(self, protocol: GuardedProtocol) -> None:
        self._waiting.pop(protocol, None)  # to the end: the table is in waiting order
        self._waiting[protocol] = self._clock()

    def busy(self, protocol: GuardedProtocol) -> None:
        self._waiting.pop(protocol, None)

    def closed(self, protocol: GuardedProtocol) -> None:
        self.open.discard(protocol)
        self._waiting.pop(protocol, None)

    def sweep(self) -> int:
        """Close connections whose request head is overdue; how many."""
        overdue_since = self._clock() - self.limits.header_timeout
        late = []
        for protocol, since in self._waiting.items():
            if since > overdue_since:
                break
            late.append(protocol)
        for protocol in late:
            self._close(protocol)
        return len(late)

    def _close(self, protocol: GuardedProtocol) -> None:
        self.closed(protocol)
        protocol.evicted = True
        transport = protocol.transport
        if transport is not None:
            protocol.drop()
        elif protocol.handover is not None:
            # Still being handed over (accepted in this loop iteration, or in its TLS
            # handshake): cancelling the hand-over closes its socket now.
            protocol.handover.cancel()


def refusal(status: int, msg: str) -> bytes:
    """A whole HTTP/1.1 response: the envelope for a request refused before routing."""
    body = json.dumps(
        {"code": 1000 + status, "msg": msg, "data": None, "traceId": new_trace_id()},
        separators=(",", ":"),
    ).encode()
    phrase = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, reporting to a `ConnectionGuard` (see the module)."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self._max_head = guard.limits.max_head_bytes
        self._in_head = True
        self._head_bytes = 0
        self._refused = False
        self.evicted = False
        self.handover: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.evicted:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; read and drop the rest until the client closes
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here: the request is answered as plain HTTP
        except httptools.HttpParserError as error:
            if not self._refused:
                self._refuse_unparsed(error)
            return
        if self._in_head and not self._refused:
            self._head_incomplete(data)

    def _head_incomplete(self, data: bytes) -> None:
        """Part of a request head is in: too large already, or an HTTP/0.9 request line?"""
        if self._head_bytes > self._max_head:
            self._refuse_too_large()
        elif b"\n" in data and self.parser.get_http_version() == "0.0":
            self._refuse(
                400,
                "a request line without an HTTP version (HTTP/0.9) is not supported: send "
                "HTTP/1.1, such as "
                "`GET /v1/cert/dv?domains=example.com HTTP/1.1` and a Host header",
            )

    def _refuse_unparsed(self, error: Exception) -> None:
        if self._in_head and self._head_bytes > self._max_head:
            self._refuse_too_large()
            return
        reason = str(error).rstrip(".") or type(error).__name__
        self._refuse(
            400,
            f"not an HTTP request certok can read ({reason}): send HTTP/1.1 requests as "
            "described in /v1/openapi.json",
        )

    def _refuse_too_large(self) -> None:
        limit = self._max_head
        if len(self.url or b"") * 2 > limit:
            self._refuse(
                414,
                f"the request line is longer than {limit} bytes: shorten the URL "
                "(at most 100 names in domains)",
            )
        else:
            self._refuse(
                431,
                f"the request's headers are larger than {limit} bytes together: send fewer "
                "or shorter headers",
            )

    def _refuse(self, status: int, msg: str) -> None:
        self._refused = True
        self._in_head = False
        self._guard.busy(self)
        transport = self.transport
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app runs a request whose body turned out malformed: it may not answer now.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                transport.close()  # half an answer is out: nothing else can follow it
                return
        transport.write(refusal(status, msg))
        # Half-close and drop what the client still sends: closing a socket with unread data
        # would reset it, and the client could lose the answer. The header timeout or the
        # client's own close ends the connection.
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()  # TLS: a polite close, which waits for the client
        # Until then it may be closed for room, and it is at the header timeout.
        self._guard.waiting(self)

    def on_headers_complete(self) -> None:
        if self._refused:
            return  # a request pipelined behind a refused one
        # The read counter counts whole reads (a body may share one): only when it is over
        # the limit is the head itself measured.
        if self._head_bytes > self._max_head and self._head_size() > self._max_head:
            self._refuse_too_large()
            return
        self._in_head = False
        self._guard.busy(self)
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def shutdown(self) -> None:
        if self._refused:
            self.transport.abort()  # its answer is out; only the client's close was awaited
        else:
            super().shutdown()

    def drop(self) -> None:
        """Close an idle connection: plain TCP with a FIN; TLS at once, since a polite TLS
        close waits up to 30 s for the client's close_notify, descriptor held."""
        if self.scheme == "https":
            self.transport.abort()
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._in_head = True
            self._head_bytes = 0
            self._guard.waiting(self)


class _AcceptingServer:
    """What uvicorn keeps in `Server.servers` for a listening socket: close and wait."""

    def __init__(self, sock: socket.socket, acceptor: Acceptor, owned: bool) -> None:
        self.sockets = [sock]
        self._owned = owned
        self._task = asyncio.get_running_loop().create_task(acceptor.run(), name="api-accept")

    def close(self) -> None:
        self._task.cancel()
        if self._owned:
            self.sockets[0].close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class GuardedServer(uvicorn.Server):
    """A uvicorn server whose connections go through a `ConnectionGuard`."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.guard = guard
        self._handovers: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        config = self.config
        owned = sockets is None
        listening = [config.bind_socket()] if sockets is None else sockets
        self.servers = []
        for sock in listening:
            sock.listen(config.backlog)
            scheme = "https" if config.ssl else "http"
            port = sock.getsockname()[1]
            acceptor = Acceptor(
                sock, self._connection, name=f"API ({scheme} port {port})", shed=self.guard.shed
            )
            self.servers.append(_AcceptingServer(sock, acceptor, owned))  # type: ignore[arg-type]
        self.started = True

    def _connection(self, sock: socket.socket, address: Any) -> None:
        if not self.guard.admit():
            sock.close()
            return
        protocol = GuardedProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            guard=self.guard,
        )
        self.guard.opened(protocol)
        task = asyncio.get_running_loop().create_task(self._hand_over(sock, protocol))
        protocol.handover = task
        self._handovers.add(task)
        task.add_done_callback(functools.partial(self._handed_over, sock, protocol))

    async def _hand_over(self, sock: socket.socket, protocol: GuardedProtocol) -> None:
        tls: dict[str, Any] = {}
        if self.config.ssl is not None:
            tls = {
                "ssl": self.config.ssl,
                "ssl_handshake_timeout": self.guard.limits.header_timeout,
            }
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock, **tls)

    def _handed_over(
        self, sock: socket.socket, protocol: GuardedProtocol, task: asyncio.Task[None]
    ) -> None:
        # Here, not in `_hand_over`: a task cancelled before it ran never enters its body.
        self._handovers.discard(task)
        protocol.handover = None
        if not task.cancelled() and task.exception() is None:
            return
        # A failed or slow TLS handshake, a client gone already, or closed for room.
        self.guard.closed(protocol)
        sock.close()
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, OSError | TimeoutError):
            log.error("closing an API connection after an unexpected error", exc_info=error)

    async def on_tick(self, counter: int) -> bool:
        self.guard.sweep()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in list(self._handovers):
            task.cancel()
        await super().shutdown(sockets)
