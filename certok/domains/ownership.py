"""The order-time ownership gate, callable from worker threads."""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol


class OwnershipVerifier(Protocol):
    async def ownership_problem(self, tenant_id: int, domains: list[str]) -> str | None: ...


class Ownership:
    """Runs the verifier for the order's challenge type: every name must still be this tenant's."""

    def __init__(self, verifiers: dict[str, OwnershipVerifier]) -> None:
        self._verifiers = verifiers
        self._local = threading.local()

    def __call__(self, tenant_id: int, challenge_type: str, domains: list[str]) -> str | None:
        verifier = self._verifiers.get(challenge_type)
        if verifier is None:
            return f"validation type {challenge_type!r} is not available on this server"
        # Worker threads have no event loop of their own: each keeps one for its checks (a
        # new loop per check also started and stopped a thread pool every time).
        runner: asyncio.Runner | None = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = asyncio.Runner()
        return runner.run(verifier.ownership_problem(tenant_id, domains))
