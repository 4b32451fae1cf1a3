"""Health checks behind `/readyz`: a registry of named checks, each saying what is wrong.

A check is a blocking callable returning None when all is well, else the reason in a few
words ("database unreachable: connection refused"). The runtime registers the database, DNS
listener and worker heartbeat checks; other parts add theirs with ``add``. `/healthz` runs no
check: it answers while the process serves HTTP at all (liveness).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Check = Callable[[], str | None]


class HealthChecks:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    def run(self) -> dict[str, str]:
        """Each check's result: "ok" or its reason (a check that raises reports the error)."""
        results = {}
        for name, check in list(self._checks.items()):
            try:
                problem = check()
            except Exception as exc:
                problem = f"check failed: {type(exc).__name__}: {exc}"
            results[name] = "ok" if problem is None else problem
        return results
