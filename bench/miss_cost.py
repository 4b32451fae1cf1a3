"""What a poll the cache of issued answers misses costs, side by side with one it answers.

    python bench/miss_cost.py [--orders 1000000] [--postgres URL] [--keep DIR]
                              [--rounds 5] [--duration 5] [--connections 16] [--json FILE]

growth.py's item-5 figure compares the random-code polls of its last stage with those of its
first, measured minutes apart; on a shared machine the server's speed drifts by more than the
difference it looks for over that time. This measures the same two kinds of poll on one
database and one running `certok serve`, alternated round after round:
- `GET /v1/cert/apply?code=<one code>`: answered from the cache after the first poll, so it
  costs what any cached poll costs, whatever the size;
- `GET /v1/cert/apply?code=<random stored code>` (growth.py's wrk script): with more stored
  codes than the cache holds, almost every poll reads its code from the database.
Both are first polled until their rate stops rising (a kept database starts with its pages
out of memory). Each round gives the random polls' rate over the cached polls' rate measured
seconds apart, each kind going first every other round; the median of the rounds is the
figure. A run with any error answer stops the script: it would not measure the read. Per
run it also reports the server's CPU per request, the database server's (the PostgreSQL
processes on this machine, other clients' included), and how busy the server's and the load
generator's cores were: a server core less than fully busy is waiting for the database, not
working. certok's purge of old orders is off (the filled orders are finished when filled).

The database is filled as growth.py fills it (`Filler`: issued orders behind codes, rows
inserted directly). `--keep DIR` fills it once and reuses it in later runs (SQLite in DIR; on
PostgreSQL the database named in DIR's state, kept instead of dropped).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Cores,
    Measurement,
    Processes,
    Report,
    bench_parser,
    clean_environment,
    describe_machine,
    finish,
    group_cpu_seconds,
    invocation,
    named_cpu_seconds,
    require_tools,
)
from _wrk import WrkResult, run_wrk
from growth import (
    TOKEN_HEADER,
    Filler,
    check_answers,
    delegated_name,
    kept_filler,
    new_filler,
    random_code_script,
    save_filler,
    serve_filled,
    stored_code,
)
from issuance_throughput import drop_postgres_database, fresh_postgres_database

BENCH = "miss_cost"
WARMUP_SECONDS = 2.0
# Warm once a run is no more than this much faster than the one before (at most WARMUP_RUNS).
WARM_WITHIN = 1.05
WARMUP_RUNS = 30
_KINDS = ("cached", "random")


@dataclass
class Run:
    """One wrk run, with what the server, PostgreSQL and the two cores spent meanwhile."""

    result: WrkResult
    server_us: float  # certok's CPU per request
    server_percent: float  # certok's CPU over the run, percent of one core
    database_us: float | None  # PostgreSQL processes' CPU per request (None: not measured)
    server_core_busy: float | None  # percent (None: nothing pinned)
    load_core_busy: float | None


@dataclass
class Rounds:
    """Each kind of poll's runs, round by round."""

    runs: dict[str, list[Run]] = field(default_factory=lambda: {kind: [] for kind in _KINDS})


def idle_ticks() -> dict[int, tuple[int, int]]:
    """(all ticks, idle ticks) by CPU number, from /proc/stat."""
    times = {}
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                # user nice system idle iowait irq softirq steal (guest time is in user's)
                ticks = [int(value) for value in values[:8]]
                times[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4])
    return times


def busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int | None
) -> float | None:
    if core is None or core not in before or core not in after:
        return None
    (total_before, idle_before), (total_after, idle_after) = before[core], after[core]
    return 100.0 * (1 - (idle_after - idle_before) / max(1, total_after - total_before))


def measured_run(
    url: str, args: argparse.Namespace, cores: Cores, headers: tuple[str, ...],
    script: Path | None, server_pgid: int,
) -> Run:  # fmt: skip
    database_before = named_cpu_seconds("postgres") if args.postgres else None
    server_before, ticks_before = group_cpu_seconds(server_pgid), idle_ticks()
    started = time.monotonic()
    result = run_wrk(url, seconds=args.duration, connections=args.connections, core=cores.load,
                     headers=headers, script=script)  # fmt: skip
    wall = time.monotonic() - started
    server_seconds, ticks_after = group_cpu_seconds(server_pgid) - server_before, idle_ticks()
    database_after = named_cpu_seconds("postgres") if args.postgres else None
    if not result.clean or not result.requests:
        raise SystemExit(
            f"{BENCH}: {url} answered {result.non_2xx} of {result.requests} requests with an "
            f"error and had {result.socket_errors} socket errors: not measuring that"
        )
    database_us = None
    if database_before is not None and database_after is not None:
        database_us = 1e6 * (database_after - database_before) / result.requests
    return Run(
        result,
        server_us=1e6 * server_seconds / result.requests,
        server_percent=100.0 * server_seconds / wall,
        database_us=database_us,
        server_core_busy=busy_percent(ticks_before, ticks_after, cores.server),
        load_core_busy=busy_percent(ticks_before, ticks_after, cores.load),
    )


def measure(filler: Filler, token: str, workdir: Path, args: argparse.Namespace) -> Rounds:
    cores = Cores.pick()
    print(f"{BENCH}: {cores.describe()}", flush=True)
    rounds = Rounds()
    with Processes() as processes:
        # No purge: a kept database's orders were finished when it was filled.
        certok = serve_filled(processes, filler, workdir, cores, purge=False)
        certok.start()
        assert certok.pid is not None
        first = filler.first_order_id or 1
        newest, oldest = stored_code(first + filler.orders - 1), stored_code(first)
        for code in (newest, oldest):
            check_answers(certok.base_url, token, code, delegated_name(0))
        script = random_code_script(workdir / "apply.lua", first, filler.orders)
        targets = {
            "cached": (f"{certok.base_url}/v1/cert/apply?code={newest}", None),
            "random": (certok.base_url + "/", script),
        }
        headers = (f"{TOKEN_HEADER}: {token}",)
        for kind, (url, lua) in targets.items():
            warm_up(kind, url, lua, args, cores, headers)
        for number in range(1, args.rounds + 1):
            # Each kind goes first every other round: a steady drift favours neither.
            kinds = list(targets) if number % 2 else list(reversed(targets))
            for kind in kinds:
                url, lua = targets[kind]
                run = measured_run(url, args, cores, headers, lua, certok.pid)
                rounds.runs[kind].append(run)
                print(f"{BENCH}: round {number}, {kind}: {describe(run)}", flush=True)
    return rounds


def warm_up(
    kind: str, url: str, script: Path | None, args: argparse.Namespace, cores: Cores,
    headers: tuple[str, ...],
) -> None:  # fmt: skip
    """Poll until the rate stops rising: a database kept from an earlier run starts with its
    pages out of memory (PostgreSQL's buffers and the kernel's cache), and the first random
    polls measure the disk."""
    previous = 0.0
    for _ in range(WARMUP_RUNS):
        result = run_wrk(url, seconds=WARMUP_SECONDS, connections=args.connections,
                         core=cores.load, headers=headers, script=script)  # fmt: skip
        print(f"{BENCH}: warming up, {kind}: {result.rps:,.0f} req/s", flush=True)
        if result.rps <= previous * WARM_WITHIN:
            return
        previous = result.rps
    print(f"{BENCH}: {kind} still getting faster after {WARMUP_RUNS} warm-up runs", flush=True)


def describe(run: Run) -> str:
    text = f"{run.result.rps:,.0f} req/s, server {run.server_us:.0f} µs/request"
    if run.database_us is not None:
        text += f", PostgreSQL {run.database_us:.0f} µs/request"
    if run.server_core_busy is not None and run.load_core_busy is not None:
        text += (
            f"; server's core {run.server_core_busy:.0f}% busy, load generator's "
            f"{run.load_core_busy:.0f}%"
        )
    return text


def build_report(rounds: Rounds, orders: int) -> Report:
    report = Report()
    cached, random = rounds.runs["cached"], rounds.runs["random"]
    ratios = [r.result.rps / c.result.rps for c, r in zip(cached, random, strict=True)]
    for kind, runs in rounds.runs.items():
        rates = [run.result.rps for run in runs]
        costs = [run.server_us for run in runs]
        database = [run.database_us for run in runs if run.database_us is not None]
        note = (
            f"{len(runs)} runs, req/s {min(rates):,.0f}-{max(rates):,.0f}; server CPU "
            f"{statistics.median(costs):.0f} µs/request (median)"
        )
        if database:
            note += f", PostgreSQL {statistics.median(database):.0f} µs/request"
        report.measurements.append(
            Measurement(
                BENCH,
                f"{orders:,} orders: GET /v1/cert/apply, {kind} (median of rounds)",
                rate=statistics.median(rates),
                rate_unit="req/s",
                cpu_percent=statistics.median(run.server_percent for run in runs),
                note=note,
            )
        )
    report.measurements.append(
        Measurement(
            BENCH,
            f"{orders:,} orders: random stored codes against cached polls, each round",
            ratio=statistics.median(ratios),
            ratio_of="cached polls' req/s of the same round (median of rounds)",
            note="rounds: " + ", ".join(f"{ratio:.2f}x" for ratio in ratios),
        )
    )
    return report


def run(args: argparse.Namespace) -> Report:
    require_tools("wrk", "taskset")
    clean_environment()
    print(f"{BENCH}: {describe_machine()}", flush=True)
    with ExitStack() as cleanup:
        workdir = args.keep or Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        token, filler = kept_filler(workdir) if args.keep else ("", None)
        # A fresh PostgreSQL database (a million orders' holds gigabytes) is dropped at the end,
        # unless `--keep` saved it for later runs.
        fresh = ExitStack()
        cleanup.enter_context(fresh)
        if filler is None:
            database_url = None
            if args.postgres:
                # A kept one's name must not be another run's: each run drops its own first.
                suffix = f"miss_cost_kept_{uuid.uuid4().hex[:8]}" if args.keep else "miss_cost"
                database_url = fresh_postgres_database(args.postgres, suffix)
                fresh.callback(drop_postgres_database, args.postgres, database_url)
            token, filler = new_filler(workdir, database_url)
        elif bool(filler.database_url) != bool(args.postgres):
            raise SystemExit(f"{workdir} holds a database of the other kind: remove it to refill")
        if filler.orders < args.orders:
            print(f"{BENCH}: filling to {args.orders:,} orders", flush=True)
            seconds = filler.grow(max(filler.delegations, 1000), args.orders)
            print(f"{BENCH}: filled in {seconds:.0f} s", flush=True)
        if args.keep:
            save_filler(workdir, token, filler)
            fresh.pop_all()
        rounds = measure(filler, token, workdir, args)
    report = build_report(rounds, filler.orders)
    report.commands.insert(0, invocation(__file__))
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--orders", type=int, default=1_000_000, help="stored orders (1000000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds (5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (16)")
    parser.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="fill the database once and reuse it: SQLite in DIR, or the PostgreSQL database "
        "DIR's state names (kept, not dropped)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="a database on this PostgreSQL server instead of SQLite "
        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.orders < 1 or args.duration <= 0:
        parser.error("--rounds and --orders must be at least 1, --duration above 0")
    finish(run(args), args.json, show_commands=True)


if __name__ == "__main__":
    main()
