"""HTTP(S) to CAs with host names resolved through certok's configured resolvers.

requests/urllib3 resolve through the system resolver (getaddrinfo). certok must use only the
resolvers in its settings, so the connection classes below resolve the CA's host name with
dnspython and dial the address; the host name still goes into SNI, certificate verification
and the Host header, exactly as before.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.resolver
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

# host name → addresses to try, in order
Resolve = Callable[[str], list[str]]


def dns_resolver(addresses: list[tuple[str, int]], timeout: float) -> Resolve:
    """A Resolve over dnspython with exactly these nameservers (never /etc/resolv.conf)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in addresses]
    resolver.lifetime = timeout
    resolver.search = []

    def resolve(host: str) -> list[str]:
        found: list[str] = []
        for rdtype in ("AAAA", "A"):
            try:
                answer = resolver.resolve(host, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            found.extend(record.to_text() for record in answer)
        if not found:
            raise dns.resolver.NXDOMAIN(qnames=[dns.name.from_text(host)])
        return found

    return resolve


def _dial(conn: HTTPConnection, resolve: Resolve) -> socket.socket:
    host = conn._dns_host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            addresses = resolve(host)
        except dns.exception.DNSException as exc:
            raise NameResolutionError(host, conn, socket.gaierror(str(exc))) from exc
    last: OSError | None = None
    for address in addresses:
        try:
            return urllib3_connection.create_connection(
                (address, conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as exc:
            last = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last}")


def mount_resolver(session: requests.Session, resolve: Resolve) -> None:
    """Make `session` resolve host names with `resolve` for http and https."""

    class _HTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _dial(self, resolve)

    class _HTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _dial(self, resolve)

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTPConnection

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPSConnection

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    adapter = _Adapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
