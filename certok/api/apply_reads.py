"""apply's reads of stored codes, gathered across concurrent polls (`certok.api.batched_reads`).

A poll that the process's cache of issued answers cannot answer reads its code and the code's
order. The fast path (`certok.api.fastpath`) asks here first: an issued order's answer is
rendered in the reading thread and served at once; anything else goes down the full route
with the code's row attached to the request (`prefetched`), so the route does not read it
again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Scope

from certok.api.batched_reads import BatchedReads
from certok.api.order_answers import encoded_issued_data, encoded_issued_row
from certok.crypto import SecretBox
from certok.db.engine import APPLY_READ_THREADS, opened
from certok.order_states import ISSUED
from certok.orders.code_reads import CodeRead, read_codes
from certok.orders.service import issued_key_pem

# Where the fast path leaves what it read for the full route, in the request's state.
_PREFETCHED = "certok.apply_code"


@dataclass(frozen=True)
class CodeAnswer:
    """A stored code as read, and its order's issued answer (the data, encoded) if issued."""

    read: CodeRead
    issued_answer: bytes | None


class ApplyReads:
    """Stored codes read in batches; `get(tenant_id, code)` is None for a code that is not
    stored or is another tenant's."""

    def __init__(self, sessions: sessionmaker[Session], box: SecretBox) -> None:
        self._sessions = sessions
        self._box = box
        self._batches: BatchedReads[tuple[int, str], CodeAnswer] = BatchedReads(
            self._read, max_running=APPLY_READ_THREADS
        )

    async def get(self, tenant_id: int, code: str) -> CodeAnswer | None:
        return await self._batches.get((tenant_id, code))

    def _read(self, wanted: Sequence[tuple[int, str]]) -> dict[tuple[int, str], CodeAnswer]:
        with opened(self._sessions).read_connection() as connection:
            reads = read_codes(connection, wanted, self._box)
        return {
            (read.tenant_id, read.code): CodeAnswer(read, _issued_answer(read, self._box))
            for read in reads
        }


def _issued_answer(read: CodeRead, box: SecretBox) -> bytes | None:
    order = read.order_row
    if order is None or order.state != ISSUED:
        return None
    key_pem = issued_key_pem(order, box)
    if key_pem is None:  # issued without its certificate or key: as its view shows it
        assert read.view is not None
        return encoded_issued_data(read.view)
    return encoded_issued_row(order, key_pem)


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
