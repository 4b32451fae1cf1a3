"""`certok serve` with `processes = 3`: a DNS process and two API + worker processes under a
supervisor, on the real rig. Issuance works across them, a process that dies is restarted,
and nothing outlives the supervisor."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.flow import User, check_issued, delegate
from tests.rig import Rig
from tests.rig.certok_server import CertokServer


def spawned_children(parent: int) -> dict[int, str]:
    """pid → command line of the supervisor's (forked) children."""
    children: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # Fields after the command name in parentheses: state, then the parent pid.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            children[int(entry.name)] = command
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.1)


def named_child(server: CertokServer, name: str) -> int:
    """The pid of the supervisor's last "started the <name> process" (dns, writer)."""
    marker = f"started the {name} process (pid "
    log = server.log_text()
    assert marker in log, log[-2000:]
    return int(log.rsplit(marker, 1)[1].split(")", 1)[0])


def dns_child(server: CertokServer) -> int:
    return named_child(server, "dns")


def issue_one(rig: Rig, user: User, customer_records, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = user.dv(name)
    delegate(rig, customer_records, first)
    code = user.dv(name)["code"]
    assert code, "the delegation was not seen"
    data = user.apply_until_done(code)
    assert data["status"] == "issued", data
    check_issued(rig, data, [name], "ECC", tmp_path, eab=True)


def test_issues_and_restarts_dead_processes(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, tmp_path
) -> None:
    server: CertokServer = certok_server(processes=3)
    assert server.pid is not None
    children = spawned_children(server.pid)
    # DNS, the writer (SQLite) and two API + worker processes.
    assert len(children) == 4, children
    user = User(server, server.create_tenant("acme-corp"))
    issue_one(rig, user, customer_records, "www.customer.test", tmp_path)

    # The DNS process dies: the supervisor starts another; orders still get their TXT served.
    dns = dns_child(server)
    assert dns in children
    os.kill(dns, signal.SIGKILL)
    wait_for(lambda: dns_child(server) != dns, "a new DNS process started")
    wait_for(lambda: len(spawned_children(server.pid)) == 4, "four children again")
    assert dns not in spawned_children(server.pid)
    issue_one(rig, user, customer_records, "a.customer.test", tmp_path)

    # The writer process dies: a new one takes the API's and the worker's writes.
    writer = named_child(server, "writer")
    assert writer in spawned_children(server.pid)
    os.kill(writer, signal.SIGKILL)
    wait_for(lambda: named_child(server, "writer") != writer, "a new writer process started")
    wait_for(lambda: len(spawned_children(server.pid)) == 4, "four children again")
    issue_one(rig, user, customer_records, "c.customer.test", tmp_path)

    # Both API + worker processes die: new ones answer on the same port and issue.
    singles = {dns_child(server), named_child(server, "writer")}
    apps = [pid for pid in spawned_children(server.pid) if pid not in singles]
    assert len(apps) == 2
    for pid in apps:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not set(apps) & set(spawned_children(server.pid)), "old ones gone")
    wait_for(lambda: len(spawned_children(server.pid)) == 4, "four children again")
    wait_for(lambda: _healthy(server), "answering /healthz")
    issue_one(rig, user, customer_records, "b.customer.test", tmp_path)


def test_sigterm_stops_every_process(certok_server) -> None:  # type: ignore[no-untyped-def]
    server: CertokServer = certok_server(processes=3)
    assert server.pid is not None
    children = spawned_children(server.pid)
    assert len(children) == 4
    os.kill(server.pid, signal.SIGTERM)
    assert server.wait_exit(30) == 0
    assert not [pid for pid in children if alive(pid)]
    assert "Traceback" not in server.log_text()


def test_children_die_with_a_killed_supervisor(certok_server) -> None:  # type: ignore[no-untyped-def]
    server: CertokServer = certok_server(processes=3)
    assert server.pid is not None
    children = spawned_children(server.pid)
    assert len(children) == 4
    os.kill(server.pid, signal.SIGKILL)  # only the supervisor, not its process group
    server.wait_exit(10)
    wait_for(lambda: not [pid for pid in children if alive(pid)], "children gone", timeout=10)
    # Nothing holds the ports: a new run starts on them.
    server.start()
    assert _healthy(server)


def _healthy(server: CertokServer) -> bool:
    try:
        return httpx.get(f"{server.base_url}/healthz", timeout=1, trust_env=False).is_success
    except httpx.HTTPError:
        return False
