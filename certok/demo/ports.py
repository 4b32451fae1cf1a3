"""Free loopback ports for the rig's services, checked before anything binds them.

Ports are drawn at random below Linux's ephemeral range (32768+), so the kernel's own choice of
source port for an outgoing connection cannot take one between our check and the service's
bind; Pebble's default ports are never drawn because other processes on a shared machine use
them. A port counts as free only when both TCP and UDP can bind it on 127.0.0.1 (DNS servers
need both).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Mapping, Sequence

from certok.demo.errors import RigError

LOOPBACK = "127.0.0.1"
# Pebble's defaults (ACME, management, pebble-challtestsrv http/tls/dns): never ours to take.
PEBBLE_DEFAULT_PORTS = frozenset({14000, 15000, 5001, 5002, 8053})
# Every port a rig uses, by purpose (a test may fix any of them; the rest are drawn free).
RIG_PORT_NAMES = (
    "nsd",
    "unbound",
    "acme",
    "management",
    "eab_acme",
    "eab_management",
    "nginx",
    "tls_alpn",
    "certok_dns",
    "certok_https",
    "certok_api",
)
_RANGE = (20000, 32000)
_ATTEMPTS = 500


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing holds `port` on `host` over TCP or UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # A server's SO_REUSEADDR lets it bind over TIME_WAIT leftovers; probe the same way
                # so a recently closed connection does not count as "busy".
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def require_free(port: int, purpose: str, host: str = LOOPBACK) -> int:
    """Return `port`, or raise RigError naming what wanted it when something else holds it."""
    if port in PEBBLE_DEFAULT_PORTS:
        raise RigError(f"port {port} for {purpose} is one of Pebble's default ports: pick another")
    if not port_is_free(port, host):
        raise RigError(
            f"port {host}:{port} for {purpose} is busy (TCP or UDP): "
            f"find the holder with `ss -ltnup 'sport = :{port}'` or choose another port"
        )
    return port


class PortAllocator:
    """Hands out distinct free loopback ports, never the same one twice in one rig."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.SystemRandom()
        self._taken: set[int] = set()

    def allocate(self, purpose: str) -> int:
        for _ in range(_ATTEMPTS):
            port = self._rng.randrange(*_RANGE)
            if port in self._taken or port in PEBBLE_DEFAULT_PORTS:
                continue
            if port_is_free(port):
                self._taken.add(port)
                return port
        raise RigError(f"no free loopback port for {purpose} in {_RANGE} after {_ATTEMPTS} tries")

    def claim(self, port: int, purpose: str) -> int:
        """Take a port the caller chose; fail loudly if it is busy or already handed out."""
        if port in self._taken:
            raise RigError(f"port {port} for {purpose} is already used by this rig")
        require_free(port, purpose)
        self._taken.add(port)
        return port

    def take_all(self, purposes: Sequence[str], given: Mapping[str, int]) -> dict[str, int]:
        """A port for every purpose: the caller's where `given` names one, else a free one."""
        unknown = set(given) - set(purposes)
        if unknown:
            raise RigError(f"unknown port names {sorted(unknown)}; known: {tuple(purposes)}")
        return {
            purpose: self.claim(given[purpose], purpose)
            if purpose in given
            else self.allocate(purpose)
            for purpose in purposes
        }
