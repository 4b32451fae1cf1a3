"""A guard that keeps a test's packets on loopback and records where it tried to send them.

While active, ``socket.socket.connect``/``connect_ex``/``sendto`` refuse any destination that
is not a loopback address (raising ENETUNREACH, as an unroutable network would) and
``socket.getaddrinfo`` refuses anything but an IP literal, so neither a bug in the code under
test nor the system resolver can send traffic off the machine. Every refused attempt is
recorded in ``blocked``; the tests assert it stays empty, which proves that refusals happen
before dialling rather than by luck of an unreachable address.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


class NetworkGuard:
    def __init__(self) -> None:
        self.blocked: list[str] = []
        self.connected: list[tuple[str, int]] = []  # every TCP/UDP connect that went through
        self._lock = threading.Lock()

    def _check(self, address: Any, what: str) -> None:
        if not isinstance(address, tuple):
            return  # AF_UNIX and friends stay on the machine
        host = str(address[0]).split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self._refuse(f"{what} to a name {host!r}")
        mapped = getattr(ip, "ipv4_mapped", None)
        if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
            self._refuse(f"{what} to {host} port {address[1]}")
        if what == "connect":
            with self._lock:
                self.connected.append((host, int(address[1])))

    def _refuse(self, attempt: str) -> None:
        with self._lock:
            self.blocked.append(attempt)
        raise OSError(errno.ENETUNREACH, f"test network guard blocked {attempt}")

    def connects_to(self, port: int) -> list[str]:
        with self._lock:
            return [host for host, p in self.connected if p == port]


@contextmanager
def loopback_only() -> Iterator[NetworkGuard]:
    guard = NetworkGuard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> None:
        guard._check(address, "connect")
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        guard._check(address, "connect")
        return real_connect_ex(sock, address)

    def sendto(sock: socket.socket, data: bytes, *args: Any) -> int:
        guard._check(args[-1], "sendto")
        return real_sendto(sock, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            text = host.decode() if isinstance(host, bytes) else str(host)
            try:
                ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                guard._refuse(f"a system resolver lookup of {text!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket.socket, "sendto", sendto)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield guard
