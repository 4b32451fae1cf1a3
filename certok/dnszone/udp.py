"""UDP for the DNS server: a thread answering on a blocking socket, and response rate limits.

Why a thread and not the event loop: each datagram through uvloop costs an epoll wake-up (at
moderate rates), a protocol callback and address conversions both ways; a blocking
``recvfrom`` / ``sendto`` loop does one receive and one send per query and nothing else, so
the server spends less CPU per query on the same answer code (bench/dns_qps.py measures it).
The GIL is released while the thread waits in ``recvfrom``, so the event loop (TCP, snapshot
swaps) runs as before.

The thread keeps a packet cache (as PowerDNS's authoritative server does): whole replies keyed
by the query's bytes after its ID. A reply is a function of those bytes, the zone config and the
records snapshot alone, so a query seen before under the same snapshot gets the stored reply
with its own ID put in front: one dict lookup instead of parsing the question, finding the
index and splicing the question into a cached reply (the Python work of every query). The
cache is emptied whenever a new snapshot is published and when it reaches
``MAX_CACHED_PACKETS``. Resolvers that randomise the query name's case (0x20) get a new key per
query and simply miss it.

Thread safety: answers read ``ZoneCache.records``, one attribute swapped whole by the refresher,
and the reply cache, whose writes take its lock (replycache.py). The packet cache belongs to
the UDP thread alone.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import threading
import time
from collections.abc import Callable

from certok.dnszone.answer import ADVERTISED_UDP_PAYLOAD, ZoneConfig, answer
from certok.dnszone.querystats import QueryCounts, stat_key
from certok.dnszone.wire import truncate_reply
from certok.dnszone.zone_cache import ZoneCache

log = logging.getLogger(__name__)

RATE_LIMIT_PER_SECOND = 200
RATE_LIMIT_SLIP = 2
MAX_AMPLIFICATION = 4
# The largest UDP payload there is: a query is never cut short by the receive buffer (a bigger
# read costs nothing extra: the bytes object shrinks to the datagram in place).
_RECEIVE_SIZE = 65535
_STOP_JOIN_SECONDS = 5.0
# Replies kept in the packet cache before it starts over (a few hundred bytes each, so tens of
# MB when full): enough for a zone of tens of thousands of labels asked in one case.
MAX_CACHED_PACKETS = 50_000
_ID_SIZE = 2
_HEADER_SIZE = 12
_RCODE_SERVFAIL = 2


class RateDecision(enum.Enum):
    SEND = "send"
    TRUNCATE = "truncate"  # TC=1 tells a real resolver to come back over TCP
    DROP = "drop"


class ResponseRateLimiter:
    """UDP responses per second per client /24 (IPv4) or /64 (IPv6), like NSD's RRL.

    Over the limit, every ``slip``-th response still goes out truncated so a legitimate
    resolver behind a spoofed flood can retry over TCP; the others are dropped.
    """

    # Forget every network when the table gets this big (a spoofed-source flood).
    MAX_TRACKED_NETWORKS = 100_000

    def __init__(
        self, per_second: int, slip: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_second = per_second
        self._slip = slip
        self._clock = clock
        # network → [second, responses in that second, responses limited so far]
        self._windows: dict[bytes, list[int]] = {}

    def decide(self, address: str) -> RateDecision:
        network = _client_network(address)
        second = int(self._clock())
        window = self._windows.get(network)
        if window is None or window[0] != second:
            if len(self._windows) >= self.MAX_TRACKED_NETWORKS:
                self._windows.clear()
            self._windows[network] = [second, 1, 0]
            return RateDecision.SEND
        window[1] += 1
        if window[1] <= self._per_second:
            return RateDecision.SEND
        window[2] += 1
        if self._slip and window[2] % self._slip == 0:
            return RateDecision.TRUNCATE
        return RateDecision.DROP


def _client_network(address: str) -> bytes:
    # inet_pton rather than ipaddress: this runs once per UDP query.
    host = address.split("%", 1)[0]
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host)[:8]
    return socket.inet_pton(socket.AF_INET, host)[:3]


class UdpResponder:
    """Answers the queries arriving on ``sock`` from a daemon thread until ``close``."""

    def __init__(
        self,
        sock: socket.socket,
        config: ZoneConfig,
        cache: ZoneCache,
        limiter: ResponseRateLimiter | None,
        counts: QueryCounts | None = None,
    ) -> None:
        sock.setblocking(True)
        self.counts = counts or QueryCounts()
        self._sock = sock
        self._config = config
        self._cache = cache
        self._limiter = limiter
        self._closing = False
        self._thread = threading.Thread(
            target=self._serve, name=f"dns-udp-{sock.getsockname()[1]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the socket; returns once the thread has ended."""
        self._closing = True
        # Wakes the thread's recvfrom, which then returns (b"", None). An unconnected UDP
        # socket reports ENOTCONN but is shut down all the same.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(_STOP_JOIN_SECONDS)
        self._sock.close()

    def _serve(self) -> None:
        receive = self._sock.recvfrom
        send = self._sock.sendto
        config, cache, limiter = self._config, self._cache, self._limiter
        counts = self.counts.udp  # answers by stat_key: one increment per query
        # query after its ID -> (reply after its ID, the reply's stat_key)
        packets: dict[bytes, tuple[bytes, bytes]] = {}
        packets_of = cache.records  # the snapshot the packet cache holds replies of
        while True:
            try:
                query, address = receive(_RECEIVE_SIZE)
            except OSError as error:
                if self._closing:
                    return
                # ICMP errors for earlier replies (a client that went away) surface here.
                log.debug("UDP socket error: %s", error)
                continue
            if address is None or self._closing:
                return
            try:
                truncate = False
                if limiter is not None:  # off by default; see ResponseRateLimiter
                    decision = limiter.decide(address[0])
                    if decision is RateDecision.DROP:
                        continue
                    truncate = decision is RateDecision.TRUNCATE
                records = cache.records
                if records is not packets_of:
                    packets = {}
                    packets_of = records
                key = query[_ID_SIZE:]
                cached = packets.get(key)
                if cached is not None:
                    tail, stat = cached
                    reply = query[:_ID_SIZE] + tail
                else:
                    answered = answer(query, config, records, max_udp=_udp_limit(query))
                    if answered is None:
                        continue
                    reply = answered
                    stat = stat_key(reply)
                    if _cacheable(query, reply):
                        if len(packets) >= MAX_CACHED_PACKETS:
                            packets = {}
                        packets[key] = (reply[_ID_SIZE:], stat)
                counts[stat] += 1
                send(truncate_reply(reply) if truncate else reply, address)
            except OSError as error:
                log.debug("UDP reply to %s not sent: %s", address, error)
            except Exception:
                log.exception("dropping a UDP query from %s after an unexpected error", address)


def _udp_limit(query: bytes) -> int:
    """A UDP answer is never more than MAX_AMPLIFICATION times its query.

    A bigger one goes out truncated and the resolver asks again over TCP, whose handshake
    proves the source address (docs/dns-server.md, Amplification).
    """
    limit = MAX_AMPLIFICATION * len(query)
    return limit if limit < ADVERTISED_UDP_PAYLOAD else ADVERTISED_UDP_PAYLOAD


def _cacheable(query: bytes, reply: bytes) -> bool:
    """Whether the packet cache may keep ``reply``: a whole header that echoes the query's ID,
    and not SERVFAIL (a failure of this moment, not an answer of the snapshot)."""
    return (
        len(query) >= _HEADER_SIZE
        and len(reply) >= _HEADER_SIZE
        and reply[:_ID_SIZE] == query[:_ID_SIZE]
        and reply[3] & 0x0F != _RCODE_SERVFAIL
    )
