"""Issue 14, item 1, as the issue states it: a bounded flood of slow and idle connections from
loopback against a real `certok serve` (a subprocess, on uvloop where installed) whose
open-files limit the flood exceeds; then a normal `dv` and a DNS query over TCP still answer
(well before the header timeout would free a place), and the slow connections are closed after
the header timeout. The issue asks for an answer within a second; on a busy shared machine a
second is not a bound a test can hold, so the header timeout here is long enough to tell an
answer given at once from one given after the flood's connections time out.

Before the connection guard, such a flood took every descriptor of the process: new API
connections were reset and DNS over TCP (same process) failed with them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from tests.rig.certok_server import CertokServer
from tests.rig.ports import PortAllocator

OPEN_FILES = 700  # the server's limit, soft and hard: the flood below is larger
IDLE = 400
SLOW = 400
HEADER_TIMEOUT = 5.0
ANSWERED_WITHIN = HEADER_TIMEOUT / 2
ZONE = "acme.flood.test"


def _command() -> list[str]:
    return [
        sys.executable,
        "-c",
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({OPEN_FILES}, {OPEN_FILES}))\n"
        "sys.argv = ['certok', 'serve']\n"
        "runpy.run_module('certok', run_name='__main__', alter_sys=True)\n",
    ]


@pytest.fixture(params=[1, 2], ids=["one-process", "processes-2"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CertokServer]:
    ports = PortAllocator()
    api_port, dns_port = ports.allocate("certok API"), ports.allocate("certok DNS")
    env = {
        "CERTOK_DATA_DIR": str(tmp_path / "data"),
        "CERTOK_API_PORT": str(api_port),
        "CERTOK_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "CERTOK_DNS_PORT": str(dns_port),
        "CERTOK_DNS_ZONE": ZONE,
        # certok's own server refuses names outside its zone: dv's CNAME lookups end at once.
        "CERTOK_RESOLVERS": f'["127.0.0.1:{dns_port}"]',
        "CERTOK_RESOLVER_TIMEOUT_SECONDS": "0.5",
        "CERTOK_API_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "CERTOK_PROCESSES": str(request.param),
    }
    with CertokServer(env, workdir=tmp_path, command=_command()) as running:
        running.dns_port = dns_port  # type: ignore[attr-defined]
        yield running


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc)."""
    tree = [pid]
    for parent in tree:
        with contextlib.suppress(FileNotFoundError):
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            tree.extend(int(child) for child in children)
    return tree


@contextlib.contextmanager
def paused(server: CertokServer, pause: bool) -> Iterator[None]:
    """certok's processes stopped meanwhile (a machine too busy to run them): the kernel
    queues the flood, which certok then finds all at once."""
    stopped = _process_tree(server.pid or 0) if pause else []
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("pause", [False, True], ids=["running", "paused-during-flood"])
def test_a_flood_of_slow_and_idle_connections_leaves_dv_and_dns_answering(
    server: CertokServer, pause: bool
) -> None:
    token = server.create_tenant("flooded")
    dns_port: int = server.dns_port  # type: ignore[attr-defined]
    flood: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        with paused(server, pause):
            _flood(server, flood, slow)
        with httpx.Client(
            base_url=server.base_url, timeout=HEADER_TIMEOUT, trust_env=False
        ) as client:
            started = time.monotonic()
            answer = client.get(
                "/v1/cert/dv",
                params={"domains": "www.customer.test"},
                headers={"httpsok-token": token},
            )
            assert time.monotonic() - started < ANSWERED_WITHIN
        assert answer.status_code == 200
        assert answer.json()["code"] == 0 and answer.json()["data"]["valid"] is False
        started = time.monotonic()
        reply = dns.query.tcp(
            dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=dns_port, timeout=HEADER_TIMEOUT
        )
        assert time.monotonic() - started < ANSWERED_WITHIN
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        # Every slow connection is closed: after the header timeout, or before, for room.
        deadline = time.monotonic() + 10 * HEADER_TIMEOUT + 10
        for sock in slow:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b"", "a slow connection got an answer"
    finally:
        for sock in flood:
            sock.close()
    log = server.log_text()
    assert "Traceback" not in log
    # The cap keeps the API's connections a reserve below the open-files limit: the process
    # never runs out of descriptors (its database and writer connections need some).
    assert "cannot accept connections" not in log


def _flood(server: CertokServer, flood: list[socket.socket], slow: list[socket.socket]) -> None:
    for n in range(IDLE + SLOW):
        try:
            sock = socket.create_connection(("127.0.0.1", server.api_port), timeout=5)
        except OSError:
            continue  # the backlog is full for a moment: the flood goes on
        flood.append(sock)
        if n >= IDLE:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: certok.test\r\n")
                slow.append(sock)
            except OSError:
                pass  # already closed to make room
