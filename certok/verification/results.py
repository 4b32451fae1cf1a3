"""What a verification answers (/v1/cert/dv): one item per name, and a fresh code when every
name passed. The code is what `apply` redeems to start an order (certok/orders/codes.py)."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock
from certok.db.writes import write_statement
from certok.orders.codes import issue_code


@dataclass(frozen=True)
class DvItem:
    domain: str
    type: str | None
    name: str | None
    value: str | None
    valid: bool
    cost_ms: int
    detail: str | None
    # Why an item is not valid, when the reason is not the customer's to fix (e.g.
    # resolverUnavailable: certok's resolvers failed); None otherwise.
    code: str | None = None


@dataclass(frozen=True)
class DvResult:
    code: str | None
    type: str
    items: list[DvItem]
    valid: bool
    cost_ms: int
    # type=http: the tenant-bound nginx block to paste
    nginx: str | None = None

    @property
    def problems(self) -> list[str]:
        return [item.detail for item in self.items if not item.valid and item.detail]


class CodeIssuer:
    """Turns checked items into a DvResult, with a fresh code when every item is valid."""

    def __init__(
        self, session_factory: sessionmaker[Session], code_ttl_seconds: int, clock: Clock
    ) -> None:
        self._sessions = session_factory
        self._code_ttl = code_ttl_seconds
        self._clock = clock

    async def result(
        self,
        tenant_id: int,
        challenge_type: str,
        domains: list[str],
        items: list[DvItem],
        started: float,
        nginx: str | None = None,
    ) -> DvResult:
        valid = all(item.valid for item in items)
        code = None
        if valid:
            code = await asyncio.to_thread(self._issue, tenant_id, challenge_type, domains)
        return DvResult(
            code=code,
            type=challenge_type,
            items=items,
            valid=valid,
            cost_ms=int((time.perf_counter() - started) * 1000),
            nginx=nginx,
        )

    def _issue(self, tenant_id: int, challenge_type: str, domains: list[str]) -> str:
        # One INSERT: on PostgreSQL a statement of its own, with no transaction around it.
        return write_statement(
            self._sessions,
            functools.partial(
                issue_code,
                tenant_id=tenant_id,
                challenge_type=challenge_type,
                domains=domains,
                ttl_seconds=self._code_ttl,
                clock=self._clock,
            ),
        )
