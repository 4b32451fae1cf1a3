"""apply's reads of stored codes, gathered across concurrent polls (`certok.api.batched_reads`).

A poll that the process's cache of issued answers cannot answer reads its code and the code's
order: on PostgreSQL sent from the event loop itself (`certok.db.loop_reads`); on SQLite, or
while the loop has no connection free, on a reader thread. The fast path
(`certok.api.fastpath`) asks here first: an issued order's answer is rendered where the rows
arrive and served at once; anything else goes down the full route with the code's row
attached to the request (`prefetched`), so the route does not read it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Scope

from certok.api.batched_reads import Answer, BatchedReads
from certok.api.order_answers import encoded_issued_data, encoded_issued_row
from certok.crypto import SecretBox
from certok.db.engine import APPLY_READ_THREADS, opened
from certok.db.held_reads import HeldReads
from certok.order_states import ISSUED
from certok.orders.code_reads import (
    CodeRead,
    code_read,
    code_rows_on_loop,
    read_code_rows,
    start_code_rows,
)
from certok.orders.service import issued_key_pem, view_of_row

# Where the fast path leaves what it read for the full route, in the request's state.
_PREFETCHED = "certok.apply_code"


# What a read finds of a stored code: its order's issued answer (the data, encoded), or what
# the full route needs of a code that is not issued.
CodeAnswer = bytes | CodeRead


class ApplyReads:
    """Stored codes read in batches; `get(tenant_id, code)` is None for a code that is not
    stored or is another tenant's."""

    def __init__(self, sessions: sessionmaker[Session], box: SecretBox) -> None:
        self._box = box
        # On PostgreSQL a batch is sent from the event loop (certok.db.loop_reads); on a
        # thread when it cannot be (SQLite, or no loop connection free or open yet).
        self._on_loop = code_rows_on_loop(opened(sessions), most=APPLY_READ_THREADS)
        self._batches: BatchedReads[tuple[int, str], CodeAnswer] = BatchedReads(
            self._read,
            max_running=APPLY_READ_THREADS,
            start_read=None if self._on_loop is None else self._start_on_loop,
        )
        # One kept connection per batch that may run at once (certok.db.held_reads).
        self._connections = HeldReads(sessions, most=APPLY_READ_THREADS)

    async def get(self, tenant_id: int, code: str) -> CodeAnswer | None:
        return await self._batches.get((tenant_id, code))

    def _read(self, wanted: Sequence[tuple[int, str]]) -> dict[tuple[int, str], CodeAnswer]:
        with self._connections.connection() as connection:
            rows = read_code_rows(connection, wanted)
        return self._answers(rows)

    def _start_on_loop(self, wanted: Sequence[tuple[int, str]], answer: Answer) -> bool:
        assert self._on_loop is not None

        def answered(rows: list[Any] | None, error: BaseException | None) -> None:
            found: dict[tuple[int, str], CodeAnswer] = {}
            if rows is not None:
                try:
                    found = self._answers(rows)
                except Exception as unanswerable:
                    error = unanswerable
            answer(found, error)

        return start_code_rows(self._on_loop, wanted, answered)

    def _answers(self, rows: list[Any]) -> dict[tuple[int, str], CodeAnswer]:
        return {(row.tenant_id, row.code): self._answer(row) for row in rows}

    def _answer(self, row: Any) -> CodeAnswer:
        # An issued code is answered from its row: no view, no datetimes (`encoded_issued_row`).
        if row.id is not None and row.state == ISSUED:
            key_pem = issued_key_pem(row, self._box)
            if key_pem is not None:
                return encoded_issued_row(row, key_pem)
            # Issued without its certificate or key: answered as its view shows it.
            return encoded_issued_data(view_of_row(row, self._box))
        return code_read(row, self._box)


def leave_for_route(scope: Scope, code: str, read: CodeRead | None) -> None:
    """Attach what was read of `code` (None: not stored, or another tenant's) to the request,
    for the full route."""
    scope.setdefault("state", {})[_PREFETCHED] = (code, read)


def prefetched(scope: Scope, code: str) -> tuple[bool, CodeRead | None]:
    """(True, the read) when the fast path already read `code` for this request (the read is
    None when the code is not the tenant's); (False, None) when the route must read it."""
    left = scope.get("state", {}).get(_PREFETCHED)
    if left is None or left[0] != code:
        return False, None
    read: CodeRead | None = left[1]
    return True, read
