"""Certificate records at scale: the worker's scans cost O(due), not O(all); list/get latency.

    python bench/cert_scan.py                 # 10k and 100k rows (about a minute)
    python bench/cert_scan.py --million       # and 1M rows (several minutes, ~600 MB on disk)

For each size, rows are inserted directly into a fresh SQLite file (real chains and encrypted
keys up to 100k rows; the scans never read them, so 1M rows go without), one tenant holding
them all (the list's worst case), with `DUE` rows due an ARI check and `DUE` rows past
renewAt before each tick. Then, per size:

- *tick*: CPU (process time: SQLite runs in this process) of one pass of the worker's
  certificate tasks (`CertificateTasks.tick`: revocations, ARI checks, renewals due) over the
  `DUE` due rows, with a stand-in CA that answers renewalInfo at once; the due rows are made
  due again (untimed) before each of `TICKS` ticks. The reference in the same run is a full
  scan of the same question without the indexes (`NOT INDEXED`): what a naive scan would cost.
- *idle tick*: the same pass with nothing due (what it costs every `certificate_scan_seconds`).
- *RSS*: the process's resident memory after the ticks, and the database file's size.
- *list / get* (at 100k): p50/p99 of `GET /v1/cert/list` (page 1, 20 rows, with its
  total), `?status=expiring`, `?domain=` and `GET /v1/cert/{id}` (chain and decrypted key),
  through the real Starlette app in process (no socket: the HTTP stack without the network).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
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

from sqlalchemy import insert, text, update

from certok.certificates.tasks import CertificateTasks
from certok.crypto import SecretBox, generate_private_key, private_key_to_pem
from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import Certificate, CertificateName, CertificateSecret
from certok.db.sessions import make_session_factory
from certok.orders.service import order_key_owner
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.kit.certs import FakeCa

DUE = 100
TICKS = 20
REQUESTS = 300
CHUNK = 5000
NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
_C = Certificate.__table__


class _StandInSession:
    """A CA that answers renewalInfo at once with a window in 30 days."""

    def renewal_info(self, cert_id: str) -> tuple[bytes, str | None]:
        start = NOW + 30 * DAY
        end = start + DAY
        body = json.dumps(
            {
                "suggestedWindow": {
                    "start": f"{start:%Y-%m-%dT%H:%M:%SZ}",
                    "end": f"{end:%Y-%m-%dT%H:%M:%SZ}",
                }
            }
        )
        return body.encode(), "21600"

    def revoke(self, pem: str, reason: int) -> None:
        return None


class _StandInAccounts:
    session = _StandInSession()

    def account(self, name: str) -> Any:
        return self


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def populate(store: Store, tenant_id: int, rows: int, *, secrets_too: bool) -> None:
    """`rows` records; with `secrets_too` their chains and keys as well (the scans never read
    those; get does)."""
    ca = FakeCa.create()
    chain = ca.leaf_pem(["www.example.com"], NOW - 10 * DAY, 90 * DAY, 12345)
    key = private_key_to_pem(generate_private_key("ECC")).encode()
    rng = random.Random(1)
    for first in range(1, rows + 1, CHUNK):
        batch = []
        for row_id in range(first, min(first + CHUNK, rows + 1)):
            not_before = NOW - dt.timedelta(minutes=rng.randrange(60 * 24 * 50))
            batch.append(
                {
                    "id": row_id,
                    "tenant_id": tenant_id,
                    "domains": f"n{row_id}.example.com",
                    "issuer": "letsencrypt",
                    "serial": format(row_id, "x"),
                    "not_before": not_before,
                    "not_after": not_before + 90 * DAY,
                    "key_type": "ECC",
                    "ari_cert_id": f"aki.{row_id:x}",
                    "order_id": row_id,
                    "renew_at": not_before + 60 * DAY,
                    "ari": True,
                    # Checked recently: next check some hours ahead.
                    "next_check_at": NOW + dt.timedelta(minutes=rng.randrange(1, 60 * 24)),
                    # Past renewAt already noticed (the scan must not read them again).
                    "renewal_noticed_at": NOW if not_before + 60 * DAY <= NOW else None,
                    "created_at": not_before,
                }
            )
        names = [
            {"certificate_id": row["id"], "tenant_id": tenant_id, "name": row["domains"]}
            for row in batch
        ]
        secrets_rows = (
            []
            if not secrets_too
            else [
                {
                    "certificate_id": row["id"],
                    "key_encrypted": store.box.encrypt(key, order_key_owner(row["id"])),
                    "certificate_pem": chain,
                }
                for row in batch
            ]
        )
        with transaction(store.sessions) as session:
            session.execute(insert(_C), batch)
            if secrets_too:
                session.execute(insert(CertificateSecret.__table__), secrets_rows)
            session.execute(insert(CertificateName.__table__), names)


def make_due(store: Store, rows: int, rng: random.Random) -> None:
    ids = rng.sample(range(1, rows + 1), 2 * DUE)
    with transaction(store.sessions) as session:
        session.execute(update(_C).where(_C.c.id.in_(ids[:DUE])).values(next_check_at=NOW - DAY))
        session.execute(
            update(_C)
            .where(_C.c.id.in_(ids[DUE:]))
            .values(renew_at=NOW - DAY, renewal_noticed_at=None, replaced_by_id=None)
        )


def cpu_ms(function: Any) -> float:
    started = time.process_time()
    function()
    return (time.process_time() - started) * 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(rows: int, workdir: Path) -> dict[str, Any]:
    path = workdir / f"certs-{rows}.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    store = Store(engine, make_session_factory(engine), SecretBox(secrets.token_bytes(32)))
    with transaction(store.sessions) as session:
        tenant = tenants.create_tenant(session, "bench")
        token = tenants.issue_token(session, "bench")
    started = time.monotonic()
    # Chains and keys only where get is measured: at 1M they would add 2 GB the scans never read.
    secrets_too = rows <= 100_000
    populate(store, tenant.id, rows, secrets_too=secrets_too)
    inserted = time.monotonic() - started
    tasks = CertificateTasks(
        store.sessions,
        _StandInAccounts(),
        box=store.box,
        batch=DUE * 2,
        interval_seconds=60,
        clock=lambda: NOW,
    )
    rng = random.Random(2)
    ticks, idle, naive = [], [], []
    for _ in range(TICKS):
        make_due(store, rows, rng)
        started = time.process_time()
        handled = tasks.tick()
        ticks.append((time.process_time() - started) * 1000)
        assert handled[1:] == (DUE, DUE), handled
        idle.append(cpu_ms(tasks.tick))
    with store.sessions() as session:
        for _ in range(3):
            naive.append(
                cpu_ms(
                    lambda: session.execute(
                        text(
                            "SELECT id FROM certificates NOT INDEXED WHERE next_check_at <= :now "
                            "OR (renewal_noticed_at IS NULL AND renew_at <= :now)"
                        ),
                        {"now": NOW.replace(tzinfo=None)},
                    ).all()
                )
            )
    result: dict[str, Any] = {
        "rows": rows,
        "insert_s": round(inserted, 1),
        "tick_ms_median": round(statistics.median(ticks), 2),
        "tick_ms_max": round(max(ticks), 2),
        "idle_tick_ms": round(statistics.median(idle), 3),
        "full_scan_ms": round(statistics.median(naive), 1),
        "rss_mib": round(rss_mib(), 1),
        "db_mib": round(path.stat().st_size / 2**20, 1),
    }
    if secrets_too and rows >= 100_000:
        result.update(api_latency(store, token, rows))
    engine.dispose()
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return result


def api_latency(store: Store, token: str, rows: int) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from certok.api.routes import create_app
    from certok.api.waiters import OrderWaiters
    from certok.assembly import build_api_services, build_checks
    from certok.settings import Settings

    settings = Settings(data_dir=Path(tempfile.gettempdir()), resolvers=["127.0.0.1:9"])
    app = create_app(
        build_api_services(
            settings,
            store,
            build_checks(settings, store, label_key=b"k" * 32),
            waiters=OrderWaiters(),
            wake_worker=lambda: None,
        )
    )
    headers = {"httpsok-token": token}
    rng = random.Random(3)
    out: dict[str, Any] = {}
    with TestClient(app) as client:
        cases = {
            "list": lambda: "/v1/cert/list",
            "list_expiring": lambda: "/v1/cert/list?status=expiring",
            "list_domain": lambda: f"/v1/cert/list?domain=n{rng.randrange(1, rows)}.example.com",
            "get": lambda: f"/v1/cert/{rng.randrange(1, rows)}",
        }
        for name, path in cases.items():
            times = []
            count = REQUESTS if name in ("list", "get") else REQUESTS // 10
            for _ in range(count):
                started = time.perf_counter()
                response = client.get(path(), headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
            out[f"{name}_p50_ms"] = round(percentile(times, 0.5), 2)
            out[f"{name}_p99_ms"] = round(percentile(times, 0.99), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--million", action="store_true", help="also 1M rows (a few minutes)")
    parser.add_argument("--sizes", type=int, nargs="*", help="row counts (default 10k 100k)")
    args = parser.parse_args()
    sizes = args.sizes or [10_000, 100_000]
    if args.million:
        sizes.append(1_000_000)
    with tempfile.TemporaryDirectory(prefix="certok-cert-scan-") as workdir:
        for rows in sizes:
            result = measure(rows, Path(workdir))
            print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
