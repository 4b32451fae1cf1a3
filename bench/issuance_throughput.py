"""Sustained issuance rate with many orders in flight: certok next to the floor, same Pebble.

    python bench/issuance_throughput.py [--orders 600] [--in-flight 200] [--names 200]
                                        [--worker-threads 8] [--worker-max-orders 400]
                                        [--processes 3] [--postgres URL]
                                        [--rounds 1] [--json FILE]

Starts the rig (Pebble with PEBBLE_VA_NOSLEEP=1, nonce reject 0, authz reuse 0), then:
- certok: one `certok serve` (SQLite, `processes` / `worker_threads` / `worker_max_orders` from
  the flags: by default a DNS process and two API + worker processes, the
  per-tenant rate limits off, `acme_poll_seconds` = the floor's poll); `--names` names
  n0..n<names-1>.customer.test, each with an A record and its `_acme-challenge` CNAME to the
  label certok's dv gave for it. `--in-flight` client slots (one asyncio task each, slot i
  always orders name i % names) each loop: `GET /v1/cert/dv` (a code per call), then
  `GET /v1/cert/apply` with it until the answer is not `pending` (the API holds each request
  up to `apply_wait_seconds=10`), until `--orders` certificates are issued. The client is
  aiohttp (the `bench` extra: `pip install -c constraints.txt -e '.[bench]'`): it shares the
  two cores with certok and Pebble, so it has to be cheap;
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
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import dns.exception
import dns.message
import dns.query
import sqlalchemy
import sqlalchemy.engine

try:
    import aiohttp
except ImportError:  # the `bench` extra
    raise SystemExit(
        "issuance_throughput.py needs aiohttp, its load generator: "
        "pip install -c constraints.txt -e '.[bench]'"
    ) from None

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CpuMeter,
    Measurement,
    Report,
    SelfCpuMeter,
    Target,
    bench_parser,
    clean_environment,
    describe_machine,
    finish,
    invocation,
    percentile,
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
# Below uvicorn's keep-alive (5 s, certok's default): the client drops an idle connection before
# the server closes it under a new request.
KEEPALIVE_SECONDS = 4.0
LOAD_GENERATOR = "load generator"  # this process, in the certok run: its CPU meter's name
POSTGRES_BACKENDS = "postgres backends"  # the server's processes for the run's database


# --- results -------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run of one client: when each order finished and how long it took."""

    who: str
    started: float = 0.0
    finished: list[float] = field(default_factory=list)  # monotonic completion times
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retries: int = 0  # requests sent again on a fresh connection (see CertokApi.get_json)
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

    def milestones(self) -> str:
        """When the first, the 25%, the 75% and the last order finished (seconds into the
        run): where the ramp-up and the tail lost time against the middle half."""
        ordered = sorted(self.finished)
        if not ordered:
            return "-"
        marks = [ordered[0], ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]]
        return "/".join(f"{mark - self.started:.1f}" for mark in [*marks, ordered[-1]]) + " s"

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


class EveryWhileRunning:
    """Calls `tick` every `interval` seconds on a daemon thread while the with-block runs, until
    a tick returns True (done)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self.tick():
                return

    def tick(self) -> bool:
        raise NotImplementedError


class PostgresBackendsCpu(EveryWhileRunning):
    """CPU of the PostgreSQL server's backends serving one database (the run's), as a
    percentage of one core: certok's process group does not hold them. Backends are found by
    their process title (`postgres: <cluster>: <user> <database> <client> ...`) every
    `interval`; one that starts during the run counts from zero, and one that exits counts
    up to its last sample (certok's pool keeps its connections, so few do)."""

    def __init__(self, database: str | None, interval: float = 0.25) -> None:
        super().__init__(interval)
        self._database = database
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._wall = 0.0
        self.percent: float | None = None

    def _sample(self) -> dict[int, float]:
        seen: dict[int, float] = {}
        if self._database is None:
            return seen
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    title = handle.read().decode(errors="replace").split()
                if len(title) < 4 or title[0] != "postgres:" or title[3] != self._database:
                    continue
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue  # exited while we looked
            fields = stat[stat.rindex(")") + 2 :].split()
            seen[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return seen

    def __enter__(self) -> Self:
        self._first = self._sample()
        self._wall = time.monotonic()
        return super().__enter__()

    def tick(self) -> bool:
        for pid, seconds in self._sample().items():
            self._first.setdefault(pid, 0.0)
            self._last[pid] = seconds
        return False

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.tick()
        wall = time.monotonic() - self._wall
        if self._database is not None and wall > 0:
            used = sum(seconds - self._first[pid] for pid, seconds in self._last.items())
            self.percent = 100.0 * used / wall


class PebbleWatch(EveryWhileRunning):
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
        super().__init__(interval=1.0)
        self._run = run
        self._probe = probe
        self._on_wedged = on_wedged
        self._quiet = quiet
        self._entered = time.monotonic()

    def __enter__(self) -> Self:
        self._entered = time.monotonic()
        return super().__enter__()

    def tick(self) -> bool:
        last = max(self._run.last_progress, self._entered)
        if time.monotonic() - last < self._quiet or self._probe.account_answers():
            return False
        self._run.wedged = True
        print(f"{BENCH}: Pebble stopped answering (its store lock is wedged); "
              "this run will be repeated", flush=True)  # fmt: skip
        self._on_wedged()
        return True


# --- certok --------------------------------------------------------------------------------------


def names_for(count: int) -> list[str]:
    return [f"n{i}.customer.test" for i in range(count)]


def load_generator() -> str:
    """The client the certok run's load comes from, for the report."""
    return f"aiohttp {aiohttp.__version__}"


async def _count_connection(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    context.trace_request_ctx.connections += 1


def _connection_counter() -> aiohttp.TraceConfig:
    """Counts the connections each request went out on (its `trace_request_ctx`)."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_count_connection)
    trace.on_connection_reuseconn.append(_count_connection)
    return trace


class CertokApi:
    """certok's API as the load generator uses it: one aiohttp session, up to `connections`
    kept-alive connections.

    aiohttp, not httpx (certok's own client): with 200 connections httpx's pool cost this
    process 17-30 ms of CPU per order (~5 ms per request), up to half of what certok itself
    spent, on the same two cores as certok and Pebble; aiohttp costs ~2 ms per order.
    """

    def __init__(self, base_url: str, token: str, *, connections: int, timeout: float) -> None:
        self._base_url = base_url
        self._headers = {TOKEN_HEADER: token}
        self._connections = connections
        self._timeout = timeout
        self.resent = 0

    async def __aenter__(self) -> Self:
        # aiohttp binds its session to the running loop: made here, not in __init__.
        self._session = aiohttp.ClientSession(
            self._base_url,
            headers=self._headers,
            connector=aiohttp.TCPConnector(
                limit=self._connections, keepalive_timeout=KEEPALIVE_SECONDS
            ),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            trace_configs=[_connection_counter()],
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def get_json(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """GET and decode. When the server closes a kept-alive connection just as it is reused
        (a race every HTTP client meets, not a failure of the request), aiohttp (>= 3.9) sends
        an idempotent request once more on a fresh connection; `resent` counts those. Both
        GETs here are safe to repeat: a second dv only makes another code."""
        attempts = SimpleNamespace(connections=0)
        try:
            async with self._session.get(
                path, params=params, trace_request_ctx=attempts
            ) as response:
                body = await response.read()
        finally:
            if attempts.connections > 1:
                self.resent += 1
        return dict(json.loads(body))


async def dv_labels(base_url: str, token: str, names: Sequence[str]) -> dict[str, str]:
    """name → label certok allocated for it (its dv answer before the CNAME exists)."""
    async with CertokApi(base_url, token, connections=32, timeout=60) as api:

        async def one(name: str) -> tuple[str, str]:
            body = await api.get_json("/v1/cert/dv", {"domains": name})
            item = body["data"]["items"][0]
            return name, item["value"].split(".", 1)[0]

        return dict(await asyncio.gather(*(one(name) for name in names)))


async def certok_orders(
    base_url: str, token: str, names: Sequence[str], tickets: Tickets, in_flight: int, run: Run
) -> None:
    async with CertokApi(
        base_url, token, connections=in_flight + 8, timeout=APPLY_WAIT_SECONDS * 6
    ) as api:

        async def slot(index: int) -> None:
            name = names[index % len(names)]
            while tickets.take():
                started = time.monotonic()
                try:
                    await certok_issue(api, name)
                except Exception as error:  # counted, and the slot goes on
                    run.done(started, f"{type(error).__name__}: {error}")
                else:
                    run.done(started)

        run.started = time.monotonic()
        try:
            await asyncio.gather(*(slot(i) for i in range(in_flight)))
        finally:
            run.retries += api.resent


async def certok_issue(api: CertokApi, name: str) -> None:
    dv = await api.get_json("/v1/cert/dv", {"domains": name})
    code = (dv.get("data") or {}).get("code")
    if not code:
        raise RuntimeError(f"dv gave no code: {dv.get('msg')}")
    params = {"code": code, "issuer": "letsencrypt"}
    while True:
        body = await api.get_json("/v1/cert/apply", params)
        data = body.get("data") or {}
        if data.get("status") != "pending":
            break
    if data.get("status") != "issued":
        raise RuntimeError(f"apply: {body.get('msg')}")


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
        "processes": args.processes,
        # One tenant makes every order, for names it repeats: measured without the sharing
        # limits (docs/quotas.md), which would queue it past Let's Encrypt's budget and join
        # its repeated name sets. Their cost per order (a ledger row) is still paid.
        "tenant_max_pending_orders": 0,
        "tenant_acme_orders_per_window": 0,
        "order_join_seconds": 0,
        "issuers__letsencrypt__new_orders_per_window": 1_000_000_000,
    }
    database_url = fresh_postgres_database(args.postgres, workdir.name) if args.postgres else None
    if database_url:
        settings["database_url"] = database_url
        # One node: its DNS process confirms each reload, as on SQLite (certok's default for
        # PostgreSQL assumes several nodes and waits two refresh intervals before answering).
        settings["challenge_propagation_seconds"] = 0
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
            SelfCpuMeter() as load_cpu,
            PostgresBackendsCpu(_database_name(database_url)) as postgres_cpu,
            PebbleWatch(run, probe, end_run),
            DnsProbe(rig.certok_dns_port, f"{label}.{rig.certok_zone}.") as dns_probe,
        ):
            asyncio.run(certok_orders(server.base_url, token, names, tickets, args.in_flight, run))
        if run.wedged:
            return run, labels, described
        run.cpu = {
            "certok": certok_cpu.percent,
            "pebble": pebble_cpu.percent,
            LOAD_GENERATOR: load_cpu.percent,
        }
        if postgres_cpu.percent is not None:
            run.cpu[POSTGRES_BACKENDS] = postgres_cpu.percent
        run.extra = (
            acme_order_counts(
                database_url or f"sqlite:///{workdir / 'data' / 'certok.db'}", server.log_text()
            )
            + "; "
            + dns_probe.describe()
        )
        return run, labels, described
    finally:
        server.stop()
        if database_url and args.postgres:
            drop_postgres_database(args.postgres, database_url)


def _database_name(url: str | None) -> str | None:
    return sqlalchemy.engine.make_url(url).database if url else None


def acme_order_counts(database_url: str, log: str) -> str:
    """How many ACME orders certok needed per order, and its retry warnings: more than one
    ACME order, or any retry, means time spent on failed validations, not on issuing."""
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as db:
            orders, acme_orders = db.execute(
                sqlalchemy.text("SELECT count(*), sum(acme_orders) FROM orders")
            ).one()
            transactions = postgres_transactions(db) if db.dialect.name == "postgresql" else ""
    finally:
        engine.dispose()
    retries = log.count("retrying at")
    failed_validations = log.count("validation failed")
    summary = (
        f"{acme_orders} ACME orders for {orders} orders, "
        f"{retries} retry warnings ({failed_validations} failed validations) in certok's log"
    )
    if transactions:
        summary += f"; {transactions} per order"
    first = next((line for line in log.splitlines() if "retrying at" in line), None)
    if first is not None:
        summary += f" (first: {first.split(': ', 1)[-1][:300]})"
    return summary


def postgres_transactions(db: sqlalchemy.Connection) -> str:
    """The run's committed and rolled-back transactions per order, from the server's counters
    for this database (every read session outside a transaction ends in a ROLLBACK; each
    transaction costs psycopg a BEGIN round trip of its own)."""
    orders = db.scalar(sqlalchemy.text("SELECT count(*) FROM orders")) or 1
    commits, rollbacks = db.execute(
        sqlalchemy.text(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
    ).one()
    return f"PostgreSQL: {commits / orders:.1f} commits, {rollbacks / orders:.1f} rollbacks"


def fresh_postgres_database(server_url: str, suffix: str) -> str:
    """An empty database on the PostgreSQL at `server_url` for one run (dropped first if left
    from an earlier run, and after the run by `drop_postgres_database`): its URL."""
    url = sqlalchemy.engine.make_url(server_url)
    # The process id too: two benches on one server (two worktrees) must not share a database.
    name = f"certok_bench_{os.getpid()}_{suffix.replace('-', '_')}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as db:
            db.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            db.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(server_url: str, database_url: str) -> None:
    """Drop a run's database once its figures are read: each bench process makes its own."""
    name = sqlalchemy.engine.make_url(database_url).database
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as db:
            db.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


_SHOWN_SETTINGS = {
    "CERTOK_PROCESSES",
    "CERTOK_WORKER_THREADS",
    "CERTOK_WORKER_MAX_ORDERS",
    "CERTOK_RATE_LIMIT_DV_PER_MINUTE",
    "CERTOK_RATE_LIMIT_APPLY_PER_MINUTE",
    "CERTOK_APPLY_WAIT_SECONDS",
    "CERTOK_ACME_POLL_SECONDS",
    "CERTOK_CHALLENGE_PROPAGATION_SECONDS",
}


class DnsProbe(EveryWhileRunning):
    """Asks certok's DNS server for TXT at one delegated label every 50 ms while the run lasts:
    how long its answers take while the same process serves the API and drives orders (Pebble's
    resolver gives up after a few seconds, and the validation fails)."""

    def __init__(self, port: int, qname: str) -> None:
        super().__init__(interval=0.05)
        self._port = port
        self._qname = qname
        self.latencies: list[float] = []
        self.timeouts = 0

    def tick(self) -> bool:
        query = dns.message.make_query(self._qname, "TXT")
        started = time.perf_counter()
        try:
            dns.query.udp(query, "127.0.0.1", port=self._port, timeout=DNS_PROBE_TIMEOUT)
        except dns.exception.Timeout:
            self.timeouts += 1
        else:
            self.latencies.append(time.perf_counter() - started)
        return False

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
            SelfCpuMeter() as self_cpu,
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


def cpu_ms_per_order(run: Run, who: str | None = None) -> float | None:
    """CPU time `who` (by default the client under test, the first meter: certok serve, or the
    floor's process) spent per issued order: the figure a noisy, shared machine disturbs least."""
    percent = run.cpu.get(who) if who is not None else next(iter(run.cpu.values()), None)
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
                f"completions at {run.milestones()}",
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
            load_per_order = cpu_ms_per_order(run, LOAD_GENERATOR)
            if load_per_order is not None:
                notes.append(
                    f"{load_per_order:.1f} ms CPU per order (load generator: {load_generator()})"
                )
            postgres_per_order = cpu_ms_per_order(run, POSTGRES_BACKENDS)
            if postgres_per_order is not None:
                notes.append(f"{postgres_per_order:.1f} ms CPU per order ({POSTGRES_BACKENDS})")
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
    report.commands.append(invocation(__file__))
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--orders", type=int, default=600, help="orders per client (600)")
    parser.add_argument("--in-flight", type=int, default=200, help="orders in flight (200)")
    parser.add_argument("--names", type=int, default=200, help="distinct names (200)")
    parser.add_argument(
        "--worker-threads", type=int, default=8, help="certok (8, certok's default)"
    )
    parser.add_argument("--worker-max-orders", type=int, default=400, help="certok (400)")
    parser.add_argument(
        "--processes", type=int, default=3, help="certok: 1 DNS + N-1 API/worker processes (3)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run certok on a fresh database on this PostgreSQL server instead of SQLite "
        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)",
    )
    parser.add_argument("--poll", type=float, default=0.1, help="ACME poll interval, both (0.1)")
    parser.add_argument("--rounds", type=int, default=1, help="certok, floor, certok, ... (1)")
    parser.add_argument(
        "--tries", type=int, default=4, help="runs per client while Pebble wedges, at most (4)"
    )
    args = parser.parse_args()
    finish(run(args), args.json)


if __name__ == "__main__":
    main()
