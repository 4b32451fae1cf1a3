"""The customer's DNS: NSD serving customer.test, unbound resolving it, and zone changes that
wait until both show them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dns.name

from certok.demo import dns_probe
from certok.demo.customer_zone import CUSTOMER_ZONE, ExpectedRecord
from certok.demo.errors import RigError
from certok.demo.process import ManagedProcess

_PROBE_TIMEOUT_SECONDS = 0.1
_NSD_RELOAD_AGAIN_SECONDS = 1.0
_NSD_POLL_SECONDS = 0.02
_RESOLVER_POLL_SECONDS = 0.05


def dns_server_process(name: str, binary: str, config: Path, logs: Path) -> ManagedProcess:
    """NSD or unbound in the foreground (`-d`), run from its own directory under the rig's."""
    return ManagedProcess(
        name,
        [binary, "-d", "-c", str(config)],
        log_path=logs / f"{name}.stderr.log",
        extra_logs=[logs / f"{name}.log"],
        cwd=config.parent,
    )


class ZoneFileWriter:
    """Writes customer.test's zone file so that NSD notices every change."""

    def __init__(self) -> None:
        self._mtime_ns = 0

    def write(self, path: Path, text: str) -> None:
        staging = path.with_suffix(".tmp")
        staging.write_text(text)
        # NSD reloads a zone file only when its mtime changed; two writes within one timestamp
        # tick would look unchanged, so move the mtime forward at least a second every time.
        self._mtime_ns = max(time.time_ns(), self._mtime_ns + 1_000_000_000)
        os.utime(staging, ns=(self._mtime_ns, self._mtime_ns))
        staging.replace(path)


def wait_for_nsd_serial(
    nsd: ManagedProcess,
    nsd_port: int,
    serial: int,
    reload: Callable[[], object],
    deadline: float,
) -> None:
    """Return once NSD serves `serial` of customer.test, asking it to reload now and then."""
    reload()
    last_reload = time.monotonic()
    while dns_probe.soa_serial(nsd_port, CUSTOMER_ZONE, recursion_desired=False) != serial:
        if time.monotonic() > deadline:
            raise RigError(
                f"NSD did not load serial {serial} of {CUSTOMER_ZONE}\n" + nsd.describe_logs()
            )
        if time.monotonic() - last_reload > _NSD_RELOAD_AGAIN_SECONDS:
            reload()
            last_reload = time.monotonic()
        time.sleep(_NSD_POLL_SECONDS)


def wait_for_resolver(
    unbound: ManagedProcess,
    unbound_port: int,
    serial: int,
    expected: Sequence[ExpectedRecord],
    flush: Callable[[], object],
    deadline: float,
) -> None:
    """Return once unbound answers `serial` of customer.test and every expected RRset."""
    while True:
        flush()
        serial_seen = dns_probe.soa_serial(unbound_port, CUSTOMER_ZONE)
        missing = [rec for rec in expected if not dns_probe.shows(unbound_port, rec)]
        if serial_seen == serial and not missing:
            return
        if time.monotonic() > deadline:
            raise RigError(
                f"unbound still answers old data for {CUSTOMER_ZONE} (serial {serial_seen}, "
                f"want {serial}; not yet shown: {missing})\n" + unbound.describe_logs()
            )
        time.sleep(_RESOLVER_POLL_SECONDS)


# A query sent before the server binds its UDP socket is simply lost: the start-up probes use
# a short timeout and ask again, rather than wait out the normal one.


def nsd_serves(nsd_port: int, serial: int) -> bool:
    """NSD answers customer.test's SOA with `serial`."""
    found = dns_probe.soa_serial(
        nsd_port, CUSTOMER_ZONE, recursion_desired=False, timeout=_PROBE_TIMEOUT_SECONDS
    )
    return found == serial


def resolver_answers(unbound_port: int) -> bool:
    """unbound resolves a customer.test name (so it reaches NSD)."""
    response = dns_probe.ask(
        unbound_port, f"www.{CUSTOMER_ZONE}", "A", timeout=_PROBE_TIMEOUT_SECONDS
    )
    owner = dns.name.from_text(f"www.{CUSTOMER_ZONE}")
    return any(rrset.name == owner for rrset in response.answer)
