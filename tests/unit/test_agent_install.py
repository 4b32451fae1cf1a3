"""certok-agent install/uninstall into a throwaway root, and its one-line usage errors."""

from __future__ import annotations

import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from certok_agent import install
from certok_agent.cli import main
from certok_agent.config import load

TOKEN = "0123456789abcdef0123456789abcdef"


def test_install_writes_a_systemd_timer_where_systemd_runs_and_uninstall_removes_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "run" / "systemd" / "system").mkdir(parents=True)
    paths = install.Paths.under(str(tmp_path))
    lines = install.install(paths, "https://certok.example.net", TOKEN, random.Random(7))
    token = Path(paths.token)
    assert token.read_text().strip() == TOKEN and stat.S_IMODE(token.stat().st_mode) == 0o600
    timer = Path(paths.timer).read_text()
    assert "OnCalendar=*-*-* " in timer and "RandomizedDelaySec=3600" in timer
    assert "Persistent=true" in timer
    assert " run\n" in Path(paths.service).read_text()
    assert not Path(paths.cron).exists()
    assert any("systemd timer" in line for line in lines)
    config = load(paths.config)
    assert config.server == "https://certok.example.net" and config.mode == "nginx"
    assert config.token_file == "/etc/certok-agent/token"

    removed = install.uninstall(paths, purge=False)
    assert not Path(paths.timer).exists() and not Path(paths.service).exists()
    assert Path(paths.config).exists() and token.exists()
    assert any("--purge" in line for line in removed)
    install.uninstall(paths, purge=True)
    assert not Path(paths.config).exists() and not token.exists()


def test_install_writes_a_cron_entry_elsewhere_at_a_random_daily_time(tmp_path: Path) -> None:
    times = set()
    for seed in range(3):
        root = tmp_path / str(seed)
        paths = install.Paths.under(str(root))
        install.install(paths, "https://certok.example.net", TOKEN, random.Random(seed))
        minute, hour, *rest = Path(paths.cron).read_text().split()
        assert rest[:4] == ["*", "*", "*", "root"] and "--jitter" in rest
        times.add((hour, minute))
        install.uninstall(paths, purge=True)
        assert not Path(paths.cron).exists()
    assert len(times) == 3


def test_an_existing_configuration_is_kept(tmp_path: Path) -> None:
    paths = install.Paths.under(str(tmp_path))
    Path(paths.config).parent.mkdir(parents=True)
    Path(paths.config).write_text("[agent]\nserver = https://kept.example\n")
    install.install(paths, "https://other.example", TOKEN, random.Random(1))
    assert "kept.example" in Path(paths.config).read_text()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "No such file"),
        ("[agent\n", "agent.ini"),
        ("[other]\n", "no [agent] section"),
        ("[agent]\nserver = ftp://x\n", "server must be"),
        ("[agent]\nserver = https://x\nmode = apache\n", "mode is 'apache'"),
        ("[agent]\nserver = https://x\nalgorithm = DSA\n", "algorithm is 'DSA'"),
        ("[agent]\nserver = https://x\nmode = entries\n", "no [certificate NAME] section"),
        ("[agent]\nserver = https://x\n[certificate a]\nnames = a.example\n", "needs cert, key"),
        ("[agent]\nserver = https://x\n[site]\n", "unknown section [site]"),
    ],
)
def test_configuration_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, says: str
) -> None:
    config = tmp_path / "agent.ini"
    if text is not None:
        config.write_text(text)
    assert main(["--config", str(config), "run"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err


def test_version_and_help_run_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "certok_agent", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("certok-agent ")
