"""Sustained issuance rate with many orders in flight: certok next to the floor, same Pebble.

    python bench/issuance_throughput.py [--orders 600] [--in-flight 200] [--names 200]
                                        [--worker-threads 32] [--worker-max-orders 400]
                                        [--rounds 1] [--json FILE]

Starts the rig (Pebble with PEBBLE_VA_NOSLEEP=1, nonce reject 0, authz reuse 0), then:
- certok: one `certok serve` (SQLite, `worker_threads` / `worker_max_orders` from the flags, the
  per-tenant rate limits off, `acme_poll_seconds` = the floor's poll); `--names` names
  n0..n<names-1>.customer.test, each with an A record and its `_acme-challenge` CNAME to the
  label certok's dv gave for it. `--in-flight` client slots (one asyncio task each, slot i
  always orders name i % names) each loop: `GET /v1/cert/dv` (a code per call), then
  `GET /v1/cert/apply` with it until the answer is not `pending` (the API holds each request
  up to `apply_wait_seconds=10`), until `--orders` certificates are issued;
- floor: the minimal client on certbot's `acme` library (bench/issuance_latency.py's), one
  thread per slot, each with its own connections and nonces on one shared account, ordering
  the same names straight from Pebble with 0.1 s polls; its TXT values are served from memory
  (issuance_latency.ChallengeDns, a process of its own) at the labels certok allocated, so the
  CA sees the same delegations.
Each gets a warm-up order first (account registration). Pebble 2.4 can wedge under this load
(its store's recursive read locks, letsencrypt/pebble#554): a watch notices, the run is thrown
away and repeated, and the table says how often that happened. Pebble is restarted before every
run, so each client meets an empty store.
Reported per client: orders/s over the whole run (first request to last certificate), orders/s
over the middle half of completions (ramp-up and tail excluded), per-order latency p50 / p99,
failures, CPU time per issued order of the client under test (certok serve with its API, DNS
server and worker; or the floor's process, its DNS responder aside), and the CPU used by it,
Pebble and the load generator.
Nothing is pinned: Pebble and the resolver need the cores as much as the clients do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CpuMeter,
    Measurement,
    Report,
    Target,
    clean_environment,
    describe_machine,
    percentile,
    print_report,
)
from issuance_latency import ChallengeDns, FloorClient

from tests.rig import Rig
from tests.rig.certok_server import CertokServer

BENCH = "issuance_throughput"
TARGET_ORDERS_PER_SECOND = 40.0
TOKEN_HEADER = "httpsok-token"
APPLY_WAIT_SECONDS = 10
FLOOR_TIMEOUT_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 5.0
DNS_PROBE_TIMEOUT = 2.0


# --- results -------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run of one client: when each order finished and how long it took."""

    who: str
    started: float = 0.0
    finished: list[float] = field(default_factory=list)  # monotonic completion times
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retries: int = 0  # requests sent again on a fresh connection (see get_json)
    extra: str = ""
    cpu: dict[str, float | None] = field(default_factory=dict)
    wedged: bool = False  # Pebble stopped answering during this run (see PebbleWatch)
    thrown_away: int = 0  # earlier runs of this client in which Pebble wedged
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def done(self, started: float, error: str | None = None) -> None:
        now = time.monotonic()
        with self.lock:
            if error is None:
                self.finished.append(now)
                self.latencies.append(now - started)
            else:
                self.failures.append(error)

    @property
    def last_progress(self) -> float:
        with self.lock:
            return max(self.finished[-1:] or [self.started])

    @property
    def wall(self) -> float:
        return (max(self.finished) - self.started) if self.finished else float("nan")

    @property
    def rate(self) -> float:
        return len(self.finished) / self.wall if self.finished else 0.0

    @property
    def middle_rate(self) -> float:
        """Completions per second between the 25% and the 75% completion: steady state."""
        ordered = sorted(self.finished)
        if len(ordered) < 8:
            return self.rate
        first, last = len(ordered) // 4, (3 * len(ordered)) // 4
        span = ordered[last] - ordered[first]
        return (last - first) / span if span > 0 else float("nan")


class Tickets:
    """Hands out order numbers until `total` are taken (thread-safe)."""

    def __init__(self, total: int) -> None:
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True

    def cancel(self) -> None:
        with self._lock:
            self._left = 0


class PebbleWatch:
    """Notices when Pebble 2.4 wedges, and ends the run instead of waiting out every timeout.

    Pebble's in-memory store takes read locks recursively (letsencrypt/pebble#554): under a
    few hundred concurrent requests a writer can slip in between, and from then on every
    request that needs the store waits forever (seen here about one 600-order floor run in
    three at 200 in flight; a goroutine dump shows ~180 requests in `GetAccountByID` RLock and
    the writers in `AddChallenge` / `AddCertificate`). A run that saw it says nothing about the
    client, so it is thrown away and the round repeated on a restarted Pebble. When no order
    has finished for `quiet` seconds, the watch asks Pebble for the probe account (a request
    that needs the store lock); no answer in time means wedged: `on_wedged` ends the run.
    """

    def __init__(
        self, run: Run, probe: FloorClient, on_wedged: Callable[[], None], quiet: float = 15.0
    ) -> None:
        self._run = run
        self._probe = probe
        self._on_wedged = on_wedged
        self._quiet = quiet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PebbleWatch:
        self._entered = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            last = max(self._run.last_progress, self._entered)
            if time.monotonic() - last < self._quiet:
                continue
            if not self._probe.account_answers():
                self._run.wedged = True
                print(f"{BENCH}: Pebble stopped answering (its store lock is wedged); "
                      "this run will be repeated", flush=True)  # fmt: skip
                self._on_wedged()
                return


# --- certok --------------------------------------------------------------------------------------


def names_for(count: int) -> list[str]:
    return [f"n{i}.customer.test" for i in range(count)]


async def dv_labels(base_url: str, token: str, names: Sequence[str]) -> dict[str, str]:
    """name → label certok allocated for it (its dv answer before the CNAME exists)."""
    async with httpx.AsyncClient(
        base_url=base_url, headers={TOKEN_HEADER: token}, timeout=60, trust_env=False
    ) as http:
        gate = asyncio.Semaphore(32)

        async def one(name: str) -> tuple[str, str]:
            async with gate:
                body = (await http.get("/v1/cert/dv", params={"domains": name})).json()
            item = body["data"]["items"][0]
            return name, item["value"].split(".", 1)[0]

        return dict(await asyncio.gather(*(one(name) for name in names)))


async def certok_orders(
    base_url: str, token: str, names: Sequence[str], tickets: Tickets, in_flight: int, run: Run
) -> None:
    limits = httpx.Limits(max_connections=in_flight + 8, max_keepalive_connections=in_flight + 8)
    timeout = httpx.Timeout(APPLY_WAIT_SECONDS * 6)
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={TOKEN_HEADER: token},
        timeout=timeout,
        limits=limits,
        trust_env=False,
    ) as http:

        async def slot(index: int) -> None:
            name = names[index % len(names)]
            while tickets.take():
                started = time.monotonic()
                try:
                    await certok_issue(http, name, run)
                except Exception as error:  # counted, and the slot goes on
                    run.done(started, f"{type(error).__name__}: {error}")
                else:
                    run.done(started)

        run.started = time.monotonic()
        await asyncio.gather(*(slot(i) for i in range(in_flight)))


async def certok_issue(http: httpx.AsyncClient, name: str, run: Run) -> None:
    dv = await get_json(http, "/v1/cert/dv", {"domains": name}, run)
    code = (dv.get("data") or {}).get("code")
    if not code:
        raise RuntimeError(f"dv gave no code: {dv.get('msg')}")
    params = {"code": code, "issuer": "letsencrypt"}
    while True:
        body = await get_json(http, "/v1/cert/apply", params, run)
        data = body.get("data") or {}
        if data.get("status") != "pending":
            break
    if data.get("status") != "issued":
        raise RuntimeError(f"apply: {body.get('msg')}")


async def get_json(
    http: httpx.AsyncClient, path: str, params: dict[str, str], run: Run
) -> dict[str, Any]:
    """GET and decode; once more when the server closed a kept-alive connection just as it was
    reused (uvicorn closes idle ones after 5 s: a race every HTTP client meets, not a failure
    of the request). Both GETs are safe to repeat: a second dv only makes another code."""
    try:
        response = await http.get(path, params=params)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        run.retries += 1
        response = await http.get(path, params=params)
    return dict(response.json())


def run_certok(
    rig: Rig, workdir: Path, args: argparse.Namespace, names: Sequence[str], probe: FloorClient
) -> tuple[Run, dict[str, str], str]:
    """certok's run; also returns the labels it allocated and its settings, for the floor."""
    settings = {
        "worker_threads": args.worker_threads,
        "worker_max_orders": args.worker_max_orders,
        "rate_limit_dv_per_minute": 0,
        "rate_limit_apply_per_minute": 0,
        "apply_wait_seconds": APPLY_WAIT_SECONDS,
        "acme_poll_seconds": args.poll,
    }
    server = CertokServer.for_rig(rig, workdir, **settings)
    described = " ".join(
        f"{key}={value}" for key, value in server.env.items() if key.upper() in _SHOWN_SETTINGS
    )
    server.start()
    try:
        token = server.create_tenant("bench")
        labels = asyncio.run(dv_labels(server.base_url, token, names))
        records = []
        for name, label in labels.items():
            relative = name.removesuffix(".customer.test")
            records += [
                f"{relative} IN A 127.0.0.1",
                f"_acme-challenge.{relative} IN CNAME {label}.{rig.certok_zone}.",
            ]
        rig.set_customer_records(records)
        warm = Run("certok warm-up")
        asyncio.run(certok_orders(server.base_url, token, names[:1], Tickets(1), 1, warm))
        if warm.failures:
            raise SystemExit(f"certok's warm-up order failed: {warm.failures[0]}")
        run = Run("certok serve")
        print(f"{BENCH}: certok serve, {args.orders} orders, {args.in_flight} in flight",
              flush=True)  # fmt: skip
        tickets = Tickets(args.orders)

        def end_run() -> None:
            tickets.cancel()
            server.stop()  # open requests fail at once instead of waiting for Pebble

        label = labels[names[0]]
        with (
            CpuMeter(server.pid) as certok_cpu,
            CpuMeter(rig.service_pids["pebble"]) as pebble_cpu,
            _SelfCpu() as load_cpu,
            PebbleWatch(run, probe, end_run),
            DnsProbe(rig.certok_dns_port, f"{label}.{rig.certok_zone}.") as dns_probe,
        ):
            asyncio.run(certok_orders(server.base_url, token, names, tickets, args.in_flight, run))
        if run.wedged:
            return run, labels, described
        run.cpu = {
            "certok": certok_cpu.percent,
            "pebble": pebble_cpu.percent,
            "load generator": load_cpu.percent,
        }
        run.extra = (
            acme_order_counts(workdir / "data" / "certok.db", server.log_text())
            + "; "
            + dns_probe.describe()
        )
        return run, labels, described
    finally:
        server.stop()


def acme_order_counts(database: Path, log: str) -> str:
    """How many ACME orders certok needed per order, and its retry warnings: more than one
    ACME order, or any retry, means time spent on failed validations, not on issuing."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        orders, acme_orders = db.execute("SELECT count(*), sum(acme_orders) FROM orders").fetchone()
    retries = log.count("retrying at")
    failed_validations = log.count("validation failed")
    summary = (
        f"{acme_orders} ACME orders for {orders} orders, "
        f"{retries} retry warnings ({failed_validations} failed validations) in certok's log"
    )
    first = next((line for line in log.splitlines() if "retrying at" in line), None)
    if first is not None:
        summary += f" (first: {first.split(': ', 1)[-1][:300]})"
    return summary


_SHOWN_SETTINGS = {
    "CERTOK_WORKER_THREADS",
    "CERTOK_WORKER_MAX_ORDERS",
    "CERTOK_RATE_LIMIT_DV_PER_MINUTE",
    "CERTOK_RATE_LIMIT_APPLY_PER_MINUTE",
    "CERTOK_APPLY_WAIT_SECONDS",
    "CERTOK_ACME_POLL_SECONDS",
}


class DnsProbe:
    """Asks certok's DNS server for TXT at one delegated label every 50 ms while the run lasts:
    how long its answers take while the same process serves the API and drives orders (Pebble's
    resolver gives up after a few seconds, and the validation fails)."""

    def __init__(self, port: int, qname: str) -> None:
        self._port = port
        self._qname = qname
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self.latencies: list[float] = []
        self.timeouts = 0

    def __enter__(self) -> DnsProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _probe(self) -> None:
        while not self._stop.wait(0.05):
            query = dns.message.make_query(self._qname, "TXT")
            started = time.perf_counter()
            try:
                dns.query.udp(query, "127.0.0.1", port=self._port, timeout=DNS_PROBE_TIMEOUT)
            except dns.exception.Timeout:
                self.timeouts += 1
                continue
            self.latencies.append(time.perf_counter() - started)

    def describe(self) -> str:
        ordered = sorted(self.latencies)
        if not ordered:
            return f"certok's DNS answered no probe ({self.timeouts} timeouts)"
        return (
            f"certok's DNS while loaded: p50 {statistics.median(ordered) * 1e3:.1f} ms, "
            f"p99 {percentile(ordered, 0.99) * 1e3:.0f} ms, max {ordered[-1] * 1e3:.0f} ms, "
            f"{self.timeouts} of {len(ordered) + self.timeouts} probes unanswered in "
            f"{DNS_PROBE_TIMEOUT:g} s"
        )


class _SelfCpu:
    """CPU of this process (the load generator, or the floor itself) as % of one core."""

    def __enter__(self) -> _SelfCpu:
        times = os.times()
        self._cpu = times.user + times.system
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        times = os.times()
        wall = time.monotonic() - self._wall
        self.percent: float | None = 100.0 * (times.user + times.system - self._cpu) / wall


# --- the floor -----------------------------------------------------------------------------------


def run_floor(
    rig: Rig, args: argparse.Namespace, labels: dict[str, str], probe: FloorClient
) -> Run:
    names = list(labels)
    with ChallengeDns(rig, labels.values()) as dns:
        # Pebble answers in milliseconds: a short timeout ends a wedged run sooner.
        floor = FloorClient.register(rig, timeout=FLOOR_TIMEOUT_SECONDS)
        floor.issue([names[0]], dns, labels[names[0]])  # warm-up
        print(f"{BENCH}: floor, {args.orders} orders, {args.in_flight} threads", flush=True)
        with ThreadPoolExecutor(max_workers=16) as pool:
            clients = list(pool.map(lambda _: floor.another(rig), range(args.in_flight)))
        run = Run("floor")
        tickets = Tickets(args.orders)

        def slot(index: int) -> None:
            name = names[index % len(names)]
            client = clients[index]
            while tickets.take():
                started = time.monotonic()
                try:
                    client.issue([name], dns, labels[name])
                except Exception as error:  # counted, and the slot goes on
                    run.done(started, f"{type(error).__name__}: {error}")
                else:
                    run.done(started)

        with (
            CpuMeter(rig.service_pids["pebble"]) as pebble_cpu,
            _SelfCpu() as self_cpu,
            PebbleWatch(run, probe, tickets.cancel),
        ):
            run.started = time.monotonic()
            threads = [
                threading.Thread(target=slot, args=(i,), daemon=True) for i in range(args.in_flight)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        run.cpu = {"floor (this process)": self_cpu.percent, "pebble": pebble_cpu.percent}
        return run


# --- report --------------------------------------------------------------------------------------


def _cpu_note(run: Run) -> str:
    parts = [f"{who} {value:.0f}%" for who, value in run.cpu.items() if value is not None]
    return "CPU (100% = one core): " + ", ".join(parts) if parts else ""


def cpu_ms_per_order(run: Run) -> float | None:
    """CPU time the client under test (the first meter: certok serve, or the floor's process)
    spent per issued order: the figure a noisy, shared machine disturbs least."""
    percent = next(iter(run.cpu.values()), None)
    if percent is None or not run.finished:
        return None
    return 10.0 * percent * run.wall / len(run.finished)


def build_report(
    certok_runs: list[Run], floor_runs: list[Run], args: argparse.Namespace, settings: str
) -> Report:
    report = Report()
    best_floor = max(floor_runs, key=lambda r: r.rate) if floor_runs else None
    best_certok = max(certok_runs, key=lambda r: r.rate) if certok_runs else None
    for label, runs in (("floor: acme library client, threads", floor_runs),
                        ("certok serve: dv + apply until issued", certok_runs)):  # fmt: skip
        for index, run in enumerate(runs):
            ordered = sorted(run.latencies)
            notes = [
                f"{len(run.finished)} issued, {len(run.failures)} failed",
                f"{args.in_flight} in flight over {args.names} names",
                f"middle half {run.middle_rate:.1f} orders/s",
                f"wall {run.wall:.1f} s",
            ]
            if run.retries:
                notes.insert(1, f"{run.retries} request(s) resent after a closed keep-alive")
            if run.wedged:
                partial = (
                    f"PARTIAL: Pebble wedged in every one of {run.thrown_away + 1} tries; "
                    f"rate over the {len(run.finished)} orders before it did"
                )
                notes.insert(0, partial)
            elif run.thrown_away:
                notes.append(f"{run.thrown_away} earlier run(s) thrown away: Pebble wedged")
            if len(runs) > 1:
                notes.insert(0, f"round {index + 1} of {len(runs)}")
            if run.failures:
                notes.append(f"first failure: {run.failures[0][:100]}")
            if run.who == "certok serve":
                notes += [run.extra, settings]
            per_order = cpu_ms_per_order(run)
            if per_order is not None:
                notes.append(f"{per_order:.0f} ms CPU per order ({next(iter(run.cpu))})")
            cpu = _cpu_note(run)
            if cpu:
                notes.append(cpu)
            report.measurements.append(
                Measurement(
                    bench=BENCH,
                    case=label,
                    rate=run.rate,
                    rate_unit="orders/s",
                    ratio=run.rate / best_floor.rate if best_floor and best_floor.rate else None,
                    ratio_of="floor",
                    latency={"p50": statistics.median(ordered), "p99": percentile(ordered, 0.99)}
                    if ordered
                    else {},
                    cpu_percent=next(iter(run.cpu.values()), None),
                    note="; ".join(notes),
                )
            )
    if best_certok is not None:
        relative = (
            f" ({best_certok.rate / best_floor.rate:.2f}x the floor's "
            f"{best_floor.rate:.1f} orders/s)"
            if best_floor and best_floor.rate
            else ""
        )
        report.targets.append(
            Target(
                BENCH,
                f">= {TARGET_ORDERS_PER_SECOND:g} orders/s with {args.in_flight} in flight",
                f"{best_certok.rate:.1f} orders/s{relative}, {len(best_certok.failures)} failed",
                best_certok.rate >= TARGET_ORDERS_PER_SECOND and not best_certok.failures,
            )
        )
    return report


def fresh_pebble(rig: Rig) -> FloorClient:
    """Restart Pebble before every run, so each client meets an empty store and a wedged Pebble
    is replaced; the probe account the run's PebbleWatch uses (Pebble forgets accounts)."""
    rig.restart_pebble(which="plain")
    return FloorClient.register(rig, timeout=PROBE_TIMEOUT_SECONDS)


def until_not_wedged(attempt: Callable[[], Run], tries: int) -> Run:
    """Run `attempt` until Pebble does not wedge during it, at most `tries` times; the run, with
    how many were thrown away. If every try wedged, the one that got furthest (its rate is over
    the orders finished before Pebble stopped answering, and the report says so)."""
    wedged: list[Run] = []
    for _ in range(tries):
        run = attempt()
        if not run.wedged:
            run.thrown_away = len(wedged)
            return run
        wedged.append(run)
    furthest = max(wedged, key=lambda r: len(r.finished))
    furthest.thrown_away = len(wedged) - 1
    return furthest


def run(args: argparse.Namespace) -> Report:
    clean_environment()
    print(f"{BENCH}: {describe_machine()}", flush=True)
    names = names_for(args.names)
    certok_runs: list[Run] = []
    floor_runs: list[Run] = []
    settings = ""
    labels: dict[str, str] = {}
    with Rig() as rig, tempfile.TemporaryDirectory(prefix="certok-bench-throughput-") as tmp:
        attempts = 0

        def certok_attempt() -> Run:
            nonlocal attempts, labels, settings
            attempts += 1
            probe = fresh_pebble(rig)
            workdir = Path(tmp) / f"certok-{attempts}"
            run, labels, settings = run_certok(rig, workdir, args, names, probe)
            return run

        def floor_attempt() -> Run:
            return run_floor(rig, args, labels, fresh_pebble(rig))

        for _ in range(args.rounds):
            certok = until_not_wedged(certok_attempt, args.tries)
            certok_runs.append(certok)
            print(f"{BENCH}: certok {certok.rate:.1f} orders/s", flush=True)
            floor = until_not_wedged(floor_attempt, args.tries)
            floor_runs.append(floor)
            print(f"{BENCH}: floor {floor.rate:.1f} orders/s", flush=True)
    report = build_report(certok_runs, floor_runs, args, settings)
    report.commands.append(shlex.join([sys.executable, str(Path(__file__).resolve()),
                                       *sys.argv[1:]]))  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=600, help="orders per client (600)")
    parser.add_argument("--in-flight", type=int, default=200, help="orders in flight (200)")
    parser.add_argument("--names", type=int, default=200, help="distinct names (200)")
    parser.add_argument("--worker-threads", type=int, default=32, help="certok (32)")
    parser.add_argument("--worker-max-orders", type=int, default=400, help="certok (400)")
    parser.add_argument("--poll", type=float, default=0.1, help="ACME poll interval, both (0.1)")
    parser.add_argument("--rounds", type=int, default=1, help="certok, floor, certok, ... (1)")
    parser.add_argument(
        "--tries", type=int, default=4, help="runs per client while Pebble wedges, at most (4)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here (run_all.py)")
    args = parser.parse_args()
    report = run(args)
    print()
    print_report(report)
    report.write(args.json)


if __name__ == "__main__":
    main()
