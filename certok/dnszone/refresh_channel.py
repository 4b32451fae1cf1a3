"""Asking the DNS server's process to reload the zone, and waiting until it has.

With `processes` ≥ 2 the DNS server runs in a process of its own. A worker in another process
writes a challenge's TXT row, then must know that the DNS server serves it before telling
the CA to validate; polling the database on a timer would add that timer to every order.
Instead the worker connects to the DNS process over a Unix socket (a private, 0700 directory
holds it), sends one byte and gets one byte back once a reload that began after the request
has finished. Requests arriving during a reload share the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from certok.dnszone.zone_cache import ZoneCache, ZoneNotRefreshed

log = logging.getLogger(__name__)

REQUEST = b"r"
DONE = b"k"
TIMED_OUT = b"t"


async def serve_refresh_requests(path: Path, cache: ZoneCache, timeout: float) -> asyncio.Server:
    """Answer reload requests on the Unix socket at `path` (replacing a stale one)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(1):
                served = await cache.refreshed(timeout)
                writer.write(DONE if served else TIMED_OUT)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the worker gave up or went away; it treats that as not confirmed
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = await asyncio.start_unix_server(handle, path=str(path))
    os.chmod(path, 0o600)
    return server


class RefreshClient:
    """Blocking client for worker threads: one short connection per request, so a restarted
    DNS process is simply found again."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout

    def __call__(self) -> None:
        """Return once the DNS process has reloaded the zone; raise ZoneNotRefreshed if not."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                sock.connect(str(self._path))
                sock.sendall(REQUEST)
                reply = sock.recv(1)
        except OSError as error:
            raise ZoneNotRefreshed(
                f"the DNS process did not confirm a zone reload: {error}"
            ) from error
        if reply != DONE:
            raise ZoneNotRefreshed("the DNS process did not reload the zone in time")
