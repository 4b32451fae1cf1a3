"""What a new delegation costs every DNS node, by the number of delegations stored.

    python bench/label_reload.py [--labels 10000,100000,1000000] [--samples 5] [--postgres URL]
                                 [--json FILE]

Each node's DNS process keeps every delegation's label in memory (`ZoneCache`) and reads them
all again when the delegations table's fingerprint moves, that is after any new delegation
(and every 30 s regardless), then rebuilds its answer index. This script grows one database
(SQLite in a temp dir, or a fresh database on `--postgres`) stage by stage with delegation
rows written straight into it, and per stage, in this process:
- CPU time of a refresh after one delegation was added (labels read in full, index rebuilt),
  `--samples` times, against a refresh with nothing changed in the same stage;
- the process's RSS growth for the labels and index held (VmRSS before the first load and
  after, with the previous stage's cache dropped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Measurement, Report, bench_parser, describe_machine, finish, invocation
from growth import ZONE, memory_kib, settings_for
from issuance_throughput import fresh_postgres_database

BENCH = "label_reload"
CHUNK = 50_000


def fill(store: object, tenant_id: int, have: int, want: int) -> None:
    from sqlalchemy import insert

    from certok.db.models import Delegation

    now = dt.datetime.now(dt.UTC)
    table = Delegation.__table__
    for first in range(have, want, CHUNK):
        rows = [
            {"tenant_id": tenant_id, "base_name": f"l{i}.labels.test",
             "label": secrets.token_hex(8), "created_at": now}
            for i in range(first, min(want, first + CHUNK))
        ]  # fmt: skip
        with store.engine.begin() as connection:  # type: ignore[attr-defined]
            connection.execute(insert(table), rows)


def measure(
    store: object, settings: object, tenant_id: int, count: int, samples: int
) -> Measurement:
    import os

    from certok.dnszone.answer import ZoneConfig
    from certok.dnszone.zone_cache import ZoneCache
    from certok.dnszone.zoneindex import prepare_index

    gc.collect()
    before = memory_kib(os.getpid())["VmRSS"]
    config = ZoneConfig.from_settings(settings)
    cache = ZoneCache(store.sessions)  # type: ignore[attr-defined]
    cache.add_snapshot_hook(functools.partial(prepare_index, config))
    prepare_index(config, None, cache.records)
    cache.refresh()
    gc.collect()
    held_mib = (memory_kib(os.getpid())["VmRSS"] - before) / 1024
    changed, unchanged = [], []
    for sample in range(samples):
        fill(store, tenant_id, count + sample, count + sample + 1)
        started = time.process_time()
        cache.refresh()
        changed.append(time.process_time() - started)
        started = time.process_time()
        cache.refresh()
        unchanged.append(time.process_time() - started)
    assert len(cache.records.labels) == count + samples
    p50, idle = statistics.median(changed), statistics.median(unchanged)
    del cache
    return Measurement(
        BENCH,
        f"{count:,} delegations: refresh after a new one",
        rate=1 / p50,
        rate_unit="refreshes per CPU-s",
        latency={"p50": p50, "max": max(changed)},
        note=(
            f"CPU time; labels and index held: {held_mib:.0f} MiB RSS "
            f"({held_mib * 2**20 / count:.0f} bytes per label); a refresh with nothing new "
            f"in the same stage: {idle * 1e3:.2f} ms"
        ),
    )


def run(args: argparse.Namespace) -> Report:
    from certok.persistence import open_store
    from certok.tenants.service import create_tenant

    print(f"{BENCH}: {describe_machine()}", flush=True)
    report = Report(commands=[invocation(__file__)])
    stages = [int(v) for v in args.labels.split(",")]
    with tempfile.TemporaryDirectory(prefix="certok-bench-labels-") as tmp:
        url = fresh_postgres_database(args.postgres, "labels") if args.postgres else None
        settings = settings_for(Path(tmp), url, dns_zone=ZONE)
        store = open_store(settings)
        from certok.db.engine import transaction

        with transaction(store.sessions) as session:
            tenant_id = create_tenant(session, "labels").id
        have = 0
        try:
            for count in stages:
                started = time.monotonic()
                fill(store, tenant_id, have, count)
                print(f"{BENCH}: {count:,} delegations ({time.monotonic() - started:.0f} s)",
                      flush=True)  # fmt: skip
                have = count
                report.measurements.append(measure(store, settings, tenant_id, count, args.samples))
                have += args.samples
        finally:
            store.engine.dispose()
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--labels", default="10000,100000,1000000", help="delegations per stage")
    parser.add_argument("--samples", type=int, default=5, help="refreshes per stage (5)")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server instead of SQLite")
    args = parser.parse_args()
    finish(run(args), args.json, show_commands=True)


if __name__ == "__main__":
    main()
