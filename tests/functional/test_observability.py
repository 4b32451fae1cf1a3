"""/metrics, /healthz, /readyz and the logs of a real `certok serve` (subprocess), with one
process and with `--processes 3`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from certok.health import HealthChecks
from certok.persistence import Store
from certok.readiness import dns_check, worker_check
from tests.functional.test_api import api_settings, make_app
from tests.kit.ports import free_port
from tests.kit.processes import stop_process

ZONE = "acme.obs.test"


@dataclass
class Server:
    process: subprocess.Popen[str]
    api: str
    metrics: str
    dns_port: int
    token: str
    log: Path
    lines: list[str] = field(default_factory=list)

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(
            self.api + path,
            params=params,
            headers={"httpsok-token": self.token},
            timeout=10,
            trust_env=False,
        )

    def scrape(self) -> dict[str, object]:
        response = httpx.get(self.metrics + "/metrics", timeout=10, trust_env=False)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(response.text)}

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def start(tmp_path: Path, *args: str, **settings: str) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")}
    api_port, metrics_port, dns_port = free_port(), free_port(), free_port()
    env.update(
        CERTOK_DATA_DIR=str(tmp_path / "data"),
        CERTOK_API_PORT=str(api_port),
        CERTOK_DNS_PORT=str(dns_port),
        CERTOK_METRICS_PORT=str(metrics_port),
        CERTOK_DNS_ZONE=ZONE,
        CERTOK_RESOLVERS='["127.0.0.1:9"]',
        CERTOK_RESOLVER_TIMEOUT_SECONDS="0.5",
        **settings,
    )
    created = subprocess.run(
        [sys.executable, "-m", "certok", "tenant", "create", "acme"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = created.stdout.split("token:")[1].split()[0]
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "certok", "serve", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Server(
        process,
        f"http://127.0.0.1:{api_port}",
        f"http://127.0.0.1:{metrics_port}",
        dns_port,
        token,
        log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if server.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield server
    finally:
        stop_process(process, grace_seconds=30)


@pytest.fixture
def single(tmp_path: Path) -> Iterator[Server]:
    yield from start(tmp_path, CERTOK_LOG_FORMAT="json")


@pytest.fixture
def multi(tmp_path: Path) -> Iterator[Server]:
    yield from start(tmp_path, "--processes", "3")


def ask_dns(server: Server, count: int) -> None:
    for _ in range(count):
        query = dns.message.make_query(ZONE, "SOA")
        reply = dns.query.udp(query, "127.0.0.1", port=server.dns_port, timeout=5)
        assert reply.rcode() == 0


def sample(families: dict[str, object], family: str, name: str, **labels: str) -> float:
    for item in families[family].samples:  # type: ignore[attr-defined]
        if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
            return float(item.value)
    raise AssertionError(f"no sample {name}{labels}")


def check_names_and_types(families: dict[str, object], *, acme: bool = True) -> None:
    expected = {
        "certok_orders": "counter",
        "certok_order_duration_seconds": "histogram",
        "certok_acme_requests": "counter",
        "certok_acme_request_duration_seconds": "histogram",
        "certok_dns_queries": "counter",
        "certok_http01_responder_requests": "counter",
        "certok_resolver_failures": "counter",
        "certok_tenants": "gauge",
        "certok_orders_in_database": "gauge",
        "process_resident_memory_bytes": "gauge",
        "process_cpu_seconds": "counter",
    }
    if not acme:  # no CA contacted yet: with processes >= 2 no process has a series of these
        for name in ("certok_acme_requests", "certok_acme_request_duration_seconds"):
            expected.pop(name)
    for name, kind in expected.items():
        assert name in families, (name, sorted(families))
        assert families[name].type == kind, (name, families[name].type)  # type: ignore[attr-defined]
    for family in families.values():
        if family.type == "counter":  # type: ignore[attr-defined]
            for item in family.samples:  # type: ignore[attr-defined]
                assert item.name.endswith(("_total", "_created")), item.name
        for item in family.samples:  # type: ignore[attr-defined]
            # labels never carry names, addresses or tokens
            for value in item.labels.values():
                assert "customer.test" not in value and "127.0.0.1" not in value


def test_metrics_health_and_json_logs_of_one_process(single: Server) -> None:
    ready = single.get("/readyz")
    assert ready.json() == {
        "status": "ok",
        "checks": {"database": "ok", "dns": "ok", "worker": "ok"},
    }
    assert single.get("/healthz").json() == {"status": "ok"}
    assert single.get("/metrics").status_code == 404  # never on the public API
    ask_dns(single, 3)
    assert single.get("/v1/dv/www.customer.test/some-token-123").status_code == 404
    dv = single.get("/v1/cert/dv", domains="www.customer.test")
    trace = dv.json()["traceId"]
    families = single.scrape()
    check_names_and_types(families)
    soa = sample(
        families,
        "certok_dns_queries",
        "certok_dns_queries_total",
        qtype="SOA",
        rcode="NOERROR",
        transport="udp",
    )
    assert soa >= 3  # and the readiness checks' own queries
    hits = sample(
        families,
        "certok_http01_responder_requests",
        "certok_http01_responder_requests_total",
        result="not_found",
    )
    assert hits == 1
    assert sample(families, "certok_tenants", "certok_tenants", status="active") == 1
    assert sample(families, "certok_resolver_failures", "certok_resolver_failures_total") >= 1

    # One format for every line (certok's and uvicorn's): JSON with role and pid.
    lines = single.log_lines()
    records = [json.loads(line) for line in lines]
    assert {r["role"] for r in records} == {"main"}
    assert {r["pid"] for r in records} == {single.process.pid}
    assert any(r["logger"].startswith("uvicorn") for r in records)
    summary = [r for r in records if r["msg"].startswith("certok ")]
    assert summary and f"zone {ZONE}" in summary[0]["msg"]
    access = [r for r in records if r["logger"] == "certok.access"]
    [dv_line] = [r for r in access if r["path"] == "/v1/cert/dv"]
    assert dv_line["trace_id"] == trace and dv_line["status"] == 200
    [responder] = [r for r in access if r["path"].startswith("/v1/dv/")]
    assert responder["path"] == "/v1/dv/www.customer.test/{token}"
    text = "\n".join(lines)
    assert single.token not in text and "some-token-123" not in text
    assert "domains=" not in text


def test_metrics_add_up_over_processes(multi: Server) -> None:
    requests = 12
    for index in range(requests):
        assert multi.get(f"/v1/dv/h{index}.customer.test/tok").status_code == 404
    ask_dns(multi, 5)
    families = multi.scrape()
    check_names_and_types(families, acme=False)
    hits = sample(
        families,
        "certok_http01_responder_requests",
        "certok_http01_responder_requests_total",
        result="not_found",
    )
    assert hits == requests
    pids = {s.labels["pid"] for s in families["process_resident_memory_bytes"].samples}  # type: ignore[attr-defined]
    assert len(pids) >= 3  # the DNS process and both API + worker processes
    lines = multi.log_lines()
    tags = [re.search(r" \[([a-z+ 0-9]+) (\d+)\]: ", line) for line in lines]
    roles = {tag.group(1) for tag in tags if tag}
    assert {"supervisor", "dns", "api+worker 1", "api+worker 2"} <= roles, roles
    served = {
        tag.group(2)
        for tag, line in zip(tags, lines, strict=True)
        if tag and "certok.access" in line and "/v1/dv/h" in line
    }
    # Counted in the API processes, served by the DNS process: the page adds up every
    # process's counts (which API process accepts a connection is the kernel's choice).
    assert served and multi.process.pid not in {int(pid) for pid in served}


def test_readyz_names_what_is_wrong(store: Store, tmp_path: Path) -> None:
    health = HealthChecks()
    health.add("dns", dns_check("127.0.0.1", lambda: 9, ZONE))
    health.add("worker", worker_check(lambda: 100.0, 60, clock=lambda: 200.0))
    app = make_app(api_settings(tmp_path), store, wake_worker=lambda: None, health=health)
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "DNS listener 127.0.0.1:9 does not answer" in body["checks"]["dns"]
    assert "100 s ago" in body["checks"]["worker"]
