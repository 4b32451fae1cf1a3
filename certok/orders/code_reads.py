"""Many apply codes read in one statement: each code's row and its order's view.

`/v1/cert/apply` is polled by many scripts at once. Each poll that is not answered from the
process's cache needs the code's row and, once the code has an order, that order's view.
Reading the codes of all polls waiting at one moment in one statement (`certok.api.apply_reads`
gathers them) costs one round trip and one thread hop for the lot, instead of one of each per
poll. The statement runs on the driver's cursor with the driver's values
(`certok.db.cursor_statements`): SQLAlchemy's work around an execution costs more than the read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, bindparam, case, select

from certok.crypto import SecretBox
from certok.db.cursor_statements import CursorStatement
from certok.db.engine import SessionFactory
from certok.db.loop_reads import LoopReads, on_loop_reads_supported
from certok.db.models import Certificate, Order, VerificationCode
from certok.db.models.base import stored_utc, untyped
from certok.db.models.tenants import CODE_READ_INDEX
from certok.db.sqlite_index_hints import indexed_by
from certok.orders.service import VIEW_COLUMNS, OrderView, view_of_row

_CODES = VerificationCode.__table__
_ORDERS = Order.__table__
_CERTIFICATES = Certificate.__table__

# SQLite, without statistics, takes the code's unique index (one row, then a table page for
# the code's other columns); this index holds every column read of the code.
_CODES_AND_ORDERS = indexed_by(
    select(
        _CODES.c.code,
        _CODES.c.tenant_id,
        _CODES.c.order_id,
        untyped(_CODES.c.expires_at),
        # A code with an order is answered from the order's view: its names are read only
        # for a code still to be redeemed, so SQLite seeks the code's table row (it defers the
        # seek past the index until a column outside it is needed) only for such a code.
        case((_CODES.c.order_id.is_(None), _CODES.c.domains), else_=None).label("code_domains"),
        *VIEW_COLUMNS,
    )
    .select_from(
        _CODES.outerjoin(_ORDERS, _ORDERS.c.id == _CODES.c.order_id).outerjoin(
            _CERTIFICATES, _CERTIFICATES.c.order_id == _ORDERS.c.id
        )
    )
    .where(_CODES.c.code.in_(bindparam("b_codes", expanding=True))),
    _CODES,
    CODE_READ_INDEX,
)
_READ_CODES = CursorStatement(_CODES_AND_ORDERS, driver_values=True)


@dataclass(frozen=True)
class CodeRead:
    """A stored verification code, as apply needs it: whose it is, and its order if any.

    Its expiry and view are made from the row only when asked for: a poll of an issued code
    is answered from the row itself (`certok.api.apply_reads`), and needs neither."""

    code: str
    tenant_id: int
    order_id: int | None
    # The names the code verified (comma-separated), what a first redemption orders; None
    # once the code has an order (its view has them).
    domains: str | None
    # The row as read (the driver's values, times as stored) and the box its key opens with.
    row: Any = field(repr=False, compare=False)
    box: SecretBox = field(repr=False, compare=False)

    @cached_property
    def expires_at(self) -> dt.datetime:
        expires: dt.datetime = stored_utc(self.row.expires_at)
        return expires

    @cached_property
    def view(self) -> OrderView | None:
        """The order's view (certificate and decrypted key included once issued); None while
        the code has no order, or when its order row is gone."""
        return None if self.row.id is None else view_of_row(self.row, self.box)


def read_codes(
    connection: Connection, wanted: Sequence[tuple[int, str]], box: SecretBox
) -> list[CodeRead]:
    """The stored codes among `wanted` ((tenant id, code) pairs) that are their tenant's, with
    their orders' rows. A code that is not stored, or is another tenant's, is left out (and
    its order's key is never decrypted); the caller decides what that means."""
    return [code_read(row, box) for row in read_code_rows(connection, wanted)]


def read_code_rows(connection: Connection, wanted: Sequence[tuple[int, str]]) -> list[Any]:
    """`read_codes`' rows, as the driver gives them (`code_read` makes a `CodeRead` of one):
    for a caller that answers an issued code from its row alone."""
    if not wanted:
        return []
    asking = _tenants_by_code(wanted)
    return _theirs(_READ_CODES.rows(connection, {"b_codes": list(asking)}), asking)


def code_rows_on_loop(factory: SessionFactory, *, most: int) -> LoopReads | None:
    """What `start_code_rows` reads with, on a database that takes reads from the event loop
    (`certok.db.loop_reads`: PostgreSQL); None on any other."""
    if not on_loop_reads_supported(factory):
        return None
    return LoopReads(factory, _CODES_AND_ORDERS, most=most)


def start_code_rows(
    reads: LoopReads,
    wanted: Sequence[tuple[int, str]],
    done: Callable[[list[Any] | None, BaseException | None], None],
) -> bool:
    """`read_code_rows` sent from the running event loop: `done` is called there with the
    rows (the driver's values, as `read_code_rows` gives them) or the error. False: it could
    not be sent now (`LoopReads.start`), and `done` is never called."""
    asking = _tenants_by_code(wanted)

    def theirs(rows: Sequence[Any] | None, error: BaseException | None) -> None:
        done(None if rows is None else _theirs(rows, asking), error)

    return reads.start(list(asking), theirs)


def _tenants_by_code(wanted: Sequence[tuple[int, str]]) -> dict[str, set[int]]:
    asking: dict[str, set[int]] = {}
    for tenant_id, code in wanted:
        asking.setdefault(code, set()).add(tenant_id)
    return asking


def _theirs(rows: Sequence[Any], asking: dict[str, set[int]]) -> list[Any]:
    # A stored code is answered only to the tenant it belongs to.
    return [row for row in rows if row.tenant_id in asking.get(row.code, ())]


def code_read(row: Any, box: SecretBox) -> CodeRead:
    """The `CodeRead` of a row of `read_code_rows`."""
    return CodeRead(
        code=row.code,
        tenant_id=row.tenant_id,
        order_id=row.order_id,
        domains=row.code_domains,
        row=row,
        box=box,
    )
