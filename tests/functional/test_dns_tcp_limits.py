"""DNS over TCP under one greedy client (issue 14): per-client caps and the oldest idle
connection closed first, on the real server with real sockets from several loopback addresses
(127.0.0.0/8 is all local on Linux, so each address is a client of its own)."""

from __future__ import annotations

import socket

import dns.message

from certok.dnszone.zone_cache import ZoneCache
from tests.functional.test_dns_server import (
    HOST,
    ServerFactory,
    cache,
    closed_by_server,
    frame,
    start_server,
    tcp_frames,
)
from tests.kit.dns import CERTOK_ZONE

__all__ = ["cache", "start_server"]  # fixtures, imported for pytest

QUERY = dns.message.make_query(CERTOK_ZONE, "SOA").to_wire()


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=3, source_address=(source, 0))
    return sock


def query(sock: socket.socket) -> bool:
    try:
        sock.sendall(frame(QUERY))
        return len(tcp_frames(sock, 1)) == 1
    except OSError:
        return False


def test_one_host_holding_many_connections_cannot_lock_out_others(
    start_server: ServerFactory, cache: ZoneCache
) -> None:
    server = start_server(cache, max_tcp_connections=8, max_tcp_connections_per_client=4)
    greedy = []
    try:
        for _ in range(20):  # far more than the whole table
            sock = connect_from("127.0.0.2", server.port)
            greedy.append(sock)
            assert query(sock)  # each new one is served: its own oldest idle one made room
        still_open = [sock for sock in greedy if query(sock)]
        assert still_open == greedy[-4:]  # the host keeps its 4 most recent connections
        for source in ("127.0.0.3", "127.0.0.4"):  # others are served at once
            with connect_from(source, server.port) as other:
                assert query(other)
    finally:
        for sock in greedy:
            sock.close()


def test_a_full_table_closes_the_oldest_idle_connection(
    start_server: ServerFactory, cache: ZoneCache
) -> None:
    server = start_server(cache, max_tcp_connections=4, max_tcp_connections_per_client=4)
    held = [connect_from(f"127.0.0.{10 + n}", server.port) for n in range(4)]
    try:
        for sock in held:
            assert query(sock)
        assert query(held[0])  # held[1] is now the one idle longest
        with connect_from("127.0.0.20", server.port) as newcomer:
            assert query(newcomer)
        held[1].settimeout(3)
        assert closed_by_server(held[1])
        assert query(held[0]) and query(held[2]) and query(held[3])
    finally:
        for sock in held:
            sock.close()
