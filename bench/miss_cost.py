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
Each round gives the random polls' rate over the cached polls' rate measured seconds before;
the median of the rounds is the figure. Per run it also reports the server's CPU per request,
the database server's (PostgreSQL processes on this machine), and how busy the server's and
the load generator's cores were: a server core less than fully busy is waiting for the
database, not working.

The database is filled as growth.py fills it (`Filler`: issued orders behind codes, rows
inserted directly). `--keep DIR` fills it once and reuses it in later runs (SQLite in DIR; on
PostgreSQL the database named in DIR's state, kept instead of dropped).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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
    invocation,
    named_cpu_seconds,
    require_tools,
)
from _wrk import WrkResult, run_wrk
from growth import (
    TOKEN_HEADER,
    Filler,
    kept_filler,
    new_filler,
    random_code_script,
    save_filler,
    serve_filled,
)
from issuance_throughput import drop_postgres_database, fresh_postgres_database

BENCH = "miss_cost"
WARMUP_SECONDS = 2.0
_KINDS = ("cached", "random")


@dataclass
class Run:
    """One wrk run, with what the machine's processes spent meanwhile."""

    result: WrkResult
    database_us: float | None  # PostgreSQL processes' CPU per request
    core_busy: list[float]  # per CPU, percent


@dataclass
class Rounds:
    runs: dict[str, list[Run]] = field(default_factory=lambda: {kind: [] for kind in _KINDS})


def cpu_times() -> list[tuple[int, int]]:
    """(all ticks, idle ticks) per CPU, from /proc/stat."""
    times = []
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("cpu") and line[3].isdigit():
                ticks = [int(value) for value in line.split()[1:]]
                times.append((sum(ticks), ticks[3] + ticks[4]))  # idle + iowait
    return times


def measured_run(
    url: str, args: argparse.Namespace, cores: Cores, headers: tuple[str, ...],
    script: Path | None, server_pgid: int,
) -> Run:  # fmt: skip
    database_before, cores_before = named_cpu_seconds("postgres"), cpu_times()
    result = run_wrk(url, seconds=args.duration, connections=args.connections, core=cores.load,
                     headers=headers, script=script, server_pgid=server_pgid)  # fmt: skip
    database_seconds = named_cpu_seconds("postgres") - database_before
    busy = [
        100.0 * (1 - (after[1] - before[1]) / max(1, after[0] - before[0]))
        for before, after in zip(cores_before, cpu_times(), strict=True)
    ]
    requests = result.requests
    database_us = 1e6 * database_seconds / requests if args.postgres and requests else None
    return Run(result, database_us, busy)


def measure(filler: Filler, token: str, workdir: Path, args: argparse.Namespace) -> Rounds:
    cores = Cores.pick()
    print(f"{BENCH}: {cores.describe()}", flush=True)
    rounds = Rounds()
    with Processes() as processes:
        certok = serve_filled(processes, filler, workdir, cores)
        certok.start()
        assert certok.pid is not None
        script = random_code_script(workdir / "apply.lua", filler.first_order_id or 1,
                                    filler.orders)  # fmt: skip
        targets = {
            "cached": (f"{certok.base_url}/v1/cert/apply?code={filler.codes()[-1]}", None),
            "random": (certok.base_url + "/", script),
        }
        headers = (f"{TOKEN_HEADER}: {token}",)
        for url, lua in targets.values():
            run_wrk(url, seconds=WARMUP_SECONDS, connections=args.connections, core=cores.load,
                    headers=headers, script=lua)  # fmt: skip
        for number in range(1, args.rounds + 1):
            for kind, (url, lua) in targets.items():
                run = measured_run(url, args, cores, headers, lua, certok.pid)
                rounds.runs[kind].append(run)
                print(f"{BENCH}: round {number}, {kind}: {describe(run)}", flush=True)
    return rounds


def describe(run: Run) -> str:
    result = run.result
    text = f"{result.rps:,.0f} req/s, server {server_us(result):.0f} µs/request"
    if run.database_us is not None:
        text += f", PostgreSQL {run.database_us:.0f} µs/request"
    busy = " ".join(f"{percent:.0f}%" for percent in run.core_busy)
    return f"{text}; cores busy {busy}"


def server_us(result: WrkResult) -> float:
    per_cpu_second = result.per_cpu_second
    return 1e6 / per_cpu_second if per_cpu_second else float("nan")


def build_report(rounds: Rounds, orders: int) -> Report:
    report = Report()
    cached, random = rounds.runs["cached"], rounds.runs["random"]
    ratios = [r.result.rps / c.result.rps for c, r in zip(cached, random, strict=True)]
    for kind, runs in rounds.runs.items():
        rates = [run.result.rps for run in runs]
        costs = [server_us(run.result) for run in runs]
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
                cpu_percent=statistics.median(run.result.cpu_percent or 0.0 for run in runs),
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
        # A fresh PostgreSQL database (a million orders' holds gigabytes) is dropped at the end
        # unless `--keep` saved it for later runs.
        kept = {"saved": False}
        if filler is None:
            database_url = None
            if args.postgres:
                database_url = fresh_postgres_database(args.postgres, "miss_cost")
                cleanup.callback(drop_unless_saved, args.postgres, database_url, kept)
            token, filler = new_filler(workdir, database_url)
        elif bool(filler.database_url) != bool(args.postgres):
            raise SystemExit(f"{workdir} holds a database of the other kind: remove it to refill")
        if filler.orders < args.orders:
            print(f"{BENCH}: filling to {args.orders:,} orders", flush=True)
            seconds = filler.grow(max(filler.delegations, 1000), args.orders)
            print(f"{BENCH}: filled in {seconds:.0f} s", flush=True)
        if args.keep:
            save_filler(workdir, token, filler)
            kept["saved"] = True
        rounds = measure(filler, token, workdir, args)
    report = build_report(rounds, filler.orders)
    report.commands.insert(0, invocation(__file__))
    return report


def drop_unless_saved(server_url: str, database_url: str, kept: dict[str, bool]) -> None:
    if not kept["saved"]:
        drop_postgres_database(server_url, database_url)


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
