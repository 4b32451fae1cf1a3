"""certok-agent's decisions: what is due, what a run writes and reloads, and what it restores.

The certok API and the commands are stand-ins here (pure decision logic); the real server,
nginx and Pebble run in tests/e2e/test_certok_agent.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from certok_agent.config import AgentConfig
from certok_agent.deploy import Deployer
from certok_agent.runner import DEPLOYED, FAILED, NOT_DELEGATED, UNCHANGED, Runner, why_due
from certok_agent.state import State
from certok_agent.targets import Outcome, Target
from tests.kit.certs import self_signed

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
LATER = "2027-01-20 00:00:00"
EARLIER = "2026-12-01 00:00:00"


class FakeCertok:
    """certok's answers: delegated or not, and the certificates it issued."""

    def __init__(self, delegated: bool = True) -> None:
        self.delegated = delegated
        self.certificates: dict[int, dict[str, Any]] = {}
        self.calls: list[str] = []

    def issue(self) -> int:
        number = len(self.certificates) + 1
        cert, key = self_signed(
            ["www.example.com"],
            not_before=NOW - dt.timedelta(days=1),
            lifetime=dt.timedelta(days=61),
        )
        self.certificates[number] = {
            "id": number,
            "status": "valid",
            "certificate": cert,
            "privateKey": key,
            "notAfter": "2027-02-03 12:00:00",
            "renewAt": LATER,
        }
        return number

    def get(self, path: str, **params: str) -> Any:
        self.calls.append(path)
        if path == "/v1/cert/dv":
            if not self.delegated:
                item = {"domain": "www.example.com", "value": "abc.acme.test", "valid": False}
                return {"valid": False, "code": None, "items": [item]}
            return {"valid": True, "code": "c0de", "items": []}
        if path == "/v1/cert/apply":
            number = self.issue()
            return {**self.certificates[number], "status": "issued"}
        return self.certificates[int(path.rsplit("/", 1)[1])]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        self.calls.append(path)
        return [
            {k: c[k] for k in ("id", "status", "renewAt", "notAfter")}
            for i, c in self.certificates.items()
            if i in body["ids"]
        ]


class Commands:
    def __init__(self) -> None:
        self.run: list[list[str]] = []
        self.failing: set[str] = set()

    def __call__(self, command: list[str]) -> Outcome:
        self.run.append(command)
        failed = any(word in self.failing for word in command)
        return Outcome(not failed, "nginx: [emerg] unknown directive" if failed else "")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[AgentConfig, Target]:
    config = AgentConfig(
        path=str(tmp_path / "agent.ini"),
        server="http://certok.test",
        token_file="",
        mode="nginx",
        nginx=("nginx",),
        algorithm="ECC",
        issuer="",
        state_dir=str(tmp_path / "state"),
        ca_file=None,
        verify_seconds=1.0,
        entries=(),
    )
    target = Target(
        "www",
        ("www.example.com",),
        str(tmp_path / "site.pem"),
        str(tmp_path / "site.key"),
        None,
        None,
    )
    Path(target.cert_path).write_text("self-signed")
    Path(target.key_path).write_text("old key")
    return config, target


def runner(config: AgentConfig, certok: FakeCertok, commands: Commands, **kw: Any) -> Runner:
    state = State(config.state_dir)
    return Runner(config, certok, state, Deployer(config, state, commands), lambda: NOW, **kw)  # type: ignore[arg-type]


def test_first_run_deploys_then_a_run_with_nothing_due_writes_and_reloads_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    config, target = setup
    certok, commands = FakeCertok(), Commands()
    (first,) = runner(config, certok, commands).run([target])
    assert first.result == DEPLOYED and first.certificate_id == 1, first.message
    assert Path(target.cert_path).read_text() == certok.certificates[1]["certificate"]
    assert commands.run == [["nginx", "-t"], ["nginx", "-s", "reload"]]
    written = Path(target.cert_path).stat().st_mtime_ns

    commands.run.clear()
    certok.calls.clear()
    (second,) = runner(config, certok, commands).run([target])
    assert second.result == UNCHANGED, second.message
    assert commands.run == [] and certok.calls == ["/v1/agent/check"]
    assert Path(target.cert_path).stat().st_mtime_ns == written


def test_the_renewal_time_passing_deploys_the_next_certificate(setup) -> None:  # type: ignore[no-untyped-def]
    config, target = setup
    certok, commands = FakeCertok(), Commands()
    runner(config, certok, commands).run([target])
    certok.certificates[1]["renewAt"] = EARLIER
    (result,) = runner(config, certok, commands).run([target])
    assert result.result == DEPLOYED and result.certificate_id == 2
    assert "renewal time" in result.message


def test_nginx_t_failing_restores_the_files_and_keeps_the_new_certificate_for_later(setup) -> None:  # type: ignore[no-untyped-def]
    config, target = setup
    certok, commands = FakeCertok(), Commands()
    commands.failing = {"-t"}
    (result,) = runner(config, certok, commands).run([target])
    assert result.result == FAILED and "nginx -t failed" in result.message
    assert "restored" in result.message
    assert Path(target.cert_path).read_text() == "self-signed"
    assert Path(target.key_path).read_text() == "old key"
    assert ["nginx", "-s", "reload"] not in commands.run
    # Fixed: the next run deploys the certificate already issued, without a new order.
    commands.failing = set()
    (again,) = runner(config, certok, commands).run([target])
    assert again.result == DEPLOYED and again.certificate_id == 1
    assert len(certok.certificates) == 1


def test_a_failed_reload_restores_and_reloads_the_old_files(setup) -> None:  # type: ignore[no-untyped-def]
    config, target = setup
    certok, commands = FakeCertok(), Commands()
    commands.failing = {"reload"}
    (result,) = runner(config, certok, commands).run([target])
    assert result.result == FAILED and "reload failed" in result.message
    assert Path(target.cert_path).read_text() == "self-signed"
    assert commands.run.count(["nginx", "-s", "reload"]) == 2


def test_not_delegated_names_the_cname_to_add(setup) -> None:  # type: ignore[no-untyped-def]
    config, target = setup
    (result,) = runner(config, FakeCertok(delegated=False), Commands()).run([target])
    assert result.result == NOT_DELEGATED
    assert "_acme-challenge.www.example.com. CNAME abc.acme.test." in result.message
    assert Path(target.cert_path).read_text() == "self-signed"


def test_a_run_killed_mid_deploy_is_finished_by_the_next(setup) -> None:  # type: ignore[no-untyped-def]
    config, target = setup
    certok, commands = FakeCertok(), Commands()
    runner(config, certok, commands).run([target])
    # The journal a killed run leaves: certificate 2 written, never proven.
    number = certok.issue()
    state = State(config.state_dir)
    state.begin_deploy(target.cert_path, number, None)
    (result,) = runner(config, certok, commands).run([target])
    assert result.result == DEPLOYED and result.certificate_id == number
    assert "stopped before it proved" in result.message
    assert State(config.state_dir).deploying(target.cert_path) is None


def test_dry_run_changes_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    config, target = setup
    certok, commands = FakeCertok(), Commands()
    (result,) = runner(config, certok, commands, dry_run=True).run([target])
    assert result.result == "would_deploy" and commands.run == [] and certok.certificates == {}
    assert not Path(config.state_dir).exists()


@pytest.mark.parametrize(
    ("remembered", "remote", "force", "due"),
    [
        ({}, None, False, "not one certok issued"),
        ({"id": 1, "leaf": "other", "names": ["www.example.com"]}, None, False, "not one certok"),
        ({"id": 1, "leaf": "disk", "names": ["old.example.com"]}, None, False, "names"),
        ({"id": 1, "leaf": "disk", "names": ["www.example.com"]}, None, False, "does not know"),
        (
            {"id": 1, "leaf": "disk", "names": ["www.example.com"]},
            {"status": "revoked"},
            False,
            "revoked",
        ),
        (
            {"id": 1, "leaf": "disk", "names": ["www.example.com"]},
            {"status": "valid", "renewAt": EARLIER},
            False,
            "renewal time",
        ),
        (
            {"id": 1, "leaf": "disk", "names": ["www.example.com"]},
            {"status": "valid", "renewAt": LATER},
            False,
            None,
        ),
        (
            {"id": 1, "leaf": "disk", "names": ["www.example.com"]},
            {"status": "valid", "renewAt": LATER},
            True,
            "forced",
        ),
    ],
)
def test_why_due(remembered, remote, force, due) -> None:  # type: ignore[no-untyped-def]
    target = Target("www", ("www.example.com",), "/c", "/k", None, None)
    reason = why_due(target, remembered, "disk", remote, NOW, force)
    assert (reason is None) if due is None else (due in (reason or ""))
