"""The certificates this host needs: pairs found in nginx, plus the configured entries."""

from __future__ import annotations

import subprocess
from typing import NamedTuple, Sequence

from certok_agent import nginx_conf
from certok_agent.config import AgentConfig
from certok_agent.state import State

COMMAND_TIMEOUT_SECONDS = 120


class Target(NamedTuple):
    label: str
    names: tuple[str, ...]
    cert_path: str
    key_path: str
    # The command that makes the service read the files; None: nginx's `-s reload`.
    reload: tuple[str, ...] | None
    # host:port whose served certificate must change after the reload; None: not checked.
    check: str | None
    notes: tuple[str, ...] = ()

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


def discover(config: AgentConfig, state: State) -> tuple[list[Target], list[str]]:
    """The targets, and problems to report (an unreadable nginx configuration).

    When nginx cannot print its configuration (a syntax error somewhere), the pairs found by
    the last good run stand in: a due certificate is still renewed, and `nginx -t` then
    refuses it and the previous files are put back, which the report says.
    """
    targets: list[Target] = []
    problems: list[str] = []
    if config.mode == "nginx":
        dump = run_command([*config.nginx, "-T"])
        pairs = None
        if not dump.ok:
            problems.append(f"`{' '.join(config.nginx)} -T` failed: {_last_line(dump.output)}")
        else:
            try:
                pairs = nginx_conf.certificate_pairs(dump.output)
            except nginx_conf.ConfigError as error:
                problems.append(f"cannot read nginx's configuration: {error}")
        if pairs is None:
            targets.extend(_remembered(state))
        else:
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
        state.data["nginx_pairs"] = [
            [t.label, list(t.names), t.cert_path, t.key_path, t.check] for t in targets
        ]
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


def _remembered(state: State) -> list[Target]:
    remembered = []
    for item in state.data.get("nginx_pairs", []):
        try:
            label, names, cert_path, key_path, check = item
            remembered.append(Target(label, tuple(names), cert_path, key_path, None, check))
        except (TypeError, ValueError):
            continue
    return remembered


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
