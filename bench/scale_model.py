"""What 10M certificates ask of certok's nodes and database: a model fed with measured costs.

    python bench/scale_model.py [--certificates 10000000] [--regions 3]
                                [--<cost> VALUE ...] [--json FILE]

Nothing here is measured: each per-unit cost comes from another benchmark of this directory
(its flag's help names the script and the row; the defaults are this repo's last figures,
bench/README.md). The model multiplies them out for a fleet
of `--certificates` certificates renewed every `--renew-days` days, in three cases:
- steady state: renewals spread evenly (ARI windows and `renew_at` spread them);
- daily peak: `--peak-factor` times the average (orders arrive with the customers' working
  hours and deployments);
- mass reissue: every certificate again within `--reissue-hours` (a CA's incident: the
  Baseline Requirements give 5 days for a revocation, some CAs revoke within 24 hours).
For each it prints the orders/s, the worker cores, the PostgreSQL transactions/s and round
trips/s, the DNS queries/s of the CAs' validations, the storage, the RSS of a DNS node holding
every delegation's label, and apply polls that miss the issued-answer cache.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Measurement, Report, bench_parser, finish

BENCH = "scale_model"
DAY = 86_400.0


@dataclass
class Costs:
    worker_cpu_ms: float  # certok CPU per issued order (issuance_throughput.py, PostgreSQL)
    write_transactions: float  # committed write transactions per order (PostgreSQL)
    statements: float  # SQL statements per order, worker and API
    storage_kib: float  # database bytes per stored order + certificate (growth.py, 1M)
    dns_qps_core: float  # certok DNS answers per second on one core (growth.py / dns_qps.py)
    label_rss_bytes: float  # DNS node RSS per delegation label (growth.py, RSS between stages)
    miss_cpu_us: float  # CPU per apply poll missing the issued-answer cache (growth.py)
    hit_cpu_us: float  # CPU per apply poll hitting it (growth.py, one code)


# Each cost's flag: its default (this repo's last measurement, bench/README.md) and where it
# is measured.
COST_FLAGS = (
    ("worker_cpu_ms", 43.0,
     "certok CPU per order: issuance_throughput.py --postgres, 'ms CPU per order (certok)'"),
    ("write_transactions", 9.2,
     "write transactions per order: issuance_throughput.py --postgres, commits per order "
     "while every read still ended in a rollback"),
    ("statements", 30.0,
     "SQL statements per order, worker and API: issuance_throughput.py --postgres, commits "
     "per order now (each autocommit read is one) + the writes' statements "
     "(tests/functional/test_issuance_statements.py)"),
    ("storage_kib", 2.7,
     "database KiB per stored order + certificate: growth.py, database size / orders at 1M"),
    ("dns_qps_core", 69_000.0,
     "certok DNS qps per CPU-second: growth.py's DNS row, qps / server CPU"),
    ("label_rss_bytes", 569.0, "DNS node RSS per delegation: label_reload.py at 1M"),
    ("miss_cpu_us", 119.0,
     "CPU per apply poll missing the issued-answer cache: growth.py, random code at 1M"),
    ("hit_cpu_us", 50.0, "CPU per apply poll hitting it: growth.py, random code at 1k"),
)  # fmt: skip


def model(args: argparse.Namespace, costs: Costs) -> Report:
    report = Report()
    average = args.certificates / (args.renew_days * DAY)
    reissue = args.certificates / (args.reissue_hours * 3600)
    cases = (
        ("steady state", average),
        (f"daily peak ({args.peak_factor:g}x)", average * args.peak_factor),
        (f"mass reissue in {args.reissue_hours:g} h", reissue),
    )
    storage_gib = args.certificates * costs.storage_kib / (1024 * 1024)
    label_gib = args.delegations * costs.label_rss_bytes / 2**30
    for name, orders_per_s in cases:
        cores = orders_per_s * costs.worker_cpu_ms / 1000
        # psycopg sends BEGIN and COMMIT as round trips of their own; reads autocommit.
        writes = orders_per_s * costs.write_transactions
        round_trips = orders_per_s * (costs.statements + 2 * costs.write_transactions)
        # Each validation: the CA asks TXT at every perspective (Let's Encrypt: the primary
        # and its remote perspectives), a few names per order, retries aside.
        dns_qps = orders_per_s * args.names_per_order * args.ca_perspectives
        report.measurements.append(
            Measurement(
                BENCH,
                f"{args.certificates:,} certificates, {name}",
                rate=orders_per_s,
                rate_unit="orders/s",
                note=(
                    f"worker {cores:.2f} cores ({math.ceil(cores / args.core_share)} nodes at "
                    f"{args.core_share:g} core each); PostgreSQL {writes:,.0f} write "
                    f"transactions/s, {round_trips:,.0f} round trips/s; DNS {dns_qps:,.0f} "
                    f"qps from the CAs = {dns_qps / costs.dns_qps_core:.3f} core"
                ),
            )
        )
    polls = args.polls_per_second
    miss_cores = polls * costs.miss_cpu_us / 1e6
    hit_cores = polls * costs.hit_cpu_us / 1e6
    report.measurements.append(
        Measurement(
            BENCH,
            f"apply polls of stored codes, {polls:,.0f}/s",
            rate=polls,
            rate_unit="req/s",
            note=(
                f"{miss_cores:.2f} cores if every poll misses the issued-answer cache, "
                f"{hit_cores:.2f} if every poll hits it"
            ),
        )
    )
    from certok.db.engine import _POSTGRES_OVERFLOW, database_threads

    per_process = database_threads(args.worker_threads) + _POSTGRES_OVERFLOW
    per_node = per_process * args.processes
    nodes = args.regions * args.nodes_per_region
    report.measurements.append(
        Measurement(
            BENCH,
            f"PostgreSQL connections, {nodes} nodes ({args.regions} regions)",
            rate=per_node * nodes,
            rate_unit="connections at most",
            note=(
                f"{per_node} per node: {args.processes} database-using processes x "
                f"(pool {database_threads(args.worker_threads)} + overflow {_POSTGRES_OVERFLOW}) "
                f"at worker_threads={args.worker_threads} on this machine's CPU count"
            ),
        )
    )
    report.measurements.append(
        Measurement(
            BENCH,
            f"{args.certificates:,} certificates, storage and memory",
            note=(
                f"database {storage_gib:,.1f} GiB (orders kept as long as certificates; "
                f"`certok purge` halves it); {args.delegations:,} delegation labels in every "
                f"DNS node's zone: {label_gib:.2f} GiB RSS"
            ),
        )
    )
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    add = parser.add_argument
    add("--certificates", type=int, default=10_000_000)
    add("--delegations", type=int, default=2_000_000, help="delegated names (2M)")
    add(
        "--renew-days",
        type=float,
        default=60.0,
        help="days between renewals (60: 90-day certificates)",
    )
    add("--peak-factor", type=float, default=4.0, help="peak hour over the day's average (4)")
    add("--reissue-hours", type=float, default=120.0, help="mass reissue window (120 h = 5 days)")
    add("--names-per-order", type=float, default=1.5)
    add("--ca-perspectives", type=float, default=5.0, help="DNS lookups per name by the CA (5)")
    add("--core-share", type=float, default=1.0, help="worker cores per node (1)")
    add("--polls-per-second", type=float, default=1000.0, help="apply polls of stored codes/s")
    add("--regions", type=int, default=3)
    add("--nodes-per-region", type=int, default=3)
    add("--processes", type=int, default=2, help="API + worker processes per node (2)")
    add("--worker-threads", type=int, default=8, help="worker_threads (8, the default)")
    for field_name, default, source in COST_FLAGS:
        flag = "--" + field_name.replace("_", "-")
        add(flag, type=float, default=default, help=f"{source} ({default:g})")
    args = parser.parse_args()
    costs = Costs(**{name: getattr(args, name) for name, _, _ in COST_FLAGS})
    finish(model(args, costs), args.json, show_commands=False)


if __name__ == "__main__":
    main()
