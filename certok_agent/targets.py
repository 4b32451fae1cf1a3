"""The certificates this host needs: pairs found in nginx, plus the configured entries."""

from __future__ import annotations

import subprocess
from typing import List, NamedTuple, Optional, Sequence, Tuple

from certok_agent import nginx_conf
from certok_agent.config import AgentConfig

COMMAND_TIMEOUT_SECONDS = 120


class Target(NamedTuple):
    label: str
    names: Tuple[str, ...]
    cert_path: str
    key_path: str
    # The command that makes the service read the files; None: nginx's `-s reload`.
    reload: Optional[Tuple[str, ...]]
    # host:port whose served certificate must change after the reload; None: not checked.
    check: Optional[str]
    notes: Tuple[str, ...] = ()

    @property
    def uses_nginx(self) -> bool:
        return self.reload is None


class Outcome(NamedTuple):
    ok: bool
    output: str


def run_command(command: Sequence[str]) -> Outcome:
    try:
        done = subprocess.run(  # noqa: S603 - the operator's own configured command
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return Outcome(False, f"{command[0]}: {error}")
    return Outcome(done.returncode == 0, done.stdout.decode("utf-8", "replace").strip())


def discover(config: AgentConfig) -> Tuple[List[Target], List[str]]:
    """The targets, and problems to report (an unreadable nginx configuration)."""
    targets: List[Target] = []
    problems: List[str] = []
    if config.mode == "nginx":
        dump = run_command([*config.nginx, "-T"])
        if not dump.ok:
            problems.append(f"`{' '.join(config.nginx)} -T` failed: {_last_line(dump.output)}")
        else:
            try:
                pairs = nginx_conf.certificate_pairs(dump.output)
            except nginx_conf.ConfigError as error:
                pairs = []
                problems.append(f"cannot read nginx's configuration: {error}")
            for pair in pairs:
                notes = tuple(f"skipped {name}: {reason}" for name, reason in pair.skipped)
                if not pair.names:
                    problems.append(
                        f"{pair.cert_path}: no name certok can issue for ({'; '.join(notes)})"
                    )
                    continue
                targets.append(
                    Target(
                        pair.names[0],
                        pair.names,
                        pair.cert_path,
                        pair.key_path,
                        None,
                        pair.address,
                        notes,
                    )
                )
    seen = {target.cert_path for target in targets}
    for entry in config.entries:
        if entry.cert_path not in seen:
            targets.append(
                Target(
                    entry.label,
                    entry.names,
                    entry.cert_path,
                    entry.key_path,
                    entry.reload,
                    entry.check,
                )
            )
    return targets, problems


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
