"""A TCP proxy in front of PostgreSQL that, once armed, holds each ReadyForQuery message for a
while: libpq then has a statement's result, but not the end of its answer, for that long.

It runs as a process of its own (`python -m tests.kit.held_ready PORT SECONDS`): a reader that
waited inside libpq would hold its own process up, and a proxy in that process with it. It
prints the port it listens on; a line on its standard input arms it, and it answers "armed".
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time


def _copy(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class _Proxy:
    def __init__(self, port: int, seconds: float) -> None:
        self._target = ("127.0.0.1", port)
        self._seconds = seconds
        self.armed = False
        self.listener = socket.create_server(("127.0.0.1", 0))

    def serve(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self._target)
            threading.Thread(target=_copy, args=(client, server), daemon=True).start()
            threading.Thread(target=self._hold, args=(server, client), daemon=True).start()

    def _hold(self, server: socket.socket, client: socket.socket) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                pending += data
                # A server's message: a type byte, then its length (itself included).
                while len(pending) >= 5 and len(pending) >= 1 + int.from_bytes(pending[1:5]):
                    size = 1 + int.from_bytes(pending[1:5])
                    message, pending = pending[:size], pending[size:]
                    if message[:1] == b"Z" and self.armed:
                        time.sleep(self._seconds)
                    client.sendall(message)
        with contextlib.suppress(OSError):
            client.close()


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    proxy = _Proxy(port, seconds)
    threading.Thread(target=proxy.serve, daemon=True).start()
    print(proxy.listener.getsockname()[1], flush=True)
    for _ in sys.stdin:
        proxy.armed = True
        print("armed", flush=True)


if __name__ == "__main__":
    main()
