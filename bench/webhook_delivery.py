"""Webhook deliveries per second, and certok's CPU per delivery, to a receiver on loopback.

    python bench/webhook_delivery.py [--messages 1000] [--endpoints 4] [--database URL]

Queues `--messages` events for a tenant with `--endpoints` endpoints (so messages x endpoints
deliveries) in the outbox, then runs one delivery worker (certok/events/delivery.py) until
every row is delivered: claims under leases, signs, POSTs through the SSRF-safe client, and
records each outcome. The receiver (a threaded http.server answering 204) runs in another
process, so its CPU is not counted. Reported: deliveries, wall seconds, deliveries per second
and this process's CPU per delivery (system time included). `--database` creates
certok's tables in the database given: give it one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import resource
import secrets
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certok.clock import utcnow
from certok.crypto import SecretBox
from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.sessions import make_session_factory
from certok.db.writes import write
from certok.events import endpoints
from certok.events.delivery import DeliveryWorker
from certok.events.outbox import emit
from certok.prechecks.addresses import AddressPolicy
from certok.prechecks.safe_http import FetchLimits, SafeFetcher
from certok.tenants import service as tenants


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(port_out: Any) -> None:
    # The backlog is set before listen(): with http.server's 5, a burst of connections gets
    # SYNs dropped and retried a second later, which measures the receiver, not certok.
    ThreadingHTTPServer.request_queue_size = 512
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port_out.put(server.server_address[1])
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--database", default=None)
    args = parser.parse_args()

    queue: Any = multiprocessing.Queue()
    receiver = multiprocessing.Process(target=_serve, args=(queue,), daemon=True)
    receiver.start()
    port = queue.get(timeout=10)

    workdir = Path(tempfile.mkdtemp(prefix="certok-bench-"))
    engine = make_engine(args.database or f"sqlite:///{workdir / 'bench.db'}")
    upgrade(engine)
    sessions = make_session_factory(engine)
    box = SecretBox(secrets.token_bytes(32))
    with transaction(sessions) as session:
        tenant_id = tenants.create_tenant(session, f"bench-{secrets.token_hex(3)}").id
    for index in range(args.endpoints):
        public_id = endpoints.new_public_id()
        _, encrypted = endpoints.encrypt_new_secret(box, public_id)
        write(
            sessions,
            functools.partial(
                endpoints.create_endpoint_job,
                tenant_id=tenant_id,
                public_id=public_id,
                url=f"http://127.0.0.1:{port}/hook{index}",
                description="",
                event_types="",
                secret_encrypted=encrypted,
                now=utcnow(),
            ),
        )
    for index in range(args.messages):
        write(
            sessions,
            functools.partial(
                emit,
                tenant_id=tenant_id,
                event_type="certificate.issued",
                data={"id": f"{index:016x}", "domains": ["www.example.com"]},
                now=utcnow(),
            ),
        )
    fetcher = SafeFetcher(
        lambda: None,  # type: ignore[arg-type, return-value]  # IP literals: no lookups
        AddressPolicy(allow_loopback=True),
        FetchLimits(max_redirects=0, allowed_ports=frozenset({port})),
        max_concurrent=64,
    )
    worker = DeliveryWorker(sessions, box, fetcher, worker_id="bench", max_in_flight=64)
    total = args.messages * args.endpoints

    async def drain() -> int:
        sent = 0
        while sent < total:
            done = await worker.run_once(limit=64)
            if done == 0:
                break
            sent += done
        return sent

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    sent = asyncio.run(drain())
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    receiver.terminate()
    print(
        json.dumps(
            {
                "deliveries": sent,
                "wall_seconds": round(wall, 2),
                "per_second": round(sent / wall),
                "cpu_us_per_delivery": round(cpu / sent * 1e6),
                "database": engine.dialect.name,
            }
        )
    )


if __name__ == "__main__":
    main()
