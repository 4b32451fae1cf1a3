"""The order-time ownership gate, called from worker threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class OwnershipVerifier(Protocol):
    def ownership_problem(self, tenant_id: int, domains: list[str]) -> str | None:
        """Blocking: why the names are not (or no longer) this tenant's, or None."""
        ...


class Ownership:
    """Runs the verifier for the order's challenge type: every name must still be this tenant's."""

    def __init__(self, verifiers: dict[str, OwnershipVerifier]) -> None:
        self._verifiers = verifiers

    def __call__(self, tenant_id: int, challenge_type: str, domains: list[str]) -> str | None:
        verifier = self._verifiers.get(challenge_type)
        if verifier is None:
            return f"validation type {challenge_type!r} is not available on this server"
        return verifier.ownership_problem(tenant_id, domains)


_LOCAL = threading.local()


def run_in_thread_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion on this thread's own event loop.

    Worker threads have no event loop: each keeps one for the checks that are coroutines (a
    new loop per check also started and stopped a thread pool every time).
    """
    runner: asyncio.Runner | None = getattr(_LOCAL, "runner", None)
    if runner is None:
        runner = _LOCAL.runner = asyncio.Runner()
    return runner.run(coroutine)
