"""certok's HTTP API under load, next to a hello-world ASGI app on the same server stack.

    python bench/api_rps.py [--duration 10] [--connections 32] [--repeat 2] [--json FILE]

Needs `wrk` (`apt-get install wrk`). What it does:
- starts the real `certok serve` (SQLite in a temp dir, its DNS server on a free port, every
  issuer pointed at a closed loopback port) pinned to one core, creates a tenant with
  `python -m certok tenant create bench`, and puts one issued order (self-signed certificate,
  key encrypted with the data dir's secret.key) in the database with certok's own modules, so
  `GET /v1/cert/apply?code=<code>` answers `issued` straight away;
- starts a hello-world Starlette app that answers a small JSON body, under the same uvicorn
  settings and event loop as `certok serve`, on the same core;
- starts a stand-in resolver (bench/_stub_resolver.py, dnspython over UDP) that answers
  NXDOMAIN to everything, on the load generator's core, and points `CERTOK_RESOLVERS` at it,
  so `GET /v1/cert/dv` for a name without a delegation runs its full path (database, CNAME
  lookup, answer);
- runs `wrk --latency` on the other core against the hello world, apply polling and dv,
  `--repeat` rounds taking turns, and reports each one's best round: requests/s, average and
  p99 latency, server CPU, and the ratio to the hello world.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _stub_resolver
from _common import (
    LOOPBACK,
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
    require_tools,
    run_on_uvloop,
    run_subcommand,
    script_command,
    start_process,
)
from _wrk import WrkResult, run_wrk

from tests.rig.process import tcp_is_listening

BENCH = "api_rps"
ZONE = "acme.bench.test"
ISSUED_NAME = "www.bench.test"
UNDELEGATED_NAME = "nodeleg.bench.test"
TOKEN_HEADER = "httpsok-token"
IDLE_SECONDS = 3.0
TARGET_RPS = 5_000
TARGET_RATIO = 0.5


# --- the reference: hello world on the same stack -------------------------------------------------


def serve_hello(argv: list[str]) -> None:
    """`api_rps.py serve-hello --port P` (run by the benchmark)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    parser = argparse.ArgumentParser(prog="api_rps.py serve-hello")
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args(argv).port

    async def hello(request: object) -> JSONResponse:
        return JSONResponse({"code": 0, "msg": "success", "data": {"hello": "world"}})

    app = Starlette(routes=[Route("/", hello, methods=["GET"])])
    # The uvicorn settings certok.http_listeners.uvicorn_config uses, and its default log level.
    config = uvicorn.Config(
        app, host=LOOPBACK, port=port, log_level="info", access_log=False, lifespan="off"
    )
    run_on_uvloop(uvicorn.Server(config).serve())


# --- certok, with a tenant and an issued order ----------------------------------------------


def certok_env(data_dir: Path, api_port: int, dns_port: int, resolver_port: int) -> dict[str, str]:
    closed = f"http://{LOOPBACK}:{free_port('closed port for the issuers')}/directory"
    env = {
        "CERTOK_DATA_DIR": str(data_dir),
        "CERTOK_API_HOST": LOOPBACK,
        "CERTOK_API_PORT": str(api_port),
        "CERTOK_PUBLIC_URL": f"http://{LOOPBACK}:{api_port}",
        "CERTOK_DNS_HOST": LOOPBACK,
        "CERTOK_DNS_PORT": str(dns_port),
        "CERTOK_DNS_ZONE": ZONE,
        "CERTOK_RESOLVERS": json.dumps([f"{LOOPBACK}:{resolver_port}"]),
        # One tenant is the whole load here: its per-tenant limits would measure the limiter.
        "CERTOK_RATE_LIMIT_DV_PER_MINUTE": "0",
        "CERTOK_RATE_LIMIT_APPLY_PER_MINUTE": "0",
    }
    # No order here needs a CA; should one ever be driven, it must not leave the machine.
    for issuer in ("GOOGLE", "LETSENCRYPT", "ZEROSSL"):
        env[f"CERTOK_ISSUERS__{issuer}__DIRECTORY"] = closed
    return env


def self_signed(name: str) -> tuple[str, str, dt.datetime, dt.datetime]:
    """(certificate PEM, key PEM, not before, not after) for `name`, ECC P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from certok.crypto import generate_private_key, private_key_to_pem

    key = generate_private_key("ECC")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = not_before + dt.timedelta(days=90)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return pem, private_key_to_pem(key), not_before, not_after


def insert_issued_order(data_dir: Path, tenant_name: str) -> str:
    """An issued order behind a verification code of `tenant_name`; the code."""
    from certok.db.engine import transaction
    from certok.db.models import Order, VerificationCode
    from certok.order_states import ISSUED
    from certok.orders.service import order_key_owner
    from certok.persistence import open_store
    from certok.settings import Settings
    from certok.tenants.service import find_tenant

    store = open_store(Settings(data_dir=data_dir))
    try:
        certificate, key_pem, not_before, not_after = self_signed(ISSUED_NAME)
        now = dt.datetime.now(dt.UTC)
        code = "b3c4be11c0de0001"
        with transaction(store.sessions) as session:
            tenant = find_tenant(session, tenant_name)
            order = Order(
                tenant_id=tenant.id,
                issuer="letsencrypt",
                algorithm="ECC",
                challenge_type="dns",
                domains=ISSUED_NAME,
                state=ISSUED,
                attempts=1,
                acme_orders=1,
                certificate_pem=certificate,
                not_before=not_before,
                not_after=not_after,
                next_attempt_at=now,
                deadline_at=now + dt.timedelta(days=1),
                created_at=now,
                finished_at=now,
            )
            session.add(order)
            session.flush()  # the key's associated data names the order's id
            order.key_encrypted = store.box.encrypt(key_pem.encode(), order_key_owner(order.id))
            session.add(
                VerificationCode(
                    code=code,
                    tenant_id=tenant.id,
                    challenge_type="dns",
                    domains=ISSUED_NAME,
                    created_at=now,
                    expires_at=now + dt.timedelta(minutes=1),
                    order_id=order.id,
                )
            )
        return code
    finally:
        store.engine.dispose()


# --- wrk ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    headers: tuple[str, ...]
    server_pid: int | None


def measure(endpoint: Endpoint, seconds: float, connections: int, core: int | None) -> WrkResult:
    return run_wrk(
        endpoint.url,
        seconds=seconds,
        connections=connections,
        core=core,
        headers=endpoint.headers,
        server_pgid=endpoint.server_pid,
    )


def http_implementation() -> str:
    """What uvicorn's `http="auto"` picks in this environment (certok serve leaves it so)."""
    if importlib.util.find_spec("httptools") is not None:
        return "httptools"
    return "h11 (httptools is not installed)"


# --- the benchmark --------------------------------------------------------------------------


def check_answers(base_url: str, token: str, code: str) -> None:
    """Fail before measuring anything if the endpoints do not answer what they should."""
    headers = {TOKEN_HEADER: token}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30, trust_env=False) as http:
        applied = http.get("/v1/cert/apply", params={"code": code}).json()
        if (applied.get("data") or {}).get("status") != "issued":
            raise SystemExit(f"apply did not answer issued: {applied}")
        dv = http.get("/v1/cert/dv", params={"domains": UNDELEGATED_NAME}).json()
        item = ((dv.get("data") or {}).get("items") or [{}])[0]
        if item.get("valid") is not False or "CNAME" not in (item.get("detail") or ""):
            raise SystemExit(f"dv for an undelegated name did not ask for the CNAME: {dv}")


def run(args: argparse.Namespace) -> Report:
    require_tools("wrk", "taskset")
    clean_environment()
    cores = Cores.pick()
    print(f"api_rps: {describe_machine()}", flush=True)
    print(f"api_rps: {cores.describe()}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="certok-bench-api-") as tmp,
        Processes() as processes,
    ):
        workdir = Path(tmp)
        resolver_port = free_port("NXDOMAIN resolver")
        processes.add(
            start_process(
                "nxdomain-resolver",
                _stub_resolver.command(resolver_port),
                workdir=workdir,
                core=cores.load,
                ready=lambda: _stub_resolver.answers(resolver_port),
                what="answering",
            )
        )

        api_port, dns_port = free_port("certok api"), free_port("certok dns")
        env = certok_env(workdir / "data", api_port, dns_port, resolver_port)
        certok = certok_serve(env, workdir=workdir / "certok", core=cores.server)
        certok.workdir.mkdir(parents=True)
        token = certok.create_tenant("bench")
        code = insert_issued_order(workdir / "data", "bench")
        processes.add(certok).start()
        check_answers(certok.base_url, token, code)
        # What the worker and the zone refresher cost while no request comes in.
        with CpuMeter(certok.pid) as idle:
            time.sleep(IDLE_SECONDS)

        hello_port = free_port("hello world")
        hello = processes.add(
            start_process(
                "hello-world",
                script_command(__file__, "serve-hello", "--port", str(hello_port)),
                workdir=workdir,
                core=cores.server,
                ready=lambda: tcp_is_listening(hello_port),
                what="listening",
            )
        )

        auth = (f"{TOKEN_HEADER}: {token}",)
        endpoints = [
            Endpoint("hello world (Starlette + uvicorn)", f"http://{LOOPBACK}:{hello_port}/",
                     (), hello.pid),
            Endpoint("certok GET /v1/cert/apply (issued)",
                     f"{certok.base_url}/v1/cert/apply?code={code}", auth, certok.pid),
            Endpoint("certok GET /v1/cert/dv (no delegation)",
                     f"{certok.base_url}/v1/cert/dv?domains={UNDELEGATED_NAME}", auth,
                     certok.pid),
        ]  # fmt: skip
        commands: list[str] = []
        runs: dict[str, list[WrkResult]] = {e.name: [] for e in endpoints}
        # A short unmeasured round first: imports, caches, SQLite's page cache.
        for endpoint in endpoints:
            measure(endpoint, args.warmup, args.connections, cores.load)
        for _ in range(args.repeat):
            for endpoint in endpoints:
                print(f"api_rps: {endpoint.name}, {args.duration:g} s", flush=True)
                result = measure(endpoint, args.duration, args.connections, cores.load)
                runs[endpoint.name].append(result)
                commands.append(result.command.replace(token, "<token>"))

    # The least disturbed round of each: the shared machine only ever slows a round down.
    best = {name: max(results, key=lambda r: (r.clean, r.rps)) for name, results in runs.items()}
    hello_best = best[endpoints[0].name]
    report = Report(commands=commands)
    for endpoint in endpoints:
        result = best[endpoint.name]
        notes = [f"best of {len(runs[endpoint.name])}"]
        per_core = result.per_cpu_second
        if per_core is not None:
            hello_core = hello_best.per_cpu_second
            relative = f" ({per_core / hello_core:.2f}x hello)" if hello_core else ""
            notes.append(f"{per_core:,.0f} req per server CPU-second{relative}")
        if endpoint is endpoints[0]:
            notes.append(f"uvicorn's HTTP parser here: {http_implementation()}")
        if not result.clean:
            notes.insert(
                0,
                f"INVALID: {result.non_2xx} non-2xx answers, {result.socket_errors} socket errors",
            )
        report.measurements.append(
            Measurement(
                bench=BENCH,
                case=endpoint.name,
                rate=result.rps,
                rate_unit="req/s",
                ratio=result.rps / hello_best.rps if hello_best.rps else None,
                ratio_of="hello",
                latency={"avg": result.avg, "p99": result.p99},
                cpu_percent=result.cpu_percent,
                note="; ".join(notes),
            )
        )
    report.measurements.append(
        Measurement(
            bench=BENCH,
            case=f"certok serve, idle for {IDLE_SECONDS:g} s",
            cpu_percent=idle.percent,
            note="worker polls and DNS zone refreshes only",
        )
    )
    apply_best = best[endpoints[1].name]
    ratio = apply_best.rps / hello_best.rps if hello_best.rps else 0.0
    report.targets += [
        Target(
            BENCH,
            f"apply polling >= {TARGET_RPS:,} req/s on one core",
            f"{apply_best.rps:,.0f} req/s",
            apply_best.rps >= TARGET_RPS and apply_best.non_2xx == 0,
        ),
        Target(
            BENCH,
            f"apply polling >= {TARGET_RATIO} x hello world",
            f"{ratio:.2f}x ({hello_best.rps:,.0f} req/s hello world)",
            ratio >= TARGET_RATIO and apply_best.non_2xx == 0,
        ),
    ]
    return report


def main() -> None:
    if run_subcommand({"serve-hello": serve_hello}):
        return
    parser = bench_parser(__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="rounds; each endpoint's best is reported (2)"
    )
    args = parser.parse_args()
    finish(run(args), args.json)


if __name__ == "__main__":
    main()
