"""The DNS server: UDP and TCP on one port, answers from the zone cache's snapshot.

All protocol decisions live in ``answer.answer``; this module binds the sockets and frames TCP
on the event loop (RFC 7766: two-byte length, several queries per connection, idle timeout,
connection cap). UDP is answered by a thread of its own, with response rate limits per client
network so the server is a poor amplifier (udp.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable

from certok.dnszone.answer import ZoneConfig, answer
from certok.dnszone.querystats import QueryCounts, stat_key
from certok.dnszone.records import SnapshotHook, ZoneCache
from certok.dnszone.udp import (
    RATE_LIMIT_PER_SECOND,
    RATE_LIMIT_SLIP,
    ResponseRateLimiter,
    UdpResponder,
)
from certok.dnszone.zoneindex import prepare_index

log = logging.getLogger(__name__)

TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 256
_PORT_ATTEMPTS = 50
_UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


class DnsServer:
    """A running server; ``port`` is the bound port, the same for UDP and TCP."""

    def __init__(
        self,
        port: int,
        udp: UdpResponder,
        tcp: asyncio.Server,
        connections: set[asyncio.Task[None]],
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.port = port
        self.counts = udp.counts  # answers by type and rcode (querystats.py), UDP and TCP
        self._udp = udp
        self._tcp = tcp
        self._connections = connections
        self._on_close = on_close

    async def close(self) -> None:
        self._on_close()
        self._tcp.close()
        # Joins the UDP thread: off the loop, which keeps serving TCP meanwhile.
        await asyncio.to_thread(self._udp.close)
        # Python 3.11's wait_closed does not wait for (or end) open connections.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._tcp.wait_closed()


class _TcpHandler:
    def __init__(
        self,
        config: ZoneConfig,
        cache: ZoneCache,
        idle_timeout: float,
        max_connections: int,
    ) -> None:
        self._config = config
        self._cache = cache
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self.connections: set[asyncio.Task[None]] = set()
        self.counts = QueryCounts()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self.connections) >= self._max_connections:
            writer.close()
            return
        self.connections.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client left, went idle, or reset: all normal ends of a connection
        except Exception:
            log.exception("closing a DNS TCP connection after an unexpected error")
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # RFC 7766 §6.2.1: serve queries one after another until the client goes idle.
        while True:
            async with asyncio.timeout(self._idle_timeout):
                length = int.from_bytes(await reader.readexactly(2), "big")
                query = await reader.readexactly(length)
            reply = answer(query, self._config, self._cache.records, max_udp=None)
            if reply is None:
                continue
            self.counts.tcp[stat_key(reply)] += 1
            writer.write(len(reply).to_bytes(2, "big") + reply)
            async with asyncio.timeout(self._idle_timeout):
                await writer.drain()


async def start_dns_server(
    host: str,
    port: int,
    config: ZoneConfig,
    cache: ZoneCache,
    *,
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
    max_tcp_connections: int = MAX_TCP_CONNECTIONS,
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
    handler = _TcpHandler(config, cache, tcp_idle_timeout, max_tcp_connections)
    handler.counts = counts
    try:
        tcp = await asyncio.start_server(handler, sock=tcp_sock)
    except BaseException:
        cache.remove_snapshot_hook(prepare)
        udp_sock.close()
        tcp_sock.close()
        raise
    udp.start()
    return DnsServer(
        bound_port,
        udp,
        tcp,
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
