"""A real unbound recursive resolver on a free loopback port, stubbing zones to test servers.

`.test` is unbound's built-in empty zone, so it is switched off (`nodefault`) and each stub zone
made `transparent`; `do-not-query-localhost: no` lets it ask 127.0.0.1; `local-zone: "."
refuse` keeps it off the real root. Short cache and infra TTLs keep a test's earlier answers
(and a stub server seen down) from outliving the test's next step.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.kit.ports import free_port
from tests.kit.processes import stop_process

STARTUP_DEADLINE_SECONDS = 10.0


def unbound_binary() -> str | None:
    return shutil.which("unbound") or (
        "/usr/sbin/unbound" if Path("/usr/sbin/unbound").exists() else None
    )


def write_config(workdir: Path, port: int, stubs: dict[str, int]) -> Path:
    zone_lines = "".join(f'    local-zone: "{zone}." transparent\n' for zone in stubs)
    stub_blocks = "".join(
        f'stub-zone:\n    name: "{zone}."\n    stub-addr: 127.0.0.1@{stub_port}\n'
        for zone, stub_port in stubs.items()
    )
    config = workdir / "unbound.conf"
    config.write_text(
        "server:\n"
        "    interface: 127.0.0.1\n"
        f"    port: {port}\n"
        "    do-ip4: yes\n"
        "    do-ip6: no\n"
        "    do-udp: yes\n"
        "    do-tcp: yes\n"
        "    access-control: 127.0.0.0/8 allow\n"
        '    username: ""\n'
        '    chroot: ""\n'
        f'    directory: "{workdir}"\n'
        f'    pidfile: "{workdir}/unbound.pid"\n'
        "    use-syslog: no\n"
        f'    logfile: "{workdir}/unbound.log"\n'
        "    verbosity: 1\n"
        "    do-not-query-localhost: no\n"
        '    module-config: "iterator"\n'
        "    qname-minimisation: yes\n"
        '    local-zone: "test." nodefault\n'
        '    local-zone: "." refuse\n'
        f"{zone_lines}"
        "    cache-max-ttl: 5\n"
        "    cache-max-negative-ttl: 1\n"
        "    infra-host-ttl: 5\n"
        "    num-threads: 1\n"
        "remote-control:\n"
        "    control-enable: no\n"
        f"{stub_blocks}"
    )
    return config


def _answers(port: int, probe_name: str) -> bool:
    query = dns.message.make_query(probe_name, "SOA")
    try:
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
    except (OSError, dns.exception.Timeout):
        return False
    return response.rcode() == dns.rcode.NOERROR


@contextlib.contextmanager
def running_unbound(workdir: Path, stubs: dict[str, int]) -> Iterator[int]:
    """Start unbound stubbing each zone to 127.0.0.1@port; yield its port; stop it after.

    Ready means it answered a SOA query for the first stub zone through to the stub server.
    Without unbound installed the test is skipped.
    """
    binary = unbound_binary()
    if binary is None:
        pytest.skip("unbound is not installed (apt-get install unbound)")
    port = free_port("unbound")
    config = write_config(workdir, port, stubs)
    process = subprocess.Popen(
        [binary, "-d", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        probe = next(iter(stubs))
        while not _answers(port, probe):
            if process.poll() is not None or time.monotonic() > deadline:
                log = (
                    (workdir / "unbound.log").read_text()
                    if (workdir / "unbound.log").exists()
                    else ""
                )
                stderr = (
                    process.stderr.read().decode()
                    if process.poll() is not None and process.stderr
                    else ""
                )
                raise RuntimeError(
                    f"unbound on 127.0.0.1:{port} did not become ready "
                    f"(exit code {process.poll()}): {stderr}\n{log}"
                )
            time.sleep(0.05)
        yield port
    finally:
        stop_process(process)
        if process.stderr:
            process.stderr.close()
