"""Health checks behind `/readyz`: named checks, and problems reported by certok's own parts.

A check is a blocking callable returning None when all is well, else the reason in a few
words ("database unreachable: connection refused"). The runtime registers the database, DNS
listener and worker heartbeat checks; other parts add theirs with ``add``. `/healthz` runs no
check: it answers while the process serves HTTP at all (liveness).

Parts that find something wrong which a restart or the operator must fix (the database file
replaced under a running process, say) `report` it under a key of their own instead: the
process is not ready while any such problem stands, and `/readyz` lists it with the checks.
That registry is process-wide and thread-safe: it is read far more often than written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Check = Callable[[], str | None]

_lock = threading.Lock()
_problems: dict[str, str] = {}


def report(key: str, message: str) -> None:
    """Mark this process not ready because of `message` (replaces an earlier one for `key`)."""
    with _lock:
        _problems[key] = message


def clear(key: str) -> None:
    """The problem reported under `key` is gone."""
    with _lock:
        _problems.pop(key, None)


def reporter(key: str) -> Callable[[str | None], None]:
    """A callback that reports each problem it is given under `key`, and clears it on None."""

    def report_or_clear(problem: str | None) -> None:
        if problem is None:
            clear(key)
        else:
            report(key, problem)

    return report_or_clear


def is_ready() -> bool:
    """Whether no problem is reported (a plain read: no lock needed for a dict's emptiness)."""
    return not _problems


def problems() -> dict[str, str]:
    """The problems reported now, key → message (a copy)."""
    with _lock:
        return dict(_problems)


class HealthChecks:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    def run(self) -> dict[str, str]:
        """Each check's result: "ok" or its reason (a check that raises reports the error),
        then each reported problem under its key."""
        results = {}
        for name, check in list(self._checks.items()):
            try:
                problem = check()
            except Exception as exc:
                problem = f"check failed: {type(exc).__name__}: {exc}"
            results[name] = "ok" if problem is None else problem
        results.update(problems())
        return results
