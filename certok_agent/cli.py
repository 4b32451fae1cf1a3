"""`certok-agent install | run | status | uninstall`.

Exit status: 0 all well (deployed or up to date), 1 a certificate failed to deploy, 2 a usage
or configuration mistake (one line naming it), 3 a name is not delegated to certok yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import secrets
import sys
import time

from certok_agent import __version__, install, targets
from certok_agent.api import ApiError, CertokApi
from certok_agent.config import DEFAULT_CONFIG, AgentConfig, ConfigError, load
from certok_agent.deploy import Deployer
from certok_agent.runner import FAILED, NOT_DELEGATED, Result, Runner
from certok_agent.state import State

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_DELEGATED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certok-agent",
        description="Deploy certok's certificates on this host and renew them when due.",
    )
    parser.add_argument("--version", action="version", version=f"certok-agent {__version__}")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("install", help="token, configuration and a daily timer")
    setup.add_argument("--server", required=True, help="certok's public URL")
    setup.add_argument("--token", required=True, help="the tenant's API token")
    setup.add_argument("--root", default="/", help="install under this directory")
    run = commands.add_parser("run", help="deploy what is due (what the timer runs)")
    run.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    run.add_argument("--force", action="store_true", help="renew every certificate now")
    run.add_argument("--jitter", type=int, default=0, help="sleep up to this many seconds first")
    run.add_argument("--cron", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser("status", help="each certificate: names, paths, expiry, renewal, result")
    remove = commands.add_parser("uninstall", help="remove the timer (and with --purge, all)")
    remove.add_argument("--root", default="/", help="uninstall under this directory")
    remove.add_argument("--purge", action="store_true", help="also remove config, token, state")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        if arguments.command == "install":
            paths = install.Paths.under(arguments.root)
            for line in install.install(
                paths, arguments.server, arguments.token, random.SystemRandom()
            ):
                print(line)
            print("next: `certok-agent run --dry-run` shows what the first run will do")
            return 0
        if arguments.command == "uninstall":
            for line in install.uninstall(install.Paths.under(arguments.root), arguments.purge):
                print(line)
            return 0
        config = load(arguments.config)
        if arguments.command == "status":
            return _status(config)
        if arguments.jitter > 0:
            time.sleep(random.SystemRandom().uniform(0, arguments.jitter))
        return _run(config, arguments.dry_run, arguments.force)
    except ConfigError as error:
        print(f"certok-agent: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as error:
        print(f"certok-agent: certok: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"certok-agent: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILED


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _api(config: AgentConfig) -> CertokApi:
    return CertokApi(config.server, config.token(), f"certok-agent/{__version__}", config.ca_file)


def _run(config: AgentConfig, dry_run: bool, force: bool) -> int:
    api = _api(config)
    state = State(config.state_dir)
    found, problems = targets.discover(config, state)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    runner = Runner(
        config, api, state, Deployer(config, state), _utcnow, dry_run=dry_run, force=force
    )
    results = runner.run(found)
    for result in results:
        print(result.line())
        for note in result.target.notes:
            print(f"  {note}")
    if not dry_run:
        _report(api, state, results, problems)
    api.close()
    if problems or any(r.result == FAILED for r in results):
        return EXIT_FAILED
    if any(r.result == NOT_DELEGATED for r in results):
        return EXIT_NOT_DELEGATED
    return 0


def _report(api: CertokApi, state: State, results: list[Result], problems: list[str]) -> None:
    body = {
        "uuid": _host_uuid(state),
        "hostname": platform.node()[:253],
        "agentVersion": f"certok-agent/{__version__}",
        "os": f"{platform.system()} {platform.release()}"[:128],
        "results": [result.report() for result in results],
        "problems": problems,
    }
    try:
        api.post("/v1/agent/report", body)
    except ApiError as error:
        print(f"warning: the run's report did not reach certok: {error}", file=sys.stderr)


def _host_uuid(state: State) -> str:
    path = os.path.join(state.state_dir, "uuid")
    try:
        with open(path, encoding="ascii") as handle:
            value = handle.read().strip()
        if value:
            return value
    except OSError:
        pass
    value = secrets.token_hex(16)
    os.makedirs(state.state_dir, mode=0o700, exist_ok=True)
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    return value


def _status(config: AgentConfig) -> int:
    state = State(config.state_dir)
    known = state.data.get("certificates", {})
    if not known:
        print("no certificate deployed yet: run `certok-agent run`")
        return 0
    for path, entry in sorted(known.items()):
        print(
            f"{', '.join(entry.get('names', []))}\n  files: {path}\n"
            f"  certificate: {entry.get('id') or '-'}, valid until {entry.get('notAfter') or '-'}, "
            f"renews at {entry.get('renewAt') or '-'}\n"
            f"  last run: {entry.get('last_run') or '-'}: {entry.get('last_result') or '-'} "
            f"({entry.get('last_message') or ''})"
        )
    return 0
