"""Picking the delegations to re-check, by the number of live certificates stored.

    python bench/delegation_scan.py [--orders 100000,1000000] [--delegations 10000,10000]
                                    [--rounds 3] [--postgres URL] [--json FILE]

The event scanner re-checks the `_acme-challenge` CNAME of every delegated name that has a
live certificate (`certok.events.scans`), each once per interval. The reference is how it
used to pick them: every live certificate's names read (in batches of 5,000 by id) into a set
in Python, then every delegation read and filtered against it, so its cost followed the
certificates. certok asks the database (per delegation, a look-up in `certificate_names` by
tenant and name), so its cost follows the delegations, and reads only the delegations due
(`next_check_at`), each batch claimed by one UPDATE that moves them an interval on. One
database (SQLite in a temp dir, or a fresh one on `--postgres`) grows stage by stage with
bench/growth.py's filler (issued orders with their certificate records and names,
delegations d<i>.growth.test); per stage, in this process, timed `--rounds` times, CPU and
wall: the reference's pick, and certok's with every delegation due (a whole interval's picks
and claims at once, which a pass spreads over the interval), which must pick the same
delegations; then certok's pass with none due (what most passes read), and, once, the first
pass after the upgrade giving the never-scheduled delegations their first check time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Measurement, Report, Target, bench_parser, describe_machine, finish, invocation
from growth import Filler, growth_env, settings_for
from issuance_throughput import fresh_postgres_database

from tests.rig.certok_server import CertokServer

BENCH = "delegation_scan"
TENANT = "growth"
REFERENCE_BATCH = 5_000


def reference_pick(sessions: Any, now: Any) -> list[int]:
    """The delegations to re-check, picked as before: live certificates read in Python."""
    from sqlalchemy import select

    from certok.db.models import Certificate, Delegation
    from certok.events.live_certificates import live
    from certok.names import base_name

    certificates, delegations = Certificate.__table__, Delegation.__table__
    wanted: set[tuple[int, str]] = set()
    after = 0
    with sessions() as session:
        while True:
            batch = session.execute(
                select(certificates.c.id, certificates.c.tenant_id, certificates.c.domains)
                .where(live(now), certificates.c.id > after)
                .order_by(certificates.c.id)
                .limit(REFERENCE_BATCH)
            ).all()
            for row in batch:
                for name in row.domains.split(","):
                    wanted.add((row.tenant_id, base_name(name)))
            if len(batch) < REFERENCE_BATCH:
                break
            after = batch[-1].id
        rows = session.execute(
            select(delegations.c.id, delegations.c.tenant_id, delegations.c.base_name)
        ).all()
    return sorted(d.id for d in rows if (d.tenant_id, d.base_name) in wanted)


# The default `delegation_recheck_seconds`.
INTERVAL_SECONDS = 6 * 3600.0


class CertokPick:
    """certok's pass without its look-ups, on a clock of its own: each `all_due` is one pass
    later than the last (of this stage or the one before), past every claim made so far (at
    most an interval and its jitter on), so every delegation is due."""

    def __init__(self, now: Any) -> None:
        import datetime as dt
        import random

        from certok.events.delegation_rechecks import RECHECK_JITTER

        self.now = now
        self.step = dt.timedelta(seconds=INTERVAL_SECONDS * (1 + RECHECK_JITTER) + 1)
        self.rng = random.Random(1)

    def scanner(self, sessions: Any) -> Any:
        from certok.events.delegation_rechecks import DelegationRechecks

        return DelegationRechecks(
            sessions,
            zone="certok.growth.test",
            resolver=None,  # type: ignore[arg-type]  # the bench looks nothing up
            interval_seconds=INTERVAL_SECONDS,
            clock=lambda: self.now,
            rng=self.rng,
        )

    def first_checks(self, sessions: Any, now: Any) -> list[int]:
        self.scanner(sessions)._schedule_first_checks(self.now)
        return []

    def all_due(self, sessions: Any, now: Any) -> list[int]:
        self.now += self.step
        return sorted(d.id for d in self.scanner(sessions)._claim_due(self.now))

    def none_due(self, sessions: Any, now: Any) -> list[int]:
        scanner = self.scanner(sessions)
        scanner._schedule_first_checks(self.now)
        return sorted(d.id for d in scanner._claim_due(self.now))


def timed(pick: Callable[[Any, Any], list[int]], sessions: Any, now: Any, rounds: int) -> Any:
    cpu, wall, picked = [], [], []
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        picked = pick(sessions, now)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    return statistics.median(cpu), statistics.median(wall), picked


def run(args: argparse.Namespace) -> Report:
    import datetime as dt

    from certok.persistence import open_store

    print(f"{BENCH}: {describe_machine()}", flush=True)
    report = Report(commands=[invocation(__file__)])
    orders = [int(v) for v in args.orders.split(",")]
    delegations = [int(v) for v in args.delegations.split(",")]
    if len(orders) != len(delegations):
        raise SystemExit("--orders and --delegations need the same number of stages")
    with tempfile.TemporaryDirectory(prefix="certok-bench-delegation-scan-") as tmp:
        workdir = Path(tmp)
        url = fresh_postgres_database(args.postgres, "delegation_scan") if args.postgres else None
        # The tenant comes from certok's own CLI, as in bench/growth.py.
        setup = CertokServer(growth_env(workdir / "data", url, 1, 1, 1), workdir=workdir / "cli")
        setup.workdir.mkdir(parents=True)
        setup.create_tenant(TENANT)
        filler = Filler(workdir / "data", url)
        certok: CertokPick | None = None
        for order_count, delegation_count in zip(orders, delegations, strict=True):
            seconds = filler.grow(delegation_count, order_count)
            print(f"{BENCH}: {order_count:,} certificates, {delegation_count:,} delegations "
                  f"({seconds:.0f} s to fill)", flush=True)  # fmt: skip
            store = open_store(settings_for(workdir / "data", url), upgrade=False)
            now = dt.datetime.now(dt.UTC)
            certok = certok or CertokPick(now)
            try:
                ref_cpu, ref_wall, ref_ids = timed(reference_pick, store.sessions, now, args.rounds)
                first_cpu, first_wall, _ = timed(certok.first_checks, store.sessions, now, 1)
                cpu, wall, ids = timed(certok.all_due, store.sessions, now, args.rounds)
                idle_cpu, idle_wall, idle = timed(certok.none_due, store.sessions, now, args.rounds)
            finally:
                store.engine.dispose()
            if ids != ref_ids:
                raise SystemExit(f"the picks differ: {len(ids)} against {len(ref_ids)}")
            if idle:
                raise SystemExit(f"a pass right after a full one picked {len(idle)} again")
            size = f"{order_count:,} certificates, {delegation_count:,} delegations"
            picked = f"{len(ids):,} delegations picked; median of {args.rounds}"
            for what, c, w, ratio, note in (
                ("reference: live certificates read in Python", ref_cpu, ref_wall, 1.0, picked),
                (
                    "certok: every delegation due, picked and claimed",
                    cpu,
                    wall,
                    ref_cpu / cpu if cpu else None,
                    picked,
                ),
                (
                    "certok: a pass with none due",
                    idle_cpu,
                    idle_wall,
                    None,
                    f"none picked; median of {args.rounds}",
                ),
                (
                    "certok: first check times after the upgrade",
                    first_cpu,
                    first_wall,
                    None,
                    "every never-scheduled delegation; once",
                ),
            ):
                report.measurements.append(
                    Measurement(
                        BENCH,
                        f"{size}: {what}",
                        rate=1 / c if c else None,
                        rate_unit="picks per CPU-s",
                        ratio=ratio,
                        ratio_of="the reference's picks per CPU-s",
                        latency={"cpu": c, "wall": w},
                        note=note,
                    )
                )
            report.targets.append(
                Target(
                    BENCH,
                    f"{size}: the pick costs less CPU than the reference",
                    f"{cpu * 1e3:.0f} ms against the reference's {ref_cpu * 1e3:.0f} ms",
                    cpu <= ref_cpu,
                )
            )
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--orders", default="100000,1000000", help="certificates per stage")
    parser.add_argument("--delegations", default="10000,10000", help="delegations per stage")
    parser.add_argument("--rounds", type=int, default=3, help="timed picks per stage (3)")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server instead of SQLite")
    args = parser.parse_args()
    finish(run(args), args.json, show_commands=True)


if __name__ == "__main__":
    main()
