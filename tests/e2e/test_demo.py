"""`certok demo` as a new user runs it: one command, the whole story, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from certok.demo.run import DemoError, ensure_packages


def test_the_demo_issues_a_certificate_that_nginx_serves() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")}
    result = subprocess.run(
        [sys.executable, "-m", "certok", "demo", "--no-wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    steps = [line for line in out.splitlines() if line.startswith("## ")]
    assert len(steps) == 8, steps
    assert "certok tenant create demo" in out
    assert '$ curl -s -H "httpsok-token: $TOKEN"' in out and "/v1/cert/dv?domains=" in out
    assert "_acme-challenge.www IN CNAME " in out
    assert '"valid": true' in out and '"status": "issued"' in out
    assert "hello from www.customer.test, over HTTPS" in out
    assert "issued by CN=Pebble Intermediate CA" in out
    assert out.rstrip().endswith("done.")


def test_missing_packages_are_installed_only_when_agreed() -> None:
    said: list[str] = []
    ran: list[list[str]] = []
    state = {"missing": ["pebble", "nsd"]}

    def run(argv: list[str]) -> int:
        ran.append(argv)
        state["missing"] = []
        return 0

    def attempt(*, yes: bool, answer: bool, root: bool = True) -> None:
        ensure_packages(
            yes=yes,
            ask=lambda question: answer,
            say=said.append,
            missing=lambda: list(state["missing"]),
            run=run,
            is_root=lambda: root,
        )

    with pytest.raises(DemoError, match="not installed; install them with: apt-get install"):
        attempt(yes=False, answer=False)
    assert ran == [] and "pebble, nsd" in said[0]
    with pytest.raises(DemoError, match="run as root"):
        attempt(yes=True, answer=True, root=False)
    assert ran == []
    attempt(yes=True, answer=False)
    assert ran[0] == ["apt-get", "update"]
    assert ran[1] == [
        *("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y"),
        *("--no-install-recommends", "pebble", "unbound", "nsd", "nginx", "dnsutils"),
    ]
    attempt(yes=False, answer=False)  # nothing missing now: no question, nothing run
    assert len(ran) == 2
