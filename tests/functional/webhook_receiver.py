"""A real HTTP receiver on loopback for webhook tests: a threaded http.server that answers
each POST as told (a status, a reset, a stall, a redirect) and records what arrived."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """`behave(...)` queues answers for the next requests; after they run out, `default`.

    An answer is a status ("200", "500", "410"), a status with a header ("503 Retry-After: 120"),
    "302" (to /elsewhere on this receiver), "reset" (TCP RST, no answer) or "stall" (holds the
    request, unanswered, until `release()`)."""

    def __init__(self, default: str = "204") -> None:
        self.default = default
        self.requests: list[Received] = []
        self._answers: deque[str] = deque()
        self._lock = threading.Condition()
        self._released = threading.Event()
        self.stalled = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    answer = receiver._answers.popleft() if receiver._answers else receiver.default
                    receiver._lock.notify_all()
                receiver._answer(self, answer)

            def finish(self) -> None:
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def behave(self, *answers: str) -> None:
        with self._lock:
            self._answers.extend(answers)

    def release(self) -> None:
        self._released.set()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(self.requests)} of {count} requests arrived"
                self._lock.wait(remaining)
            return list(self.requests)

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, answer: str) -> None:
        if answer == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN.
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.connection.close()
            handler.close_connection = True
            return
        if answer == "stall":
            self.stalled.set()
            self._released.wait(60)
            handler.close_connection = True
            return
        status_text, _, header = answer.partition(" ")
        status = int(status_text)
        handler.send_response(status)
        if status in (301, 302, 307, 308):
            handler.send_header("Location", self.url("/elsewhere"))
        if header:
            name, _, value = header.partition(":")
            handler.send_header(name.strip(), value.strip())
        body = b"" if status == 204 else f"answer {status}".encode()
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
