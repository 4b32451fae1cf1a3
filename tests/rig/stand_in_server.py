"""A stand-in for `certok serve`, used only to test the CertokServer harness itself.

It binds CERTOK_API_HOST:CERTOK_API_PORT like certok does, answers GET /healthz with 200 and
GET /env with the CERTOK_* variables it was given (so a test can see what reached the child),
and exits cleanly on SIGTERM. Run as a script: `python stand_in_server.py`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        elif self.path == "/env":
            self._reply(200, {k: v for k, v in os.environ.items() if k.startswith("CERTOK_")})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    address = (os.environ["CERTOK_API_HOST"], int(os.environ["CERTOK_API_PORT"]))
    server = ThreadingHTTPServer(address, _Handler)

    def _on_term(signum: int, frame: FrameType | None) -> None:
        print("stand-in: SIGTERM, stopping", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, _on_term)
    print(f"stand-in: listening on {address[0]}:{address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
