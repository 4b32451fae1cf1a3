"""What the agent remembers between runs, in `<state_dir>/state.json` (written atomically).

Per certificate path: the certok certificate it deployed (id, leaf fingerprint, notAfter,
renewAt as certok last said), the last result, and a certificate issued but not yet deployed.
`deploying` is the journal of a deployment in flight: a run that finds it knows the previous
run died between writing the files and proving nginx serves them, and finishes the job.
"""

from __future__ import annotations

import json
import os
from typing import Any

from certok_agent import files

STATE_FILE = "state.json"


class State:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.data: dict[str, Any] = {"certificates": {}, "deploying": {}}
        raw = files.read(self.path)
        if raw:
            try:
                loaded = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                loaded = None
            if isinstance(loaded, dict):
                self.data.update(loaded)

    @property
    def backup_dir(self) -> str:
        return os.path.join(self.state_dir, "backups")

    def certificate(self, cert_path: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.data["certificates"].setdefault(cert_path, {})
        return entry

    def deploying(self, cert_path: str) -> dict[str, Any] | None:
        journal: dict[str, Any] | None = self.data["deploying"].get(cert_path)
        return journal

    def begin_deploy(self, cert_path: str, certificate_id: Any, backup: str | None) -> None:
        self.data["deploying"][cert_path] = {"id": certificate_id, "backup": backup}
        self.save()

    def end_deploy(self, cert_path: str) -> None:
        self.data["deploying"].pop(cert_path, None)
        self.save()

    def save(self) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        encoded = json.dumps(self.data, indent=1, sort_keys=True).encode("utf-8")
        files.write_atomically(self.path, encoded, 0o600)
