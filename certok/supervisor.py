"""`certok serve` with `processes` ≥ 2: one DNS process and N - 1 API + worker processes
(and on SQLite one writer process, which runs their write transactions: see
`certok.db.write_channel`).

The supervisor migrates the database and opens the API's listening sockets once, then starts
the DNS process, waits until it answers, and starts the API + worker processes on those
sockets. A process that dies is restarted (a crash loop stops everything). Children are
forked: the supervisor runs no thread and holds no open database connection, so a child
starts in milliseconds instead of importing everything again (seconds on a busy machine),
and it inherits the listening sockets as they are. Children die with the supervisor
(PR_SET_PDEATHSIG): a supervisor killed with SIGKILL leaves no process behind holding ports
or driving orders.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from certok.db.engine import is_sqlite_file
from certok.db.write_channel import serve_writes
from certok.http_listeners import listen_sockets
from certok.logs import configure_logging, set_role
from certok.metrics import enable_multiprocess, process_exited
from certok.orders.leases import release_node_leases
from certok.persistence import open_store
from certok.runtime import run_event_loop, serve_app, serve_dns
from certok.settings import Settings
from certok.stopping import exit_abandoning_stuck_threads

log = logging.getLogger("certok")

DNS_START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
# A process that dies this soon after starting, this many times in a row, is a crash loop.
QUICK_EXIT_SECONDS = 10.0
MAX_QUICK_EXITS = 5
RESTART_DELAY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
PR_SET_PDEATHSIG = 1


@dataclass
class _Child:
    name: str
    target: Any
    args: tuple[Any, ...]
    process: BaseProcess | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = None


def supervise(settings: Settings) -> int:
    set_role("supervisor")
    store = open_store(settings)  # migrations and the key file, once, before any child
    released = release_node_leases(store.sessions, settings.effective_node_name)
    store.close()
    if released:
        log.info("resuming %d order(s) left by a previous run of this node", released)
    sockets = listen_sockets(settings)
    rundir = Path(tempfile.mkdtemp(prefix="certok-"))  # 0700: only we reach the socket
    if settings.metrics_port:
        # Before any fork: each child writes its counters under the private rundir and the
        # DNS process, which serves /metrics, adds them up.
        enable_multiprocess(rundir / "metrics")
    control = rundir / "dns.sock"
    # SQLite: one writer process runs every write transaction (certok.db.write_channel).
    writes = rundir / "writer.sock" if is_sqlite_file(store.engine) else None
    context = multiprocessing.get_context("fork")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    dns_ready = context.Event()
    dns = _Child("dns", _dns_main, (settings, control, dns_ready))
    writers = [_Child("writer", _writer_main, (settings, writes))] if writes else []
    apps = [
        _Child(f"api+worker {index}", _app_main, (settings, index, sockets, control, writes))
        for index in range(1, settings.processes)
    ]
    children = [dns, *writers, *apps]
    try:
        for writer in writers:
            _start(context, writer)  # until it listens, writes run in their own process
        _start(context, dns)
        if not _wait_for_dns(dns, dns_ready, stop):
            return 1
        for child in apps:
            _start(context, child)
        log.info(
            "serving: 1 DNS process, %d API + worker processes%s",
            len(apps),
            ", 1 writer process" if writers else "",
        )
        return _watch(context, children, stop)
    finally:
        _stop_all(children)
        for sock in sockets:
            sock.close()
        shutil.rmtree(rundir, ignore_errors=True)


def _start(context: Any, child: _Child) -> None:
    process = context.Process(target=child.target, args=child.args, name=child.name, daemon=True)
    process.start()
    child.process = process
    child.started_at = time.monotonic()
    child.restart_at = None
    log.info("started the %s process (pid %s)", child.name, process.pid)


def _wait_for_dns(dns: _Child, ready: Event, stop: threading.Event) -> bool:
    deadline = time.monotonic() + DNS_START_TIMEOUT_SECONDS
    assert dns.process is not None
    while not ready.wait(0.1):
        if stop.is_set():
            return False
        if not dns.process.is_alive():
            log.error("the DNS process exited during start (status %s)", dns.process.exitcode)
            return False
        if time.monotonic() > deadline:
            log.error("the DNS process did not start within %d s", DNS_START_TIMEOUT_SECONDS)
            return False
    return True


def _watch(context: Any, children: list[_Child], stop: threading.Event) -> int:
    """Restart children that die, until asked to stop (0) or a crash loop (1)."""
    while not stop.is_set():
        sentinels = [c.process.sentinel for c in children if c.process and c.process.is_alive()]
        multiprocessing.connection.wait(sentinels, timeout=0.2)
        now = time.monotonic()
        for child in children:
            process = child.process
            if stop.is_set() or process is None:
                break
            if child.restart_at is not None:
                if now >= child.restart_at:
                    _start(context, child)
                continue
            if process.is_alive():
                if now - child.started_at > QUICK_EXIT_SECONDS:
                    child.quick_exits = 0
                continue
            lived = now - child.started_at
            if process.pid is not None:
                process_exited(process.pid)
            child.quick_exits = child.quick_exits + 1 if lived < QUICK_EXIT_SECONDS else 0
            if child.quick_exits >= MAX_QUICK_EXITS:
                log.error(
                    "the %s process exited %d times within %d s of starting (status %s); "
                    "stopping: see the errors above",
                    child.name,
                    child.quick_exits,
                    QUICK_EXIT_SECONDS,
                    process.exitcode,
                )
                return 1
            delay = RESTART_DELAY_SECONDS[min(child.quick_exits, len(RESTART_DELAY_SECONDS) - 1)]
            log.error(
                "the %s process (pid %s) exited with status %s after %.1f s; restarting in %.1f s",
                child.name,
                process.pid,
                process.exitcode,
                lived,
                delay,
            )
            child.restart_at = now + delay
    log.info("stopping")
    return 0


def _stop_all(children: list[_Child]) -> None:
    running = [c.process for c in children if c.process is not None and c.process.is_alive()]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()  # SIGTERM: each stops like a single-process `certok serve`
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in running:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("the %s process did not stop in time; killing it", process.name)
            process.kill()
            process.join()


# --- in the children ---------------------------------------------------------------------------


def _child_setup(settings: Settings, role: str) -> None:
    _die_with_parent()
    configure_logging(settings, role)


def _die_with_parent() -> None:
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent or parent == 1:  # the supervisor died before prctl took effect
        os._exit(1)


def _dns_main(settings: Settings, control: Path, ready: Event) -> None:
    _child_setup(settings, "dns")
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(serve_dns(settings, control, ready.set))


def _app_main(
    settings: Settings,
    index: int,
    sockets: list[socket.socket],
    control: Path,
    writes: Path | None,
) -> None:
    _child_setup(settings, f"api+worker {index}")
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(serve_app(settings, index, sockets, control, writes))
    exit_abandoning_stuck_threads(0)


def _writer_main(settings: Settings, writes: Path) -> None:
    _child_setup(settings, "writer")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = open_store(settings, upgrade=False)
    try:
        serve_writes(writes, store.sessions, stop)
    finally:
        store.close()
