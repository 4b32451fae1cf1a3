"""Installing the agent on a host: token, configuration, and a daily run at a random time.

A systemd timer where systemd runs (`RandomizedDelaySec` adds the jitter), a cron entry
elsewhere (the run then sleeps a random while before it starts). `root` prefixes every path,
so a test can install into a throwaway directory and look at what was written.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from typing import NamedTuple

from certok_agent import config as agent_config
from certok_agent import files

JITTER_SECONDS = 3600
UNIT = "certok-agent"


class Paths(NamedTuple):
    root: str
    config: str
    token: str
    state_dir: str
    program_dir: str
    wrapper: str
    service: str
    timer: str
    cron: str
    systemd_marker: str

    @classmethod
    def under(cls, root: str) -> Paths:
        def at(path: str) -> str:
            return os.path.join(root, path.lstrip("/"))

        return cls(
            root=root,
            config=at(agent_config.DEFAULT_CONFIG),
            token=at("/etc/certok-agent/token"),
            state_dir=at(agent_config.DEFAULT_STATE_DIR),
            program_dir=at("/usr/local/lib/certok-agent"),
            wrapper=at("/usr/local/bin/certok-agent"),
            service=at(f"/etc/systemd/system/{UNIT}.service"),
            timer=at(f"/etc/systemd/system/{UNIT}.timer"),
            cron=at(f"/etc/cron.d/{UNIT}"),
            systemd_marker=at("/run/systemd/system"),
        )


def install(paths: Paths, server: str, token: str, rng: random.Random) -> list[str]:
    """Install; the lines to print."""
    done = []
    files.write_atomically(paths.token, (token.strip() + "\n").encode(), 0o600)
    os.chmod(paths.token, 0o600)
    done.append(f"token written to {paths.token} (mode 0600)")
    if not os.path.exists(paths.config):
        # The paths inside the file are the host's, not the test root's.
        text = agent_config.render(
            server,
            agent_config.DEFAULT_CONFIG.rsplit("/", 1)[0] + "/token",
            agent_config.DEFAULT_STATE_DIR,
        )
        files.write_atomically(paths.config, text.encode(), 0o600)
        done.append(
            f"configuration written to {paths.config} (mode nginx; edit it for other services)"
        )
    else:
        done.append(f"configuration kept: {paths.config}")
    command = _program(paths)
    hour, minute = rng.randrange(0, 24), rng.randrange(0, 60)
    if os.path.isdir(paths.systemd_marker):
        files.write_atomically(paths.service, _service(command).encode(), 0o644)
        files.write_atomically(paths.timer, _timer(hour, minute).encode(), 0o644)
        if paths.root == "/":
            subprocess.run(["systemctl", "daemon-reload"], check=False)  # noqa: S607 - fixed argv
            subprocess.run(  # noqa: S603 - fixed argv
                ["systemctl", "enable", "--now", f"{UNIT}.timer"],  # noqa: S607 - on PATH
                check=False,
            )
        done.append(f"systemd timer {UNIT}.timer: daily at {hour:02d}:{minute:02d} + up to 1 h")
    else:
        line = f"{minute} {hour} * * * root {command} run --jitter {JITTER_SECONDS} --cron\n"
        files.write_atomically(paths.cron, line.encode(), 0o644)
        done.append(f"cron entry {paths.cron}: daily at {hour:02d}:{minute:02d} + up to 1 h")
    return done


def uninstall(paths: Paths, purge: bool) -> list[str]:
    done = []
    if os.path.exists(paths.timer) and paths.root == "/":
        subprocess.run(  # noqa: S603 - fixed argv
            ["systemctl", "disable", "--now", f"{UNIT}.timer"],  # noqa: S607 - on PATH
            check=False,
        )
    for path in (paths.timer, paths.service, paths.cron, paths.wrapper):
        if os.path.exists(path):
            os.unlink(path)
            done.append(f"removed {path}")
    if os.path.isdir(paths.program_dir):
        shutil.rmtree(paths.program_dir)
        done.append(f"removed {paths.program_dir}")
    if purge:
        for path in (paths.config, paths.token):
            if os.path.exists(path):
                os.unlink(path)
                done.append(f"removed {path}")
        if os.path.isdir(paths.state_dir):
            shutil.rmtree(paths.state_dir)
            done.append(f"removed {paths.state_dir} (state and backups)")
    else:
        done.append(
            f"kept {paths.config}, {paths.token} and {paths.state_dir} (--purge removes them)"
        )
    return done


def _program(paths: Paths) -> str:
    """The command the timer runs: a copy of this zipapp with a wrapper, or the console script."""
    archive = os.path.abspath(sys.argv[0])
    host_wrapper = "/usr/local/bin/certok-agent"
    if archive.endswith(".pyz") and os.path.isfile(archive):
        os.makedirs(paths.program_dir, exist_ok=True)
        installed = os.path.join(paths.program_dir, "certok-agent.pyz")
        if os.path.abspath(installed) != archive:
            shutil.copyfile(archive, installed)
        os.chmod(installed, 0o644)
        wrapper = '#!/bin/sh\nexec python3 /usr/local/lib/certok-agent/certok-agent.pyz "$@"\n'
        files.write_atomically(paths.wrapper, wrapper.encode(), 0o755)
        return host_wrapper
    found = shutil.which("certok-agent")
    return found or f"{sys.executable} -m certok_agent"


def _service(command: str) -> str:
    return (
        "[Unit]\n"
        "Description=certok-agent: deploy and renew certificates from certok\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={command} run\n"
    )


def _timer(hour: int, minute: int) -> str:
    return (
        "[Unit]\n"
        "Description=Daily certok-agent run\n\n"
        "[Timer]\n"
        f"OnCalendar=*-*-* {hour:02d}:{minute:02d}:00\n"
        f"RandomizedDelaySec={JITTER_SECONDS}\n"
        "Persistent=true\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
