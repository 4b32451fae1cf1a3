"""The DNS server: UDP and TCP on one port, answers from the zone cache's snapshot.

All protocol decisions live in ``answer.answer``; this module binds the sockets and frames TCP
on the event loop (RFC 7766: two-byte length, several queries per connection, idle timeout,
caps on connections in all and per client with the oldest idle closed first, an accept loop
that survives running out of descriptors). UDP is answered by a thread of its own, with
response rate limits per client network so the server is a poor amplifier (udp.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from certok.acceptor import Acceptor
from certok.clients import client_key
from certok.dnszone.answer import ZoneConfig, answer
from certok.dnszone.querystats import QueryCounts, stat_key
from certok.dnszone.udp import (
    RATE_LIMIT_PER_SECOND,
    RATE_LIMIT_SLIP,
    ResponseRateLimiter,
    UdpResponder,
)
from certok.dnszone.zone_cache import SnapshotHook, ZoneCache
from certok.dnszone.zoneindex import prepare_index

log = logging.getLogger(__name__)

TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 256
MAX_TCP_CONNECTIONS_PER_CLIENT = 16
_PORT_ATTEMPTS = 50
_UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


class DnsServer:
    """A running server; ``port`` is the bound port, the same for UDP and TCP."""

    def __init__(
        self,
        port: int,
        udp: UdpResponder,
        tcp: asyncio.Task[None],
        tcp_sock: socket.socket,
        connections: set[asyncio.Task[None]],
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.port = port
        self.counts = udp.counts  # answers by type and rcode (querystats.py), UDP and TCP
        self._udp = udp
        self._tcp = tcp
        self._tcp_sock = tcp_sock
        self._connections = connections
        self._on_close = on_close

    async def close(self) -> None:
        self._on_close()
        self._tcp.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tcp
        self._tcp_sock.close()
        # Joins the UDP thread: off the loop, which keeps serving TCP meanwhile.
        await asyncio.to_thread(self._udp.close)
        # Python 3.11's wait_closed does not wait for (or end) open connections.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


class _TcpConnection:
    def __init__(self, client: str) -> None:
        self.client = client
        self.writer: asyncio.StreamWriter | None = None
        # Opening, or between a query and its answer: never closed for another client.
        self.busy = True


class _TcpHandler:
    """DNS over TCP: connections in all and per client are capped; a new connection closes the
    oldest idle one (its client's own when that client is at its cap), so one host holding
    many connections cannot make other clients' queries fail (RFC 7766 §6.2.3 lets a server
    close idle connections)."""

    def __init__(
        self,
        config: ZoneConfig,
        cache: ZoneCache,
        idle_timeout: float,
        max_connections: int,
        max_per_client: int,
    ) -> None:
        self._config = config
        self._cache = cache
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._max_per_client = max_per_client
        self.connections: set[asyncio.Task[None]] = set()
        # Least recently active first.
        self._open: OrderedDict[_TcpConnection, None] = OrderedDict()
        self._per_client: Counter[str] = Counter()
        self.counts = QueryCounts()

    def accept(self, sock: socket.socket, address: Any) -> None:
        client = client_key(str(address[0]))
        if self._per_client[client] >= self._max_per_client and not self._close_idle(client):
            sock.close()
            return
        if len(self._open) >= self._max_connections and not self._close_idle(None):
            sock.close()
            return
        # Counted from here: accepts in one loop iteration must not overshoot the caps.
        connection = _TcpConnection(client)
        self._open[connection] = None
        self._per_client[client] += 1
        task = asyncio.get_running_loop().create_task(self._run(sock, connection))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    def shed(self, since: float) -> bool:
        """Out of descriptors: close the least recently active idle connection, if any (a
        connection accepted since then is active: it has yet to send its query)."""
        return self._close_idle(None)

    def _close_idle(self, client: str | None) -> bool:
        for connection in self._open:
            if not connection.busy and (client is None or connection.client == client):
                self._forget(connection)
                if connection.writer is not None:
                    connection.writer.transport.abort()
                return True
        return False

    def _forget(self, connection: _TcpConnection) -> None:
        if connection in self._open:
            del self._open[connection]
            self._per_client[connection.client] -= 1
            if not self._per_client[connection.client]:
                del self._per_client[connection.client]

    async def _run(self, sock: socket.socket, connection: _TcpConnection) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            self._forget(connection)
            sock.close()
            return
        connection.writer = writer
        connection.busy = False
        try:
            await self._serve(connection, reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client left, went idle, or reset: all normal ends of a connection
        except Exception:
            log.exception("closing a DNS TCP connection after an unexpected error")
        finally:
            self._forget(connection)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self,
        connection: _TcpConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        # RFC 7766 §6.2.1: serve queries one after another until the client goes idle.
        while connection in self._open:
            async with asyncio.timeout(self._idle_timeout):
                length = int.from_bytes(await reader.readexactly(2), "big")
                query = await reader.readexactly(length)
            connection.busy = True
            if connection in self._open:
                self._open.move_to_end(connection)
            reply = answer(query, self._config, self._cache.records, max_udp=None)
            if reply is not None:
                self.counts.tcp[stat_key(reply)] += 1
                writer.write(len(reply).to_bytes(2, "big") + reply)
                async with asyncio.timeout(self._idle_timeout):
                    await writer.drain()
            connection.busy = False


async def start_dns_server(
    host: str,
    port: int,
    config: ZoneConfig,
    cache: ZoneCache,
    *,
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
    max_tcp_connections: int = MAX_TCP_CONNECTIONS,
    max_tcp_connections_per_client: int = MAX_TCP_CONNECTIONS_PER_CLIENT,
    rate_limit_per_second: int | None = RATE_LIMIT_PER_SECOND,
    rate_limit_slip: int = RATE_LIMIT_SLIP,
) -> DnsServer:
    """Serve ``config``'s zone on ``host``:``port`` (UDP and TCP); port 0 picks a free port.

    ``host`` must be an IP address literal: binding never consults a resolver.
    ``rate_limit_per_second=None`` turns UDP response rate limiting off (benchmarks).
    """
    udp_sock, tcp_sock = _bind_udp_and_tcp(host, port)
    bound_port = int(udp_sock.getsockname()[1])
    # Every later snapshot gets its answer index built where it is swapped in (the refresher's
    # thread), derived from the previous one; the current one is built here, off the loop.
    prepare: SnapshotHook = functools.partial(prepare_index, config)
    cache.add_snapshot_hook(prepare)
    try:
        await asyncio.to_thread(prepare_index, config, None, cache.records)
    except BaseException:
        cache.remove_snapshot_hook(prepare)
        udp_sock.close()
        tcp_sock.close()
        raise
    limiter = (
        ResponseRateLimiter(rate_limit_per_second, rate_limit_slip)
        if rate_limit_per_second
        else None
    )
    counts = QueryCounts()
    udp = UdpResponder(udp_sock, config, cache, limiter, counts)
    handler = _TcpHandler(
        config, cache, tcp_idle_timeout, max_tcp_connections, max_tcp_connections_per_client
    )
    handler.counts = counts
    acceptor = Acceptor(tcp_sock, handler.accept, name="DNS over TCP", shed=handler.shed)
    tcp = asyncio.get_running_loop().create_task(acceptor.run(), name="dns-tcp-accept")
    udp.start()
    return DnsServer(
        bound_port,
        udp,
        tcp,
        tcp_sock,
        handler.connections,
        on_close=functools.partial(cache.remove_snapshot_hook, prepare),
    )


def _bind_udp_and_tcp(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"dns_host must be an IP address such as 127.0.0.1, not {host!r}"
        ) from None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    # With port 0 the kernel picks a free UDP port, which may be taken for TCP: try again.
    for _ in range(_PORT_ATTEMPTS if port == 0 else 1):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RECEIVE_BUFFER)
            udp.bind((host, port))
            chosen = udp.getsockname()[1]
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, chosen))
            tcp.listen(128)
        except OSError:
            udp.close()
            tcp.close()
            if port != 0:
                raise
            continue
        tcp.setblocking(False)  # the UDP socket is UdpResponder's, blocking in its thread
        return udp, tcp
    raise OSError(f"no port on {host} was free for both UDP and TCP")
