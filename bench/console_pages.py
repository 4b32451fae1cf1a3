"""Console pages, server-side time per request, with 100k certificates and 10k orders.

One tenant holds every row (the worst case for the tenant-scoped queries: its lists cannot
skip other tenants' rows), on SQLite (the default store) or the PostgreSQL given with
--database-url. Rows are inserted directly. Each page is requested through the whole ASGI app
(session lookup, queries, template) in process, signed in as the tenant's user or an
operator; the time is from the request entering the app to the last body byte.

    python bench/console_pages.py                      # SQLite, 100k certificates, 10k orders
    python bench/console_pages.py --certificates 10000 --orders 1000 --samples 30
    python bench/console_pages.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx
from argon2 import PasswordHasher
from sqlalchemy import insert

from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import build_api_services, build_checks
from certok.crypto import SecretBox
from certok.db import migrate
from certok.db.engine import make_engine, transaction
from certok.db.models import Certificate, Delegation, Order
from certok.db.sessions import make_session_factory
from certok.persistence import Store
from certok.settings import Settings
from certok.tenants import service as tenants
from certok.tenants import users

TARGET_P95_MS = 50.0
PASSWORD = "bench password, long enough"
CHUNK = 5000
STATES = ("issued", "failure", "pending")
FAKE_CHAIN = (
    "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * 24 + "-----END CERTIFICATE-----\n"
)


def fill(store: Store, certificates: int, orders: int) -> dict[str, int]:
    now = dt.datetime.now(dt.UTC)
    with transaction(store.sessions) as session:
        big = tenants.create_tenant(session, "big").id
        tenants.create_tenant(session, "small")
        for _ in range(5):
            tenants.issue_token(session, "big")
        for index in range(50):
            session.add(
                Delegation(
                    tenant_id=big,
                    base_name=f"site{index}.example.com",
                    label=secrets.token_hex(8),
                    created_at=now,
                )
            )
        tenant_user, _ = users.create_user(session, "user@big.test", tenant_id=big, invite_hours=1)
        operator, _ = users.create_user(session, "ops@certok.test", tenant_id=None, invite_hours=1)
        for user_id in (tenant_user, operator):
            user = users.find_user(session, user_id, big if user_id == tenant_user else None)
            users.accept_invite(session, user, PASSWORD)
    order_rows = []
    for index in range(orders):
        state = STATES[index % 3]
        created = now - dt.timedelta(minutes=orders - index)
        order_rows.append(
            {
                "tenant_id": big,
                "issuer": ("letsencrypt", "google", "zerossl")[index % 3],
                "algorithm": "ECC",
                "challenge_type": "dns",
                "domains": f"n{index}.example.com,www.n{index}.example.com",
                "state": state,
                "reason": "urn:ietf:params:acme:error:caa: CAA forbids"
                if state == "failure"
                else None,
                "acme_orders": 1,
                "attempts": 1,
                "next_attempt_at": created,
                "deadline_at": created + dt.timedelta(days=1),
                "created_at": created,
                "finished_at": None if state == "pending" else created,
                "not_before": created if state == "issued" else None,
                "not_after": created + dt.timedelta(days=90) if state == "issued" else None,
            }
        )
    cert_rows = []
    for index in range(certificates):
        issued = now - dt.timedelta(days=index % 90, minutes=index)
        cert_rows.append(
            {
                "tenant_id": big,
                "domains": f"c{index}.example.com",
                "issuer": "letsencrypt",
                "serial": format(index + 1, "x"),
                "not_before": issued,
                "not_after": issued + dt.timedelta(days=90),
                "key_type": "ECC",
                "order_id": index + 1,
                "key_encrypted": b"\x01" * 150,
                "certificate_pem": FAKE_CHAIN,
                "renew_at": issued + dt.timedelta(days=60),
                "ari": False,
                "created_at": issued,
            }
        )
    with store.engine.begin() as connection:
        for table, rows in ((Order.__table__, order_rows), (Certificate.__table__, cert_rows)):
            for start in range(0, len(rows), CHUNK):
                connection.execute(insert(table), rows[start : start + CHUNK])
    return {"tenant": big}


def pages(tenant_id: int, certificates: int, orders: int) -> tuple[list[str], list[str]]:
    cert, order = certificates // 2, orders // 2
    tenant_pages = [
        "/console/",
        "/console/domains",
        "/console/certificates",
        "/console/certificates?show=all",
        f"/console/certificates?after={cert + 100}",
        f"/console/certificates/{cert}",
        "/console/orders",
        "/console/orders?state=failure",
        f"/console/orders?before={order}",
        f"/console/orders/{order}",
        "/console/tokens",
        "/console/webhooks",
        "/console/hosts",
        "/console/audit",
        "/console/users",
        "/console/account",
    ]
    operator_pages = [
        "/console/operator/tenants",
        f"/console/operator/tenants/{tenant_id}",
        "/console/operator/orders",
        "/console/operator/orders?state=issued",
        f"/console/operator/orders/{order}",
        "/console/operator/certificates",
        f"/console/operator/certificates/{cert}",
        "/console/operator/issuers",
        "/console/operator/audit",
        "/console/hosts",
    ]
    return tenant_pages, operator_pages


async def sign_in(client: httpx.AsyncClient, email: str) -> None:
    page = await client.get("/console/sign-in")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    answer = await client.post(
        "/console/sign-in", data={"csrf": csrf, "email": email, "password": PASSWORD}
    )
    assert answer.status_code == 303, answer.text


async def measure(
    app: Any, email: str, paths: list[str], samples: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per page: wall-clock and CPU milliseconds (all of this process's threads) per request.
    On a shared machine the wall-clock includes waiting for a core; the CPU time does not."""
    transport = httpx.ASGITransport(app=app)
    results: dict[str, tuple[list[float], list[float]]] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        await sign_in(client, email)
        for path in paths:
            timings, cpu = [], []
            for index in range(samples + 3):
                started, started_cpu = time.perf_counter(), time.process_time()
                response = await client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                spent = (time.process_time() - started_cpu) * 1000
                assert response.status_code == 200, (path, response.status_code)
                if index >= 3:  # the first requests warm caches and compile templates
                    timings.append(elapsed)
                    cpu.append(spent)
            results[path] = (timings, cpu)
    return results


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--certificates", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--database-url", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # The sign-in's Argon2id is not what this measures.
    users.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        engine = make_engine(url)
        migrate.upgrade(engine)
        store = Store(engine, make_session_factory(engine), SecretBox(secrets.token_bytes(32)))
        started = time.perf_counter()
        ids = fill(store, args.certificates, args.orders)
        fill_seconds = time.perf_counter() - started
        settings = Settings(data_dir=Path(tmp), resolvers=["127.0.0.1:9"])
        app = create_app(
            build_api_services(
                settings,
                store,
                build_checks(settings, store, label_key=b"k" * 32),
                waiters=OrderWaiters(),
                wake_worker=lambda: None,
            )
        )
        tenant_pages, operator_pages = pages(ids["tenant"], args.certificates, args.orders)
        results = asyncio.run(measure(app, "user@big.test", tenant_pages, args.samples))
        results.update(asyncio.run(measure(app, "ops@certok.test", operator_pages, args.samples)))
        engine.dispose()
    rows = [
        {
            "page": path,
            "p50_ms": round(statistics.median(wall), 2),
            "p95_ms": round(p95(wall), 2),
            "cpu_p50_ms": round(statistics.median(cpu), 2),
            "cpu_p95_ms": round(p95(cpu), 2),
        }
        for path, (wall, cpu) in results.items()
    ]
    if args.json:
        print(json.dumps({"fill_seconds": fill_seconds, "pages": rows}, indent=2))
        return
    backend = "postgresql" if args.database_url else "sqlite"
    print(
        f"console pages on {backend}: {args.certificates} certificates, {args.orders} orders "
        f"in one tenant (filled in {fill_seconds:.1f} s); {args.samples} requests per page"
    )
    print(f"target: p95 < {TARGET_P95_MS:g} ms per page (wall clock; cpu: this process's threads)")
    print(f"{'page':<44} {'p50 ms':>8} {'p95 ms':>8} {'cpu p50':>8} {'cpu p95':>8}")
    for row in rows:
        flag = "" if row["p95_ms"] < TARGET_P95_MS else "  MISSED"
        print(
            f"{row['page']:<44} {row['p50_ms']:>8} {row['p95_ms']:>8} "
            f"{row['cpu_p50_ms']:>8} {row['cpu_p95_ms']:>8}{flag}"
        )


if __name__ == "__main__":
    main()
