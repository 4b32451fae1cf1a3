"""certok-agent's endpoints in process on a real database (SQLite and PostgreSQL): the
installer and archive, `check` scoped to the tenant, `report` into the host's log and the
`deploy.*` webhooks, and bad input answered with the envelope."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from certok.api.caches import TtlCache
from certok.db.engine import transaction
from certok.db.models import WebhookDelivery
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.functional.test_api import api_settings, assert_error, make_app
from tests.kit.certs import FakeCa, add_certificate

NOW = dt.datetime.now(dt.UTC)
UUID = "5f1c2a9e0b7d4c3a8e6f1d2c3b4a5f60"


class Harness:
    def __init__(
        self, client: TestClient, store: Store, tokens: dict[str, str], ids: dict[str, int]
    ):
        self.client, self.store, self.tokens, self.ids = client, store, tokens, ids
        self.ca = FakeCa.create()

    def post(self, path: str, body: Any, tenant: str = "alpha") -> Any:
        return self.client.post(path, json=body, headers={"httpsok-token": self.tokens[tenant]})

    def add(self, tenant: str, name: str, serial: int, **kwargs: Any) -> int:
        return add_certificate(
            self.store.sessions,
            self.store.box,
            self.ca,
            self.ids[tenant],
            [name],
            not_before=kwargs.pop("not_before", NOW - dt.timedelta(days=1)),
            serial=serial,
            **kwargs,
        )


@pytest.fixture
def agent_api(store: Store, tmp_path: Path) -> Iterator[Harness]:
    settings = api_settings(tmp_path, public_url="https://certok.example.net")
    tokens: dict[str, str] = {}
    ids: dict[str, int] = {}
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta"):
            ids[name] = tenants.create_tenant(session, name).id
            tokens[name] = tenants.issue_token(session, name)
    app = make_app(
        settings, store, wake_worker=lambda: None, tokens=TtlCache(ttl=0, max_entries=10)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(client, store, tokens, ids)


def test_installer_and_archive_are_public_and_run(agent_api: Harness, tmp_path: Path) -> None:
    script = agent_api.client.get("/v1/agent/install.sh")
    assert script.status_code == 200
    assert "server='https://certok.example.net'" in script.text
    assert "/v1/agent/certok-agent.pyz" in script.text
    archive = agent_api.client.get("/v1/agent/certok-agent.pyz")
    assert archive.status_code == 200 and archive.content.startswith(b"#!/usr/bin/env python3\n")
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert "__main__.py" in names and "certok_agent/cli.py" in names
    path = tmp_path / "certok-agent.pyz"
    path.write_bytes(archive.content)
    done = subprocess.run(
        [sys.executable, str(path), "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("certok-agent "), done.stderr


def test_check_answers_for_the_tenants_own_certificates_only(agent_api: Harness) -> None:
    mine = agent_api.add("alpha", "a.example.com", 0x101)
    due = agent_api.add("alpha", "b.example.com", 0x102, not_before=NOW - dt.timedelta(days=80))
    theirs = agent_api.add("beta", "a.example.com", 0x103)
    body = agent_api.post("/v1/agent/check", {"ids": [mine, due, theirs, 999_999]}).json()
    assert body["code"] == 0
    by_id = {item["id"]: item for item in body["data"]}
    assert set(by_id) == {mine, due}
    assert by_id[mine]["status"] == "valid" and by_id[due]["status"] == "expiring"
    assert set(by_id[mine]) == {"id", "status", "renewAt", "notAfter"}
    other = agent_api.post("/v1/agent/check", {"ids": [mine]}, tenant="beta").json()
    assert other["data"] == []


def report(result: str, message: str, certificate_id: int | None = None) -> dict[str, Any]:
    return {
        "uuid": UUID,
        "hostname": "web1",
        "agentVersion": "certok-agent/0.1.0",
        "os": "Linux 6.1",
        "results": [
            {
                "certPath": "/etc/nginx/ssl/site.pem",
                "names": ["www.example.com"],
                "result": result,
                "message": message,
                "certificateId": certificate_id,
            }
        ],
        "problems": [],
    }


def test_report_fills_the_hosts_log_and_queues_deploy_webhooks(agent_api: Harness) -> None:
    hook = agent_api.post(
        "/v1/webhooks", {"url": "https://hooks.example.net/certok", "events": ["deploy.failed"]}
    )
    assert hook.json()["code"] == 0, hook.text
    assert (
        agent_api.post("/v1/agent/report", report("deployed", "deployed certificate 7", 7)).json()[
            "code"
        ]
        == 0
    )
    failed = report(
        "failed", "nginx -t failed: unknown directive; the previous files were restored"
    )
    assert agent_api.post("/v1/agent/report", failed).json()["code"] == 0
    headers = {"httpsok-token": agent_api.tokens["alpha"]}
    hosts = agent_api.client.get("/v1/agents/hosts", headers=headers)
    assert hosts.status_code == 200 and UUID in hosts.text
    log = agent_api.client.get(f"/v1/agents/hosts/{UUID}/log", headers=headers).json()
    kinds = [entry["type"] for entry in log["data"]["entries"]]
    assert "deploy.succeeded" in kinds and "deploy.failed" in kinds and "run" in kinds
    with agent_api.store.sessions() as session:
        queued = session.scalars(select(WebhookDelivery.event_type)).all()
    assert queued == ["deploy.failed"]
    # Another tenant sees no such host.
    beta = {"httpsok-token": agent_api.tokens["beta"]}
    assert agent_api.client.get(f"/v1/agents/hosts/{UUID}/log", headers=beta).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/agent/check", {"ids": "1"}, ["ids"]),
        ("/v1/agent/check", {"ids": [True]}, ["ids must be"]),
        ("/v1/agent/check", [1], ["JSON object"]),
        ("/v1/agent/report", {"uuid": "x", "results": []}, ["httpsok-uuid"]),
        ("/v1/agent/report", {"uuid": UUID, "results": [{"result": "great"}]}, ["result"]),
        ("/v1/agent/report", {"uuid": UUID, "results": "no"}, ["results must be"]),
    ],
)
def test_bad_input_gets_the_envelope(
    agent_api: Harness, path: str, body: Any, words: list[str]
) -> None:
    assert_error(agent_api.post(path, body), 400, *words)


def test_a_wrong_token_is_refused(agent_api: Harness) -> None:
    response = agent_api.client.post(
        "/v1/agent/check", json={"ids": []}, headers={"httpsok-token": "0" * 32}
    )
    assert_error(response, 401)
