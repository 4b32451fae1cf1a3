"""How `certok serve` behaves as its database grows: memory, DNS rate and API latency per size.

    python bench/growth.py [--orders 1000,10000,100000] [--delegations 1000,10000,10000]
                           [--duration 8] [--connections 16] [--refresh-samples 300]
                           [--keep DIR] [--json FILE]

Needs `dnsperf` and `wrk` (`apt-get install dnsperf wrk`). One SQLite database grows stage by
stage (`--orders` and `--delegations` give the totals per stage, same length): before each
stage the missing rows are written straight into the database with certok's own models and
keys: delegations `d<i>.growth.test` (labels as certok derives them), issued orders (small
self-signed ECC certificates, keys encrypted with the data dir's secret.key) each behind a
verification code, as `/v1/cert/apply` would have left them. Then, per stage, the real
`certok serve` (pinned to one core, SQLite in a temp dir, issuers pointed at a closed port,
per-tenant rate limits off) is started and measured, with the load generators on the other
core:
- start-up time (process start to `GET /healthz` = 200), RSS after start and idle CPU;
- DNS: dnsperf at max rate over TXT at every delegated label in random case plus 10%
  NXDOMAIN names (bench/dns_qps.py's query file and dnsperf runner), after two warm-up passes;
- apply's database path (what `/v1/cert/apply` does when its cache of issued answers misses:
  `read_codes`, the code's row and its order's view), timed in this process for random stored
  codes before certok starts: how the queries alone scale with the table sizes;
- the DNS zone refresh (what the DNS process runs about once per order under load: the
  delegations' fingerprint, the pending TXT rows, the answer index), timed in this process in
  CPU time with 100 pending dns-01 rows, one value changed before each refresh;
- `GET /v1/cert/apply?code=<one code>`, polled over and over (the answer cached after the
  first poll): what does not depend on the size, so it shows how much of a change between
  stages is this shared machine's noise;
- `GET /v1/cert/apply?code=<random stored code>`: wrk `--latency` with a Lua script picking a
  code uniformly from all stored orders (p50, p99, req/s), after a warm-up run: once there
  are more codes than certok's cache of issued answers holds, most polls take the database
  path;
- `GET /v1/cert/dv?domains=<random delegated name>`: the same with names; a stand-in resolver
  (bench/_stub_resolver.py, on the load core) answers each `_acme-challenge` CNAME with the
  name's label, so every dv runs its whole path and stores a new verification code, as in
  production;
- RSS (and peak RSS) after the load, the database file's size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _stub_resolver
from _common import (
    Cores,
    CpuMeter,
    Measurement,
    Processes,
    Report,
    Target,
    bench_parser,
    certok_serve,
    clean_environment,
    describe_machine,
    finish,
    free_port,
    invocation,
    percentile,
    require_tools,
    start_process,
)
from _wrk import WrkResult, run_wrk
from api_rps import certok_env, self_signed
from dns_qps import Load, ZoneData, run_dnsperf, warm_up, write_query_file
from issuance_throughput import drop_postgres_database, fresh_postgres_database

from tests.rig.certok_server import CertokServer

BENCH = "growth"
ZONE = "acme.bench.test"  # api_rps.certok_env's zone
NAME_SUFFIX = "growth.test"
TOKEN_HEADER = "httpsok-token"
TENANT = "growth"
CERTIFICATE_POOL = 16  # distinct certificates and keys shared round-robin by the orders
INSERT_CHUNK = 20_000
STARTUP_TIMEOUT = 120.0
IDLE_SECONDS = 3.0
WARMUP_SECONDS = 2.0
DNSPERF_OUTSTANDING = 300
PENDING_CHALLENGES = 100  # dns-01 rows present while zone_refresh measures
FILLER_STATE = "filler.json"  # with --keep: what a later run needs to reuse a stage's database


# --- filling the database ---------------------------------------------------------------------


def delegated_name(index: int) -> str:
    return f"d{index}.{NAME_SUFFIX}"


STORED_CODE_PREFIX = "c0de"  # stored_code's first 4 hex digits (order ids below 16**12)


def stored_code(order_id: int) -> str:
    """The verification code of the stored order `order_id`: 16 hex digits, like certok's."""
    return f"{0xC0DE000000000000 + order_id:016x}"


@dataclass
class Filler:
    """Adds delegations and issued orders (each with its certificate record, as the issuing
    save leaves them) to certok's database with certok's own modules."""

    data_dir: Path
    database_url: str | None = None
    delegations: int = 0
    orders: int = 0
    labels: dict[str, str] = field(default_factory=dict)  # name → label
    first_order_id: int | None = None

    def grow(self, delegations: int, orders: int) -> float:
        """Bring the database up to these totals; seconds taken."""
        from sqlalchemy import func, insert, select

        from certok.assembly import LABEL_KEY_PURPOSE
        from certok.crypto import certificate_subject
        from certok.db.engine import transaction
        from certok.db.models import (
            Certificate,
            CertificateName,
            CertificateSecret,
            Delegation,
            Order,
            VerificationCode,
        )
        from certok.domains.delegations import compute_label
        from certok.order_states import ISSUED
        from certok.orders.service import order_key_owner
        from certok.persistence import open_store
        from certok.tenants.service import find_tenant

        started = time.monotonic()
        store = open_store(settings_for(self.data_dir, self.database_url))
        try:
            label_key = store.box.derive(LABEL_KEY_PURPOSE)
            now = dt.datetime.now(dt.UTC)
            with transaction(store.sessions) as session:
                tenant_id = find_tenant(session, TENANT).id
                rows = []
                for index in range(self.delegations, delegations):
                    name = delegated_name(index)
                    label = compute_label(label_key, tenant_id, name)
                    self.labels[name] = label
                    rows.append(
                        {"tenant_id": tenant_id, "base_name": name, "label": label,
                         "created_at": now}
                    )  # fmt: skip
                for chunk in _chunks(rows):
                    session.connection().execute(insert(Delegation.__table__), chunk)
            self.delegations = max(self.delegations, delegations)

            pool = [self_signed(f"pool{i}.{NAME_SUFFIX}") for i in range(CERTIFICATE_POOL)]
            subjects = [certificate_subject(certificate) for certificate, *_ in pool]
            with transaction(store.sessions) as session:
                next_id = (session.scalar(select(func.max(Order.id))) or 0) + 1
            for first in range(self.orders, orders, INSERT_CHUNK):
                count = min(INSERT_CHUNK, orders - first)
                order_rows, code_rows, certificate_rows = [], [], []
                secret_rows, name_rows = [], []
                for offset in range(count):
                    order_id = next_id + first - self.orders + offset
                    certificate, key_pem, not_before, not_after = pool[order_id % CERTIFICATE_POOL]
                    name = delegated_name(order_id % max(1, self.delegations))
                    key_encrypted = store.box.encrypt(key_pem.encode(), order_key_owner(order_id))
                    order_rows.append(
                        {
                            "id": order_id,
                            "tenant_id": tenant_id,
                            "issuer": "letsencrypt",
                            "algorithm": "ECC",
                            "challenge_type": "dns",
                            "domains": name,
                            "state": ISSUED,
                            "attempts": 1,
                            "acme_orders": 1,
                            "certificate_pem": certificate,
                            "subject": subjects[order_id % CERTIFICATE_POOL],
                            "key_encrypted": key_encrypted,
                            "not_before": not_before,
                            "not_after": not_after,
                            "next_attempt_at": now,
                            "deadline_at": now + dt.timedelta(days=1),
                            "created_at": now,
                            "finished_at": now,
                        }
                    )
                    code_rows.append(
                        {
                            "code": stored_code(order_id),
                            "tenant_id": tenant_id,
                            "challenge_type": "dns",
                            "domains": name,
                            "created_at": now,
                            "expires_at": now + dt.timedelta(minutes=1),
                            "order_id": order_id,
                        }
                    )
                    # The certificate record shares the order's id (one certificate per order).
                    certificate_rows.append(
                        {
                            "id": order_id,
                            "tenant_id": tenant_id,
                            "domains": name,
                            "issuer": "letsencrypt",
                            "serial": f"{order_id:x}",
                            "not_before": not_before,
                            "not_after": not_after,
                            "key_type": "ECC",
                            "order_id": order_id,
                            "renew_at": not_after - dt.timedelta(days=30),
                            "ari": False,
                            "created_at": now,
                        }
                    )
                    secret_rows.append(
                        {"certificate_id": order_id, "key_encrypted": key_encrypted,
                         "certificate_pem": certificate}
                    )  # fmt: skip
                    name_rows.append(
                        {"certificate_id": order_id, "tenant_id": tenant_id, "name": name}
                    )
                with transaction(store.sessions) as session:
                    connection = session.connection()  # Core executemany: no ORM bulk path
                    connection.execute(insert(Order.__table__), order_rows)
                    connection.execute(insert(VerificationCode.__table__), code_rows)
                    connection.execute(insert(Certificate.__table__), certificate_rows)
                    connection.execute(insert(CertificateSecret.__table__), secret_rows)
                    connection.execute(insert(CertificateName.__table__), name_rows)
            if self.first_order_id is None:
                self.first_order_id = next_id
            self.orders = max(self.orders, orders)
            # As a database in steady use is, not one just written: on PostgreSQL with its
            # statistics and visibility map (else autovacuum processes the million new rows
            # during the measurement, on the cores certok and the load generator use); on
            # SQLite with its write-ahead log folded into the file. Then the new pages go to
            # disk before the measurement, not during it.
            with store.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as connection:
                if store.engine.dialect.name == "postgresql":
                    connection.exec_driver_sql("VACUUM ANALYZE")
                else:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            os.sync()
        finally:
            store.engine.dispose()
        return time.monotonic() - started

    def codes(self) -> list[str]:
        first = self.first_order_id or 1
        return [stored_code(first + i) for i in range(self.orders)]


def settings_for(data_dir: Path, database_url: str | None, **extra: object) -> Any:
    """certok's settings for the bench's data dir (and PostgreSQL database, if any)."""
    from certok.settings import Settings

    return Settings(data_dir=data_dir, database_url=database_url, **extra)


def apply_db_path(
    data_dir: Path, database_url: str | None, codes: list[str], samples: int
) -> list[float]:
    """Seconds per lookup of what `/v1/cert/apply` does on a cache miss, in this process, for
    random stored codes, one at a time: `read_codes` (the code's row and its order's view, the
    key decrypted; certok.api.apply_reads batches these across concurrent polls). No HTTP, no
    thread hops: how the database path alone scales with its size."""
    import random

    from certok.db.engine import opened
    from certok.orders.code_reads import read_codes
    from certok.persistence import open_store
    from certok.tenants.service import find_tenant

    store = open_store(settings_for(data_dir, database_url), upgrade=False)
    rng = random.Random(7)
    times = []
    try:
        with store.sessions() as session:
            tenant_id = find_tenant(session, TENANT).id
        for code in (rng.choice(codes) for _ in range(samples)):
            started = time.perf_counter()
            with opened(store.sessions).read_connection() as connection:
                (read,) = read_codes(connection, [(tenant_id, code)], store.box)
            if read.view is None or read.view.private_key is None:
                raise SystemExit(f"stored code {code} read without its issued order")
            times.append(time.perf_counter() - started)
    finally:
        store.engine.dispose()
    return times


def zone_refresh(
    data_dir: Path, database_url: str | None, first_order_id: int, samples: int
) -> list[float]:
    """CPU seconds per DNS zone refresh after one TXT value changed, in this process, with
    PENDING_CHALLENGES dns-01 rows: what the DNS process does about once per order under load
    (read the delegations' fingerprint and the TXT rows, derive the answer index). The rows
    are removed again before certok starts."""
    import functools

    from sqlalchemy import delete, func, insert, select, update

    from certok.db.models import ChallengeRecord
    from certok.dnszone.answer import ZoneConfig
    from certok.dnszone.zone_cache import DNS01_KIND, ZoneCache
    from certok.dnszone.zoneindex import prepare_index
    from certok.persistence import open_store

    settings = settings_for(data_dir, database_url, dns_zone=ZONE)
    store = open_store(settings, upgrade=False)
    records = ChallengeRecord.__table__
    now = dt.datetime.now(dt.UTC)
    try:
        with store.engine.begin() as connection:
            connection.execute(insert(records), [
                {"order_id": first_order_id, "kind": DNS01_KIND, "name": f"{i:016x}",
                 "value": f"bench-value-{i:040d}", "authz_url": "bench", "created_at": now}
                for i in range(PENDING_CHALLENGES)
            ])  # fmt: skip
            first_id = connection.scalar(select(func.min(records.c.id)))
        config = ZoneConfig.from_settings(settings)
        cache = ZoneCache(store.sessions)
        cache.add_snapshot_hook(functools.partial(prepare_index, config))
        prepare_index(config, None, cache.records)
        cache.refresh()
        times = []
        for sample in range(samples):
            with store.engine.begin() as connection:
                changed = records.c.id == first_id + sample % PENDING_CHALLENGES
                connection.execute(update(records).where(changed).values(value=f"v{sample}"))
            started = time.process_time()
            cache.refresh()
            times.append(time.process_time() - started)
        with store.engine.begin() as connection:
            connection.execute(delete(records).where(records.c.authz_url == "bench"))
    finally:
        store.engine.dispose()
    return times


def _chunks(rows: list[dict[str, object]]) -> list[list[dict[str, object]]]:
    return [rows[i : i + INSERT_CHUNK] for i in range(0, len(rows), INSERT_CHUNK)]


# --- measuring --------------------------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def random_path_script(path: Path, values_file: Path, prefix: str) -> Path:
    """A wrk script asking `prefix<value>` with a value drawn uniformly from `values_file`."""
    path.write_text(
        f"""\
local values = {{}}
for line in io.lines("{values_file}") do values[#values + 1] = line end
math.randomseed(20261128)
request = function()
  return wrk.format("GET", "{prefix}" .. values[math.random(#values)])
end
"""
    )
    return path


def random_code_script(path: Path, first_order_id: int, orders: int) -> Path:
    """A wrk script asking `/v1/cert/apply?code=<code>` for a stored order drawn uniformly
    from all of them, each code made from its order's id (`stored_code`). Not a table of the
    codes, as `random_path_script` has: with a million distinct strings in wrk's Lua heap,
    every collection of its garbage walks them, and wrk itself stalls for 100-260 ms at a
    time, idling the server (it did so against nginx's static answer too)."""
    last = first_order_id + orders - 1
    for order_id in (first_order_id, last):
        if stored_code(order_id) != f"{STORED_CODE_PREFIX}{order_id:012x}":
            raise SystemExit(f"order {order_id}'s code does not take the script's form")
    path.write_text(
        f"""\
math.randomseed(20261128)
local first, count = {first_order_id}, {orders}
request = function()
  local id = first + math.random(count) - 1
  return wrk.format("GET", "/v1/cert/apply?code={STORED_CODE_PREFIX}" .. string.format("%012x", id))
end
"""
    )
    return path


@dataclass
class Stage:
    orders: int
    delegations: int
    fill_seconds: float = 0.0
    startup_seconds: float = 0.0
    rss_started_kib: int = 0
    rss_after_kib: int = 0
    peak_kib: int = 0
    idle_cpu: float | None = None
    database_mib: float = 0.0
    dns_qps: float = 0.0
    dns_p99: float = 0.0
    dns_cpu: float | None = None
    dns_lost: int = 0
    db_path: list[float] = field(default_factory=list)  # apply_db_path's seconds per lookup
    refresh: list[float] = field(default_factory=list)  # zone_refresh's CPU seconds per refresh
    apply_one: WrkResult | None = None  # one code, polled over and over: the cached answer
    apply: WrkResult | None = None
    dv: WrkResult | None = None
    commands: list[str] = field(default_factory=list)


def check_answers(base_url: str, token: str, code: str, name: str) -> None:
    """Fail before measuring if apply or dv do not answer what the load assumes."""
    with httpx.Client(
        base_url=base_url, headers={TOKEN_HEADER: token}, timeout=30, trust_env=False
    ) as http:
        applied = http.get("/v1/cert/apply", params={"code": code}).json()
        if (applied.get("data") or {}).get("status") != "issued":
            raise SystemExit(f"apply for a stored code did not answer issued: {applied}")
        verified = http.get("/v1/cert/dv", params={"domains": name}).json()
        if not (verified.get("data") or {}).get("valid"):
            raise SystemExit(f"dv for a delegated name was not valid: {verified}")


def measure_stage(
    stage: Stage, filler: Filler, workdir: Path, token: str, args: argparse.Namespace,
    cores: Cores,
) -> None:  # fmt: skip
    with Processes() as processes:
        certok = serve_filled(processes, filler, workdir, cores, purge=not args.keep)
        dns_port = int(certok.env["CERTOK_DNS_PORT"])
        first_name = delegated_name(0)
        started = time.monotonic()
        certok.start()
        stage.startup_seconds = time.monotonic() - started
        assert certok.pid is not None
        codes = filler.codes()
        check_answers(certok.base_url, token, codes[-1], first_name)
        with CpuMeter(certok.pid) as idle:
            time.sleep(IDLE_SECONDS)
        stage.idle_cpu = idle.percent
        stage.rss_started_kib = memory_kib(certok.pid)["VmRSS"]

        # DNS
        data = ZoneData(zone=ZONE, labels=list(filler.labels.values()), txt=[])
        query_file = workdir / "queries.txt"
        write_query_file(query_file, data)
        warm_up(dns_port, query_file, cores.load)
        load = Load(args.duration, None, DNSPERF_OUTSTANDING, cores.load)
        perf, command = run_dnsperf(
            dns_port, query_file, load, server_pgid=certok.pid, workdir=workdir
        )
        stage.commands.append(command)
        stage.dns_qps, stage.dns_p99, stage.dns_cpu = perf.qps, perf.p99, perf.cpu_percent
        stage.dns_lost = perf.lost

        # API: apply on random stored codes, dv on random delegated names
        names_file = workdir / "names.txt"
        names_file.write_text("\n".join(filler.labels) + "\n")
        apply_script = random_code_script(
            workdir / "apply.lua", filler.first_order_id or 1, filler.orders
        )
        dv_script = random_path_script(workdir / "dv.lua", names_file, "/v1/cert/dv?domains=")
        one_code = f"{certok.base_url}/v1/cert/apply?code={codes[-1]}"
        for attribute, url, lua in (
            ("apply_one", one_code, None),
            ("apply", certok.base_url + "/", apply_script),
            ("dv", certok.base_url + "/", dv_script),
        ):
            headers = (f"{TOKEN_HEADER}: {token}",)
            run_wrk(url, seconds=WARMUP_SECONDS, connections=args.connections, core=cores.load,
                    headers=headers, script=lua)  # fmt: skip
            result = run_wrk(url, seconds=args.duration, connections=args.connections,
                             core=cores.load, headers=headers, script=lua,
                             server_pgid=certok.pid)  # fmt: skip
            result.command = result.command.replace(token, "<token>")
            setattr(stage, attribute, result)
            stage.commands.append(result.command)
        memory = memory_kib(certok.pid)
        stage.rss_after_kib, stage.peak_kib = memory["VmRSS"], memory["VmHWM"]
    stage.database_mib = database_mib(workdir / "data", filler.database_url)


def serve_filled(
    processes: Processes, filler: Filler, workdir: Path, cores: Cores, *, purge: bool
) -> CertokServer:
    """`certok serve` on `filler`'s database, pinned to the server's core and not started yet,
    with a stand-in resolver on the load core (running) that answers each delegated name's
    `_acme-challenge` CNAME with its label. `purge`: whether certok's purge of old orders
    runs, as it does in production; off for a database kept between runs (`--keep`), whose
    orders, finished when it was filled, the purge deletes once they are older than
    `order_retention_hours`, under the measurement and for every later run."""
    label_map = workdir / "labels.json"
    label_map.write_text(json.dumps(filler.labels))
    resolver_port = free_port("delegation resolver")
    processes.add(
        start_process(
            "delegation-resolver",
            _stub_resolver.command(resolver_port, ZONE, label_map),
            workdir=workdir,
            core=cores.load,
            ready=lambda: _stub_resolver.answers(resolver_port),
            what="answering",
        )
    )
    api_port, dns_port = free_port("certok api"), free_port("certok dns")
    env = growth_env(workdir / "data", filler.database_url, api_port, dns_port, resolver_port)
    if not purge:
        env["CERTOK_PURGE_INTERVAL_SECONDS"] = "0"
    return processes.add(
        certok_serve(env, workdir=workdir / "certok", core=cores.server, timeout=STARTUP_TIMEOUT)
    )


def growth_env(
    data_dir: Path, database_url: str | None, api_port: int, dns_port: int, resolver_port: int
) -> dict[str, str]:
    env = certok_env(data_dir, api_port, dns_port, resolver_port)
    if database_url:
        env["CERTOK_DATABASE_URL"] = database_url
    return env


def database_mib(data_dir: Path, database_url: str | None) -> float:
    """The database's size on disk: SQLite's files, or PostgreSQL's pg_database_size."""
    if database_url is None:
        database = data_dir / "certok.db"
        files = database.parent.glob("certok.db*")
        return sum(p.stat().st_size for p in files if p.is_file()) / (1024 * 1024)
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as db:
            size = db.scalar(sqlalchemy.text("SELECT pg_database_size(current_database())"))
    finally:
        engine.dispose()
    return float(size or 0) / (1024 * 1024)


# --- report -------------------------------------------------------------------------------------


def build_report(stages: list[Stage]) -> Report:
    report = Report()
    base = stages[0]

    def relative(value: float, reference: float) -> float | None:
        return value / reference if reference else None

    for stage in stages:
        size = f"{stage.orders:,} orders, {stage.delegations:,} delegations"
        report.measurements.append(
            Measurement(
                BENCH,
                f"{size}: memory",
                ratio=relative(stage.rss_after_kib, base.rss_after_kib),
                ratio_of="first stage's RSS",
                cpu_percent=stage.idle_cpu,
                note=(
                    f"RSS {stage.rss_started_kib / 1024:.0f} MiB after start, "
                    f"{stage.rss_after_kib / 1024:.0f} MiB after the load "
                    f"(peak {stage.peak_kib / 1024:.0f} MiB); CPU column: idle; start-up "
                    f"{stage.startup_seconds:.1f} s; database {stage.database_mib:.0f} MiB "
                    f"(filled in {stage.fill_seconds:.0f} s)"
                ),
            )
        )
        report.measurements.append(
            Measurement(
                BENCH,
                f"{size}: DNS, max rate",
                rate=stage.dns_qps,
                rate_unit="qps",
                ratio=relative(stage.dns_qps, base.dns_qps),
                ratio_of="first stage's qps",
                latency={"p99": stage.dns_p99},
                cpu_percent=stage.dns_cpu,
                note=f"TXT at {stage.delegations:,} labels + 10% NXDOMAIN; lost {stage.dns_lost}",
            )
        )
        in_process = (
            ("apply's database path, in-process, random stored code", stage.db_path,
             base.db_path, "lookups/s",
             "read_codes for one code, one thread, no HTTP (the cache-miss path)"),
            ("DNS zone refresh after one TXT change, in-process", stage.refresh, base.refresh,
             "refreshes per CPU-s",
             f"CPU time; {PENDING_CHALLENGES} pending dns-01 rows, {stage.delegations:,} labels "
             "(about one refresh per order under load)"),
        )  # fmt: skip
        for what, samples, reference_samples, unit, note in in_process:
            if not samples or not reference_samples:
                continue
            ordered = sorted(samples)
            p50 = statistics.median(ordered)
            report.measurements.append(
                Measurement(
                    BENCH,
                    f"{size}: {what}",
                    rate=len(ordered) / sum(ordered),
                    rate_unit=unit,
                    ratio=p50 / statistics.median(reference_samples),
                    ratio_of="first stage's p50",
                    latency={"p50": p50, "p99": percentile(ordered, 0.99)},
                    note=note,
                )
            )
        for what, result, reference in (
            ("GET /v1/cert/apply, one code (cached answer)", stage.apply_one, base.apply_one),
            ("GET /v1/cert/apply, random stored code", stage.apply, base.apply),
            ("GET /v1/cert/dv, random delegated name", stage.dv, base.dv),
        ):
            if result is None or reference is None:
                continue
            invalid = f"INVALID: {result.non_2xx} non-2xx; " if result.non_2xx else ""
            per_request = _cpu_per_request_us(result)
            reference_per_request = _cpu_per_request_us(reference)
            costs = f"; {per_request:.0f} µs of server CPU per request" if per_request else ""
            if per_request and reference_per_request and result is not reference:
                costs += f" ({per_request / reference_per_request:.2f}x the first stage's)"
            rates = (
                f"; {result.rps / reference.rps:.2f}x the first stage's req/s"
                if result is not reference and reference.rps
                else ""
            )
            report.measurements.append(
                Measurement(
                    BENCH,
                    f"{size}: {what}",
                    rate=result.rps,
                    rate_unit="req/s",
                    ratio=relative(result.p50, reference.p50),
                    ratio_of="first stage's p50",
                    latency={"p50": result.p50, "p99": result.p99},
                    cpu_percent=result.cpu_percent,
                    note=f"{invalid}{result.requests:,} requests{rates}{costs}",
                )
            )
        report.commands.extend(stage.commands)
    last = stages[-1]
    if len(stages) > 1 and last.apply and base.apply and base.apply.rps:
        ratio = last.apply.rps / base.apply.rps
        report.targets.append(
            Target(
                BENCH,
                f"random stored-code polls at {last.orders:,} orders within 2x of "
                f"{base.orders:,} orders (>= 0.5x its req/s)",
                f"{last.apply.rps:,.0f} against {base.apply.rps:,.0f} req/s = {ratio:.2f}x",
                ratio >= 0.5,
            )
        )
    return report


def _cpu_per_request_us(result: WrkResult | None) -> float | None:
    """The server's CPU per request over the run, in µs: steadier than the rate when other
    work on the shared machine takes some of the server's core."""
    per_cpu_second = None if result is None else result.per_cpu_second
    return 1e6 / per_cpu_second if per_cpu_second else None


def run(args: argparse.Namespace) -> Report:
    require_tools("dnsperf", "wrk", "taskset")
    clean_environment()
    orders = [int(v) for v in args.orders.split(",")]
    delegations = [int(v) for v in args.delegations.split(",")]
    if len(orders) != len(delegations):
        raise SystemExit("--orders and --delegations need the same number of stages")
    if any(b < a for series in (orders, delegations) for a, b in itertools.pairwise(series)):
        raise SystemExit("stages only grow: give --orders and --delegations in rising order")
    cores = Cores.pick()
    print(f"{BENCH}: {describe_machine()}", flush=True)
    print(f"{BENCH}: {cores.describe()}", flush=True)
    if args.keep and args.postgres:
        raise SystemExit("--keep is for SQLite only: PostgreSQL's database is made afresh")
    with tempfile.TemporaryDirectory(prefix="certok-bench-growth-") as tmp:
        database_url = fresh_postgres_database(args.postgres, "growth") if args.postgres else None
        try:
            stages = measure_stages(Path(tmp), database_url, orders, delegations, args, cores)
        finally:
            if database_url is not None:  # a 1M stage's database holds gigabytes
                drop_postgres_database(args.postgres, database_url)
    report = build_report(stages)
    report.commands.insert(0, invocation(__file__))
    return report


def measure_stages(
    tmp: Path,
    database_url: str | None,
    orders: list[int],
    delegations: list[int],
    args: argparse.Namespace,
    cores: Cores,
) -> list[Stage]:
    """Grow the database stage by stage and measure each (SQLite in `tmp` or `--keep`'s
    directories, or the PostgreSQL database at `database_url`)."""
    stages: list[Stage] = []
    workdir, token, filler = tmp, "", None
    for order_count, delegation_count in zip(orders, delegations, strict=True):
        stage = Stage(order_count, delegation_count)
        if args.keep:  # each stage its own database, kept and reused by the next run
            workdir = args.keep / f"{order_count}-orders-{delegation_count}-delegations"
            token, filler = kept_filler(workdir)
        if filler is None:
            token, filler = new_filler(workdir, database_url)
        print(f"{BENCH}: filling to {order_count:,} orders, {delegation_count:,} delegations",
              flush=True)  # fmt: skip
        stage.fill_seconds = filler.grow(delegation_count, order_count)
        if args.keep:
            save_filler(workdir, token, filler)
        stage.db_path = apply_db_path(
            filler.data_dir, database_url, filler.codes(), args.db_samples
        )
        stage.refresh = zone_refresh(
            filler.data_dir, database_url, filler.first_order_id or 1, args.refresh_samples
        )
        print(f"{BENCH}: measuring ({stage.fill_seconds:.0f} s to fill)", flush=True)
        measure_stage(stage, filler, workdir, token, args, cores)
        stages.append(stage)
    return stages


def new_filler(workdir: Path, database_url: str | None) -> tuple[str, Filler]:
    """An empty database in `workdir` with the bench's tenant; its token and filler. The tenant
    comes from certok's own CLI, as an operator would make it."""
    setup = CertokServer(
        growth_env(workdir / "data", database_url, 1, 1, 1), workdir=workdir / "certok"
    )  # a handle for `certok tenant create` only: never started
    setup.workdir.mkdir(parents=True, exist_ok=True)
    return setup.create_tenant(TENANT), Filler(workdir / "data", database_url)


def kept_filler(workdir: Path) -> tuple[str, Filler | None]:
    """The token and filler a previous `--keep` run left in `workdir` (none: start afresh)."""
    state = workdir / FILLER_STATE
    if not state.exists():
        if workdir.exists():
            raise SystemExit(f"{workdir} exists without {FILLER_STATE}: remove it to refill")
        return "", None
    kept = json.loads(state.read_text())
    filler = Filler(
        workdir / "data",
        database_url=kept.get("database_url"),  # None: SQLite in the data dir
        delegations=kept["delegations"],
        orders=kept["orders"],
        labels=kept["labels"],
        first_order_id=kept["first_order_id"],
    )
    print(f"{BENCH}: reusing {workdir} ({filler.orders:,} orders)", flush=True)
    return kept["token"], filler


def save_filler(workdir: Path, token: str, filler: Filler) -> None:
    state = {"token": token, "delegations": filler.delegations, "orders": filler.orders,
             "labels": filler.labels, "first_order_id": filler.first_order_id,
             "database_url": filler.database_url}  # fmt: skip
    (workdir / FILLER_STATE).write_text(json.dumps(state))


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--orders", default="1000,10000,100000", help="orders per stage")
    parser.add_argument("--delegations", default="1000,10000,10000", help="delegations per stage")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run (8)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (16)")
    parser.add_argument(
        "--db-samples", type=int, default=2000, help="in-process database lookups per stage (2000)"
    )
    parser.add_argument(
        "--refresh-samples", type=int, default=300, help="in-process zone refreshes per stage (300)"
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="fill each stage's SQLite database in DIR/<orders>-orders-<delegations>-delegations "
        "and keep it; a later run with the same DIR and stages measures it again without filling",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="grow a fresh database on this PostgreSQL server instead of SQLite "
        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)",
    )
    args = parser.parse_args()
    finish(run(args), args.json, show_commands=True)


if __name__ == "__main__":
    main()
