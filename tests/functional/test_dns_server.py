"""The real DNS server on loopback, answering from a ZoneCache over a real database.

The server runs on its own asyncio loop in a background thread; the tests query it with
dnspython's blocking clients (and raw sockets where exact bytes or framing matter).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from sqlalchemy import delete
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import ChallengeRecord, Delegation, Tenant
from certok.db.sessions import make_session_factory
from certok.dnszone import server as dns_server_module
from certok.dnszone import udp, zoneindex
from certok.dnszone.answer import ZoneConfig
from certok.dnszone.server import DnsServer, start_dns_server
from certok.dnszone.zone_cache import ZoneCache
from certok.dnszone.zone_records import ZoneRecords
from tests.kit.dns import CERTOK_ZONE
from tests.kit.loop import LoopThread
from tests.kit.ports import free_port
from tests.kit.rows import Zone, now
from tests.kit.unbound import running_unbound
from tests.kit.waiting import wait_until

LABEL = "0123456789abcdef"
OTHER_LABEL = "fedcba9876543210"
CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    nameservers=(f"ns1.{CERTOK_ZONE}",),
    nameserver_addresses=("127.0.0.1",),
    ttl=5,
)
HOST = "127.0.0.1"
TIMEOUT = 2.0
T = TypeVar("T")


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def cache(sessions: sessionmaker[Session]) -> ZoneCache:
    return ZoneCache(sessions)


ServerFactory = Callable[..., DnsServer]


@pytest.fixture
def start_server(loop_thread: LoopThread) -> Iterator[ServerFactory]:
    servers: list[DnsServer] = []

    def start(cache: ZoneCache, **options: Any) -> DnsServer:
        server = loop_thread.run(start_dns_server(HOST, 0, CONFIG, cache, **options))
        servers.append(server)
        return server

    yield start
    for server in servers:
        loop_thread.run(server.close())


@pytest.fixture
def server(start_server: ServerFactory, cache: ZoneCache) -> DnsServer:
    return start_server(cache)


def txt_query(label: str, **options: Any) -> dns.message.Message:
    return dns.message.make_query(f"{label}.{CERTOK_ZONE}", "TXT", **options)


def txt_values(reply: dns.message.Message) -> list[str]:
    return sorted(b"".join(r.strings).decode() for rrset in reply.answer for r in rrset)


def udp_bytes(port: int, query: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(query, (HOST, port))
        return sock.recv(65535)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def tcp_frames(sock: socket.socket, count: int) -> list[bytes]:
    frames = []
    for _ in range(count):
        length = struct.unpack("!H", read_exactly(sock, 2))[0]
        frames.append(read_exactly(sock, length))
    return frames


def tcp_connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    # Closing with our query unread makes the kernel send a reset instead of a FIN.
    try:
        return sock.recv(2) == b""
    except ConnectionResetError:
        return True


def frame(query: bytes) -> bytes:
    return struct.pack("!H", len(query)) + query


# --- answers from the database ------------------------------------------------------------------


def test_values_from_the_database_are_served_over_udp_and_tcp(
    zone: Zone, cache: ZoneCache, server: DnsServer
) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "apex-digest")
    zone.present(LABEL, "wildcard-digest")  # apex + wildcard: two values at one label
    cache.refresh()

    query = txt_query(LABEL)
    over_udp = dns.query.udp(query, HOST, port=server.port, timeout=TIMEOUT)
    over_tcp = dns.query.tcp(query, HOST, port=server.port, timeout=TIMEOUT)
    assert txt_values(over_udp) == ["apex-digest", "wildcard-digest"]
    assert over_udp.flags & dns.flags.AA
    assert over_udp == over_tcp
    # Identical bytes on both transports.
    with tcp_connect(server.port) as sock:
        sock.sendall(frame(query.to_wire()))
        (tcp_reply,) = tcp_frames(sock, 1)
    assert udp_bytes(server.port, query.to_wire()) == tcp_reply


def test_removed_values_become_nodata_and_unknown_labels_nxdomain(
    zone: Zone, cache: ZoneCache, server: DnsServer
) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "digest")
    cache.refresh()
    reply = dns.query.udp(txt_query(LABEL), HOST, port=server.port, timeout=TIMEOUT)
    assert txt_values(reply) == ["digest"]

    zone.clean_up(LABEL)
    cache.refresh()
    reply = dns.query.udp(txt_query(LABEL), HOST, port=server.port, timeout=TIMEOUT)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.SOA

    reply = dns.query.udp(txt_query(OTHER_LABEL), HOST, port=server.port, timeout=TIMEOUT)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_case_of_the_question_is_preserved(zone: Zone, cache: ZoneCache, server: DnsServer) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "digest")
    cache.refresh()
    mixed = "0123456789aBcDeF.aCmE.SvC.tEsT."
    query = dns.message.make_query(mixed, "TXT")
    for reply in (
        dns.query.udp(query, HOST, port=server.port, timeout=TIMEOUT),
        dns.query.tcp(query, HOST, port=server.port, timeout=TIMEOUT),
    ):
        assert reply.question[0].name.to_text() == mixed
        assert reply.answer[0].name.to_text() == mixed
        assert txt_values(reply) == ["digest"]


def test_big_answer_is_truncated_over_udp_and_complete_over_tcp(
    zone: Zone, cache: ZoneCache, server: DnsServer
) -> None:
    zone.delegate(LABEL, "customer.test")
    values = [f"{i}-" + "v" * 180 for i in range(8)]
    for value in values:
        zone.present(LABEL, value)
    cache.refresh()
    query = txt_query(LABEL, use_edns=False)
    reply = dns.query.udp(query, HOST, port=server.port, timeout=TIMEOUT)
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    reply, used_tcp = dns.query.udp_with_fallback(query, HOST, port=server.port, timeout=TIMEOUT)
    assert used_tcp
    assert txt_values(reply) == sorted(values)


def test_refresh_keeps_the_snapshot_when_nothing_changed(zone: Zone, cache: ZoneCache) -> None:
    zone.delegate(LABEL, "customer.test")
    cache.refresh()
    first = cache.records
    cache.refresh()
    assert cache.records is first
    zone.present(LABEL, "digest")
    cache.refresh()
    assert cache.records is not first
    assert cache.records.serial > first.serial
    assert cache.records.txt == {LABEL: ("digest",)}
    assert cache.records.labels == frozenset({LABEL})


def test_refresh_reads_only_dns01_rows(zone: Zone, cache: ZoneCache) -> None:
    with transaction(zone.sessions) as session:
        session.add(
            ChallengeRecord(
                order_id=zone.order_id,
                kind="http-01",
                name="www.customer.test/token",
                value="key-authorization",
                authz_url="https://ca.test/authz/1",
                created_at=now(),
            )
        )
    zone.present(LABEL, "digest")
    cache.refresh()
    assert dict(cache.records.txt) == {LABEL: ("digest",)}


def test_a_cache_without_a_database_serves_what_it_is_given(
    start_server: ServerFactory,
) -> None:
    cache = ZoneCache(None)
    cache.refresh()  # nothing to read: keeps the empty snapshot
    cache.replace(ZoneRecords.build([LABEL], [(LABEL, "given")]))
    server = start_server(cache)
    reply = dns.query.udp(txt_query(LABEL), HOST, port=server.port, timeout=TIMEOUT)
    assert txt_values(reply) == ["given"]


# --- the refresher ------------------------------------------------------------------------------


def test_request_refresh_wakes_the_refresher_at_once(
    zone: Zone, cache: ZoneCache, server: DnsServer, loop_thread: LoopThread
) -> None:
    refresher = asyncio.run_coroutine_threadsafe(cache.run_refresher(3600), loop_thread.loop)
    try:
        assert wait_until(lambda: cache.records.labels == frozenset())
        zone.delegate(LABEL, "customer.test")
        zone.present(LABEL, "digest")
        started = time.monotonic()
        cache.request_refresh()  # from this (non-loop) thread, as the worker does
        assert wait_until(lambda: LABEL in cache.records.txt, 30)
        assert time.monotonic() - started < 30  # not the hour-long interval
        reply = dns.query.udp(txt_query(LABEL), HOST, port=server.port, timeout=TIMEOUT)
        assert txt_values(reply) == ["digest"]

        zone.clean_up(LABEL)
        assert cache.wait_for_refresh(5)
        assert LABEL not in cache.records.txt
    finally:
        refresher.cancel()


def test_the_refresher_refreshes_on_its_interval(
    zone: Zone, cache: ZoneCache, loop_thread: LoopThread
) -> None:
    refresher = asyncio.run_coroutine_threadsafe(cache.run_refresher(0.05), loop_thread.loop)
    try:
        zone.delegate(LABEL, "customer.test")
        assert wait_until(lambda: LABEL in cache.records.labels)
    finally:
        refresher.cancel()


def test_wait_for_refresh_times_out_without_a_refresher(cache: ZoneCache) -> None:
    assert cache.wait_for_refresh(0.05) is False


def test_the_refresher_survives_database_errors(
    tmp_path: Path, loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/late.db")  # no schema yet: every read fails
    factory = make_session_factory(engine)
    cache = ZoneCache(factory)
    caplog.set_level(logging.ERROR, logger="certok.dnszone.zone_cache")
    refresher = asyncio.run_coroutine_threadsafe(cache.run_refresher(0.05), loop_thread.loop)
    try:
        assert wait_until(lambda: "refresh failed" in caplog.text)
        assert not refresher.done()
        upgrade(engine)
        zone = Zone(factory, 0, 0)
        with transaction(factory) as session:
            session.add(Tenant(name="t", disabled=False, created_at=now()))
            session.flush()
            zone.tenant_id = session.query(Tenant).one().id
        zone.delegate(LABEL, "customer.test")
        assert wait_until(lambda: LABEL in cache.records.labels)
    finally:
        refresher.cancel()
        engine.dispose()


# --- TCP behaviour ------------------------------------------------------------------------------


def test_several_queries_on_one_tcp_connection(
    zone: Zone, cache: ZoneCache, server: DnsServer
) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "digest")
    cache.refresh()
    queries = [txt_query(LABEL), txt_query(OTHER_LABEL), dns.message.make_query(CERTOK_ZONE, "SOA")]
    with tcp_connect(server.port) as sock:
        # Pipelined: all queries before reading any reply (RFC 7766 §6.2.1.1).
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries))
        replies = [dns.message.from_wire(r) for r in tcp_frames(sock, 3)]
        # The connection stays open for more.
        sock.sendall(frame(queries[0].to_wire()))
        (again,) = tcp_frames(sock, 1)
    assert [r.id for r in replies] == [q.id for q in queries]
    assert txt_values(replies[0]) == ["digest"]
    assert replies[1].rcode() == dns.rcode.NXDOMAIN
    assert replies[2].answer[0].rdtype == dns.rdatatype.SOA
    assert dns.message.from_wire(again) == replies[0]


def test_idle_tcp_connections_are_closed(start_server: ServerFactory, cache: ZoneCache) -> None:
    server = start_server(cache, tcp_idle_timeout=0.2)
    with tcp_connect(server.port) as sock:
        sock.settimeout(30)
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 10  # after the idle timeout, not left open


def test_tcp_connections_are_capped(start_server: ServerFactory, cache: ZoneCache) -> None:
    server = start_server(cache, max_tcp_connections=2)
    query = dns.message.make_query(CERTOK_ZONE, "SOA").to_wire()
    first, second = tcp_connect(server.port), tcp_connect(server.port)
    try:
        for sock in (first, second):  # both are being served
            sock.sendall(frame(query))
            tcp_frames(sock, 1)
        second.sendall(frame(query))  # second is now the more recently active
        tcp_frames(second, 1)
        with tcp_connect(server.port) as third:
            third.settimeout(3)
            third.sendall(frame(query))
            assert len(tcp_frames(third, 1)) == 1  # served: the oldest idle one made room
            first.settimeout(3)
            assert closed_by_server(first)
            second.sendall(frame(query))
            assert len(tcp_frames(second, 1)) == 1
    finally:
        first.close()
        second.close()


def _served_over_tcp(port: int, query: bytes) -> bool:
    try:
        with tcp_connect(port) as sock:
            sock.sendall(frame(query))
            return len(tcp_frames(sock, 1)) == 1
    except (ConnectionError, OSError):
        return False


def test_close_ends_open_tcp_connections(loop_thread: LoopThread, cache: ZoneCache) -> None:
    server = loop_thread.run(start_dns_server(HOST, 0, CONFIG, cache))
    with tcp_connect(server.port) as sock:
        sock.sendall(frame(dns.message.make_query(CERTOK_ZONE, "SOA").to_wire()))
        tcp_frames(sock, 1)
        loop_thread.run(server.close())
        sock.settimeout(3)
        assert sock.recv(1) == b""
    with pytest.raises(OSError):
        tcp_connect(server.port).close()


def test_close_stops_the_udp_thread_and_frees_its_port(
    loop_thread: LoopThread, cache: ZoneCache
) -> None:
    server = loop_thread.run(start_dns_server(HOST, 0, CONFIG, cache))
    query = dns.message.make_query(CERTOK_ZONE, "SOA")
    assert dns.query.udp(query, HOST, port=server.port, timeout=TIMEOUT).answer
    started = time.monotonic()
    loop_thread.run(server.close())
    # The UDP thread's join gives up after 5 s: a close that woke nothing would take that long.
    assert time.monotonic() - started < 4, "close waits for a recvfrom that nothing wakes"
    assert not [t for t in threading.enumerate() if t.name == f"dns-udp-{server.port}"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, server.port))  # raises if the server still held it


def test_the_udp_thread_survives_an_unexpected_error(
    start_server: ServerFactory,
    cache: ZoneCache,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from certok.dnszone import udp

    server = start_server(cache)
    real_answer = udp.answer
    failures = iter([RuntimeError("injected")])

    def fail_once(*args: Any, **kwargs: Any) -> bytes | None:
        for failure in failures:
            raise failure
        return real_answer(*args, **kwargs)

    monkeypatch.setattr(udp, "answer", fail_once)
    query = dns.message.make_query(CERTOK_ZONE, "SOA")
    with caplog.at_level(logging.ERROR, logger="certok.dnszone.udp"):
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(query, HOST, port=server.port, timeout=0.5)
        assert dns.query.udp(query, HOST, port=server.port, timeout=TIMEOUT).answer
    assert "dropping a UDP query" in caplog.text


# --- the UDP packet cache (udp.py) ---------------------------------------------------------------


def with_id(query: bytes, query_id: int) -> bytes:
    return struct.pack("!H", query_id) + query[2:]


def count_answers(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The queries the UDP thread answers from here on without its packet cache."""
    from certok.dnszone import udp

    calls: list[bytes] = []
    real_answer = udp.answer

    def counted(query: bytes, *args: Any, **kwargs: Any) -> bytes | None:
        calls.append(query)
        return real_answer(query, *args, **kwargs)

    monkeypatch.setattr(udp, "answer", counted)
    return calls


def test_a_repeated_query_gets_the_same_reply_with_its_own_id(
    zone: Zone, cache: ZoneCache, server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "digest")
    cache.refresh()
    calls = count_answers(monkeypatch)
    query = txt_query(LABEL).to_wire()
    first = udp_bytes(server.port, with_id(query, 0x1111))
    second = udp_bytes(server.port, with_id(query, 0x2222))
    assert first[:2] == b"\x11\x11"
    assert second[:2] == b"\x22\x22"
    assert first[2:] == second[2:]
    assert txt_values(dns.message.from_wire(second)) == ["digest"]
    assert len(calls) == 1, "the repeated query was answered from the packet cache"
    # Another case of the same name is other bytes: answered afresh, with its own case.
    mixed = udp_bytes(server.port, with_id(query.replace(LABEL.encode(), b"0123456789ABCDEF"), 3))
    assert len(calls) == 2
    assert dns.message.from_wire(mixed).question[0].name.labels[0] == b"0123456789ABCDEF"


def test_the_packet_cache_never_outlives_a_snapshot(
    zone: Zone, cache: ZoneCache, server: DnsServer
) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "old-digest")
    cache.refresh()
    query = txt_query(LABEL).to_wire()
    nxdomain_query = txt_query(OTHER_LABEL).to_wire()
    assert txt_values(dns.message.from_wire(udp_bytes(server.port, query))) == ["old-digest"]
    assert dns.message.from_wire(udp_bytes(server.port, nxdomain_query)).rcode() == (
        dns.rcode.NXDOMAIN
    )

    zone.clean_up(LABEL)
    zone.present(LABEL, "new-digest")
    zone.delegate(OTHER_LABEL, "other.test")
    cache.refresh()
    assert txt_values(dns.message.from_wire(udp_bytes(server.port, query))) == ["new-digest"]
    assert dns.message.from_wire(udp_bytes(server.port, nxdomain_query)).rcode() == (
        dns.rcode.NOERROR
    )


def test_a_servfail_is_not_kept_in_the_packet_cache(
    zone: Zone, cache: ZoneCache, server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certok import dns_wire
    from certok.dnszone import udp, wire

    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "digest")
    cache.refresh()
    real_answer = udp.answer
    failures = iter([True])

    def servfail_once(query: bytes, *args: Any, **kwargs: Any) -> bytes | None:
        for _ in failures:
            return wire.header_only_reply(query, dns_wire.RCODE_SERVFAIL)
        return real_answer(query, *args, **kwargs)

    monkeypatch.setattr(udp, "answer", servfail_once)
    query = txt_query(LABEL).to_wire()
    assert dns.message.from_wire(udp_bytes(server.port, query)).rcode() == dns.rcode.SERVFAIL
    assert txt_values(dns.message.from_wire(udp_bytes(server.port, query))) == ["digest"]


def test_a_full_packet_cache_starts_over_and_keeps_answering(
    zone: Zone, cache: ZoneCache, server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certok.dnszone import udp

    monkeypatch.setattr(udp, "MAX_CACHED_PACKETS", 2)
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "digest")
    cache.refresh()
    calls = count_answers(monkeypatch)
    first, second, third = (
        with_id(txt_query(name).to_wire(), 7) for name in (LABEL, OTHER_LABEL, "x1")
    )
    for query in (first, second, first):
        assert udp_bytes(server.port, query)[:2] == b"\x00\x07"
    assert len(calls) == 2, "the first query, asked again, came from the packet cache"
    udp_bytes(server.port, third)  # the cache is full: it starts over with this one
    assert len(calls) == 3
    reply = udp_bytes(server.port, first)
    assert len(calls) == 4, "the first query's reply went with the cache it was in"
    assert txt_values(dns.message.from_wire(reply)) == ["digest"]


def test_a_fixed_port_is_bound_for_udp_and_tcp(loop_thread: LoopThread, cache: ZoneCache) -> None:
    port = free_port()
    server = loop_thread.run(start_dns_server(HOST, port, CONFIG, cache))
    try:
        assert server.port == port
        query = dns.message.make_query(CERTOK_ZONE, "SOA")
        assert dns.query.udp(query, HOST, port=port, timeout=TIMEOUT).answer
        assert dns.query.tcp(query, HOST, port=port, timeout=TIMEOUT).answer
    finally:
        loop_thread.run(server.close())


def test_a_host_name_is_refused_rather_than_resolved(
    loop_thread: LoopThread, cache: ZoneCache
) -> None:
    with pytest.raises(ValueError, match="IP address"):
        loop_thread.run(start_dns_server("localhost", 0, CONFIG, cache))


# --- UDP rate limiting --------------------------------------------------------------------------


def test_udp_responses_are_rate_limited_with_slip(
    start_server: ServerFactory, cache: ZoneCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limiter counts per second of its clock: a stopped one keeps every query in one
    # second however long a busy machine takes to send and answer them.
    stopped_clock = functools.partial(udp.ResponseRateLimiter, clock=lambda: 1000.0)
    monkeypatch.setattr(dns_server_module, "ResponseRateLimiter", stopped_clock)
    server = start_server(cache, rate_limit_per_second=20, rate_limit_slip=2)
    sent = 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(sent):
            query = dns.message.make_query(CERTOK_ZONE, "SOA", use_edns=False)
            query.id = i
            sock.sendto(query.to_wire(), (HOST, server.port))
        replies = []
        sock.settimeout(2.0)  # quiet this long: the server has answered all it will
        try:
            while True:
                replies.append(dns.message.from_wire(sock.recv(65535)))
        except TimeoutError:
            pass
    full = [r for r in replies if not r.flags & dns.flags.TC]
    truncated = [r for r in replies if r.flags & dns.flags.TC]
    # 20 full replies per second of the limiter's clock (one second here; at most two were
    # touched on a running clock).
    assert 20 <= len(full) <= 40
    assert truncated, "over the limit, every second reply slips out truncated"
    assert len(replies) < sent


# --- through a real recursive resolver ----------------------------------------------------------


@pytest.fixture
def unbound(tmp_path: Path, server: DnsServer) -> Iterator[int]:
    workdir = tmp_path / "unbound"
    workdir.mkdir()
    with running_unbound(workdir, {CERTOK_ZONE: server.port}) as port:
        yield port


def test_unbound_resolves_txt_through_the_server(
    zone: Zone, cache: ZoneCache, server: DnsServer, unbound: int
) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.delegate(OTHER_LABEL, "other.customer.test")
    zone.present(LABEL, "apex-digest")
    zone.present(LABEL, "wildcard-digest")
    cache.refresh()
    query = dns.message.make_query("0123456789ABCdef.Acme.Svc.Test.", "TXT")
    reply = dns.query.udp(query, HOST, port=unbound, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert txt_values(reply) == ["apex-digest", "wildcard-digest"]

    # An allocated label without values: NODATA through the resolver, not NXDOMAIN.
    reply = dns.query.udp(txt_query(OTHER_LABEL), HOST, port=unbound, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


# --- cheap refreshes and snapshot changes -------------------------------------------------------


class StatementLog:
    """The SQL statements an engine runs, to see what a refresh reads."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.statements: list[str] = []
        engine = sessions.kw["bind"]
        sqlalchemy_event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        self.statements.append(" ".join(statement.split()).lower())

    def label_reads(self) -> int:
        return sum("select delegations.label" in s for s in self.statements)

    def txt_reads(self) -> int:
        return sum("from challenge_records" in s for s in self.statements)


def delegation_ids(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {row.label: row.id for row in session.query(Delegation)}


def test_a_refresh_without_changes_reads_the_txt_rows_but_not_the_labels(
    zone: Zone, cache: ZoneCache
) -> None:
    for i in range(50):
        zone.delegate(f"{i:016x}", f"n{i}.customer.test")
    cache.refresh()
    log = StatementLog(zone.sessions)
    for _ in range(3):
        cache.refresh()
    assert log.label_reads() == 0
    assert log.txt_reads() == 3  # pending challenges are read every time: they are few
    # The labels' fingerprint comes with them: one statement per refresh.
    assert len(log.statements) == 3
    zone.delegate(LABEL, "customer.test")
    cache.refresh()
    assert log.label_reads() == 1
    assert LABEL in cache.records.labels


def test_deleting_the_newest_delegation_and_adding_another_is_seen(
    zone: Zone, cache: ZoneCache
) -> None:
    if zone.sessions.kw["bind"].dialect.name != "sqlite":
        pytest.skip("only SQLite hands a freed id out again (PostgreSQL's sequences never do)")
    zone.delegate(LABEL, "customer.test")
    zone.delegate(OTHER_LABEL, "other.customer.test")
    cache.refresh()
    newest = delegation_ids(zone.sessions)[OTHER_LABEL]
    with transaction(zone.sessions) as session:
        session.execute(delete(Delegation).where(Delegation.label == OTHER_LABEL))
    zone.delegate("00000000000000aa", "third.customer.test")
    # SQLite hands the freed highest id out again: same count, same highest id.
    assert delegation_ids(zone.sessions)["00000000000000aa"] == newest
    cache.refresh()
    assert cache.records.labels == frozenset({LABEL, "00000000000000aa"})


def test_labels_are_reread_in_full_after_the_safety_interval(zone: Zone) -> None:
    """A change the fingerprint cannot see (same count, id and created_at) still gets in."""
    clock = [1000.0]
    cache = ZoneCache(zone.sessions, labels_full_reload_seconds=30, monotonic=lambda: clock[0])
    created = now()
    with transaction(zone.sessions) as session:
        session.add(
            Delegation(
                tenant_id=zone.tenant_id, base_name="a.test", label=LABEL, created_at=created
            )
        )
    cache.refresh()
    with transaction(zone.sessions) as session:
        session.execute(delete(Delegation))
        session.add(
            Delegation(
                tenant_id=zone.tenant_id, base_name="b.test", label=OTHER_LABEL, created_at=created
            )
        )
    clock[0] += 31
    cache.refresh()
    assert cache.records.labels == frozenset({OTHER_LABEL})


def test_txt_rows_deleted_and_added_again_are_seen(zone: Zone, cache: ZoneCache) -> None:
    zone.delegate(LABEL, "customer.test")
    zone.present(LABEL, "first")
    cache.refresh()
    zone.clean_up(LABEL)
    zone.present(LABEL, "second")  # same count, and on SQLite the same id
    cache.refresh()
    assert dict(cache.records.txt) == {LABEL: ("second",)}


def test_every_snapshot_is_indexed_before_the_server_sees_it(
    zone: Zone, cache: ZoneCache, server: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After start, no snapshot is built in full: each is derived where it is swapped in."""

    def no_full_builds(*args: object) -> None:
        raise AssertionError("a snapshot was indexed from scratch")

    monkeypatch.setattr(zoneindex, "build_index", no_full_builds)
    zone.delegate(LABEL, "customer.test")
    for round_ in range(20):
        zone.clean_up(LABEL)
        zone.present(LABEL, f"value-{round_}")
        cache.refresh()
        assert isinstance(cache.records.derived.get(CONFIG), zoneindex.ZoneIndex)
        reply = dns.query.udp(txt_query(LABEL), HOST, port=server.port, timeout=TIMEOUT)
        assert txt_values(reply) == [f"value-{round_}"]  # the new value at once
        reply = dns.query.udp(txt_query(OTHER_LABEL), HOST, port=server.port, timeout=TIMEOUT)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.authority[0][0].serial == cache.records.serial


def test_closing_the_server_stops_indexing_new_snapshots(
    loop_thread: LoopThread, zone: Zone, cache: ZoneCache
) -> None:
    server = loop_thread.run(start_dns_server(HOST, 0, CONFIG, cache))
    loop_thread.run(server.close())
    zone.delegate(LABEL, "customer.test")
    cache.refresh()
    assert CONFIG not in cache.records.derived
