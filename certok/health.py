"""This process's readiness: a small registry of problems that make it unfit to serve.

Parts of certok that find something wrong which a restart or the operator must fix (the
database file replaced under a running process, say) report it here under a key of their
own; a readiness endpoint answers "not ready" while any problem is reported, with the
messages as its reasons. Process-wide and thread-safe: it is read far more often than
written, and a report costs a lock.
"""

from __future__ import annotations

import threading

__all__ = ["clear", "is_ready", "problems", "report"]

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


def is_ready() -> bool:
    """Whether no problem is reported (a plain read: no lock needed for a dict's emptiness)."""
    return not _problems


def problems() -> dict[str, str]:
    """The problems reported now, key → message (a copy)."""
    with _lock:
        return dict(_problems)
