"""What ships beside the code: the systemd unit (verified by systemd itself), the licence,
the version and the changelog."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "certok.service"


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is missing: apt-get install systemd (scripts/test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    # The unit as installed, pointing at this checkout's certok (verify checks it exists).
    certok = Path(sys.executable).parent / "certok"
    assert certok.exists()
    unit = tmp_path / "certok.service"
    unit.write_text(UNIT.read_text().replace("/opt/certok/bin/certok", str(certok)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "certok.service" not in result.stderr, result.stderr  # no warnings about it
    text = UNIT.read_text()
    for line in (
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "StateDirectory=certok",
        "NoNewPrivileges=yes",
        "RestartPreventExitStatus=2",
    ):
        assert f"\n{line}\n" in text, line


def test_version_license_and_changelog() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "certok", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")},
    )
    assert result.stdout.strip() == f"certok {version('certok')}"
    assert "Apache License" in (REPO / "LICENSE").read_text()
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## [{version('certok')}]" in changelog
