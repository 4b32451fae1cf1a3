"""Put one certificate in place and prove it is served, or put the previous one back.

backup → journal → atomic writes → `nginx -t` → reload → TLS handshake showing the new leaf.
Any failure after the writes restores the backup and reloads again, so the service keeps
serving a certificate that worked; the journal lets a run that was killed half-way finish.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, NamedTuple

from certok_agent import files, tls_probe
from certok_agent.config import AgentConfig
from certok_agent.state import State
from certok_agent.targets import Outcome, Target, run_command


class Deployed(NamedTuple):
    ok: bool
    message: str


class Deployer:
    def __init__(
        self,
        config: AgentConfig,
        state: State,
        command: Callable[..., Outcome] = run_command,
    ) -> None:
        self.config = config
        self.state = state
        self.command = command

    def deploy(self, target: Target, certificate_id: Any, pair: files.Pair) -> Deployed:
        leaf = files.leaf_der(pair.cert_pem)
        if leaf is None:
            return Deployed(False, f"certok's certificate {certificate_id} holds no certificate")
        journal = self.state.deploying(target.cert_path)
        backup = journal.get("backup") if journal else None
        if journal is None:
            backup = files.back_up(self._backup_dir(target), target.cert_path, target.key_path)
        self.state.begin_deploy(target.cert_path, certificate_id, backup)
        try:
            files.write_pair(target.cert_path, target.key_path, pair)
        except OSError as error:
            files.restore(backup, target.cert_path, target.key_path)
            self.state.end_deploy(target.cert_path)
            return Deployed(False, f"cannot write {error.filename}: {error.strerror}")
        failure = self._activate(target, leaf)
        if failure is None:
            self.state.end_deploy(target.cert_path)
            return Deployed(True, "deployed")
        files.restore(backup, target.cert_path, target.key_path)
        if not failure.startswith("nginx -t"):
            # The service may have loaded the new files: make it read the old ones again.
            again = self._reload(target)
            if not again.ok:
                failure += f"; reloading the restored files failed too: {again.output}"
        self.state.end_deploy(target.cert_path)
        return Deployed(False, failure + "; the previous files were restored")

    def _activate(self, target: Target, leaf: bytes) -> str | None:
        if target.uses_nginx:
            tested = self.command([*self.config.nginx, "-t"])
            if not tested.ok:
                return f"nginx -t failed: {_tail(tested.output)}"
        reloaded = self._reload(target)
        if not reloaded.ok:
            return f"reload failed: {_tail(reloaded.output)}"
        if target.check is None:
            return None
        name = target.names[0]
        if tls_probe.wait_for_leaf(target.check, name, leaf, self.config.verify_seconds):
            return None
        return (
            f"after the reload {target.check} still does not serve the new certificate for {name}"
        )

    def _reload(self, target: Target) -> Outcome:
        if target.reload is not None:
            return self.command(list(target.reload))
        return self.command([*self.config.nginx, "-s", "reload"])

    def _backup_dir(self, target: Target) -> str:
        tag = hashlib.sha256(target.cert_path.encode()).hexdigest()[:12]
        base = os.path.basename(target.cert_path) or "certificate"
        return os.path.join(self.state.backup_dir, f"{base}-{tag}")


def _tail(output: str, lines: int = 3) -> str:
    kept = [line for line in output.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "no output"
