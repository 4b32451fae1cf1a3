"""A certok-agent run with nothing due over 100 managed certificates: wall time, whole process.

    python bench/agent_noop.py [--certificates 100] [--runs 7] [--json FILE]

What it does: starts the real `certok serve` (SQLite in a temp dir; issuers pointed at a closed
loopback port: nothing is issued), creates a tenant, writes `--certificates` certificate
records with certok's own modules (tests/kit/certs.py: a small CA, records as the driver
writes them), puts each certificate's files on "the host" (a temp dir) with the agent's state
saying it deployed them, and configures the agent in explicit-entries mode with one section
per certificate. Then it times `python -m certok_agent run` as a whole process, `--runs` times
after one warm-up, next to `python -c pass` (the interpreter's own start) on the same machine.
The goal (issue 18): under 1 s for 100 certificates. A no-op run makes two requests (`check`
for every id at once, then the run's `report`), writes no certificate file and reloads nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
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
)
from api_rps import certok_env

GOAL_SECONDS = 1.0


def tenant_token(env: dict[str, str], name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "certok", "tenant", "create", name],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return next(line.split()[-1] for line in done.stdout.splitlines() if "token" in line)


def add_records(data_dir: Path, count: int) -> list[tuple[int, str]]:
    """`count` certificate records of tenant `bench`: (id, full chain)."""
    from sqlalchemy import select

    from certok.db.models import CertificateSecret
    from certok.persistence import open_store
    from certok.settings import Settings
    from certok.tenants.service import find_tenant
    from tests.kit.certs import FakeCa, add_certificate

    store = open_store(Settings(data_dir=data_dir))
    try:
        with store.sessions() as session:
            tenant_id = find_tenant(session, "bench").id
        ca = FakeCa.create()
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        ids = [
            add_certificate(
                store.sessions,
                store.box,
                ca,
                tenant_id,
                [f"site{i}.example.com"],
                not_before=now - dt.timedelta(days=1),
                serial=1000 + i,
            )
            for i in range(count)
        ]
        with store.sessions() as session:
            rows = session.execute(
                select(CertificateSecret.certificate_id, CertificateSecret.certificate_pem).where(
                    CertificateSecret.certificate_id.in_(ids)
                )
            ).all()
        return [(row.certificate_id, row.certificate_pem) for row in rows]
    finally:
        store.engine.dispose()


def lay_out_host(host: Path, server: str, token: str, records: list[tuple[int, str]]) -> Path:
    """Files, agent state and configuration as after a run that deployed every record."""
    from certok_agent import files

    (host / "etc").mkdir(parents=True)
    (host / "etc" / "token").write_text(token + "\n")
    sections, remembered = [], {}
    for number, (certificate_id, chain) in enumerate(records):
        cert, key = host / "tls" / f"site{number}.pem", host / "tls" / f"site{number}.key"
        cert.parent.mkdir(exist_ok=True)
        cert.write_text(chain)
        key.write_text("not read by a run with nothing due\n")
        name = f"site{number}.example.com"
        sections.append(
            f"[certificate site{number}]\nnames = {name}\ncert = {cert}\nkey = {key}\n"
            "reload = true\n"
        )
        remembered[str(cert)] = {
            "id": certificate_id,
            "leaf": files.fingerprint(chain.encode()),
            "names": [name],
        }
    state = host / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"certificates": remembered, "deploying": {}}))
    config = host / "etc" / "agent.ini"
    config.write_text(
        f"[agent]\nserver = {server}\ntoken_file = {host / 'etc' / 'token'}\nmode = entries\n"
        f"state_dir = {state}\n\n" + "\n".join(sections)
    )
    return config


def timed(argv: list[str], runs: int) -> list[float]:
    subprocess.run(argv, check=True, capture_output=True)  # warm-up (page cache, .pyc)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"the agent failed:\n{done.stdout}{done.stderr}")
    return times


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--certificates", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    arguments = parser.parse_args()
    clean_environment()
    print(describe_machine())
    report = Report(commands=[invocation(__file__)])
    with tempfile.TemporaryDirectory(prefix="certok-bench-agent-") as temp, Processes() as running:
        work = Path(temp)
        api_port = free_port("certok api")
        env = certok_env(work / "data", api_port, free_port("certok dns"), free_port("resolver"))
        token = tenant_token(env, "bench")
        records = add_records(work / "data", arguments.certificates)
        server = running.add(certok_serve(env, workdir=work, core=None))
        server.start()
        config = lay_out_host(work / "host", f"http://{LOOPBACK}:{api_port}", token, records)
        agent = [sys.executable, "-m", "certok_agent", "--config", str(config), "run"]
        before = {p: p.stat().st_mtime_ns for p in (work / "host" / "tls").iterdir()}
        agent_times = timed(agent, arguments.runs)
        python_times = timed([sys.executable, "-c", "pass"], arguments.runs)
        after = {p: p.stat().st_mtime_ns for p in (work / "host" / "tls").iterdir()}
        if before != after:
            raise SystemExit("a run with nothing due wrote a certificate file")
    median = statistics.median(agent_times)
    baseline = statistics.median(python_times)
    case = f"no-op run, {arguments.certificates} certificates"
    report.measurements.append(
        Measurement(
            "agent_noop",
            case,
            latency={"median": median, "min": min(agent_times), "max": max(agent_times)},
            ratio=median / baseline,
            ratio_of="python -c pass",
            note=f"python -c pass: {baseline * 1000:.0f} ms median",
        )
    )
    report.targets.append(
        Target(
            "agent_noop",
            f"{case} < {GOAL_SECONDS:.0f} s",
            f"{median * 1000:.0f} ms median of {arguments.runs}",
            median < GOAL_SECONDS,
        )
    )
    finish(report, arguments.json, show_commands=True)


if __name__ == "__main__":
    main()
