"""An order's row as the driver reads and writes it: the snapshot, the saves, the lease.

The database sees few, small statements per step: the load reads only the columns a step
uses (never the certificate or the encrypted key) plus whether the order has challenge
material; saves are Core statements (`certok.db.writes.write`: on SQLite, the process's
writes share transactions) with no ORM unit of work.

Every save is fenced by the lease: a worker that lost its lease (it stalled past the lease
time and another worker took over) cannot overwrite the newer state.

The write jobs are module-level functions of plain arguments: a multi-process node runs them
in its writer process (certok.db.write_channel), which receives them pickled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, or_, select, update

from certok.certificates.records import IssuedCertificate, record_issued
from certok.challenge_solver import ChallengeSolver, Material, Presenter
from certok.db.cursor_statements import CursorStatement
from certok.db.models import ChallengeRecord, Order, OrderNotifyUrl, WebhookEndpoint
from certok.order_states import PENDING
from certok.orders.fenced_save import fenced_save, fenced_update
from certok.orders.issuing_save import issue_in_one_statement


class LeaseLost(Exception):
    """Another worker owns this order now; stop touching it."""


@dataclass(frozen=True)
class OrderSnapshot:
    """What one step knows about its order, read once when the step begins."""

    id: int
    tenant_id: int
    issuer: str
    algorithm: str
    challenge_type: str
    domains: list[str]
    acme_order_url: str | None
    acme_orders: int
    # Whether the encrypted key is saved; the blob itself stays in the database.
    has_key: bool
    csr_pem: str | None
    attempts: int
    reason: str | None
    deadline_at: dt.datetime
    created_at: dt.datetime
    # Whether challenge material existed when the step began. Only the lease holder writes
    # it, so without any there is nothing to read or remove until this step presents some.
    has_records: bool
    # The caller keeps driving the order itself while the next step is at most this many
    # seconds away; a later next attempt hands the lease back in the same save (None: never).
    hold_lease_for: float | None = None
    # The ACME profile asked for, and the certificate this order renews (certificates/).
    profile: str | None = None
    replaces_certificate_id: int | None = None
    # Whether the order's end has anyone to tell (`notifies` in SNAPSHOT_COLUMNS).
    notifies: bool = True


@dataclass(frozen=True)
class PresentedRecord:
    """Challenge material already stored for one authorization."""

    value: str
    created_at: dt.datetime
    answered_at: dt.datetime | None


# Core tables: the driver's statements skip the ORM (identity map, unit of work, and the
# synchronize_session evaluation of ORM-enabled UPDATEs), which cost more than the SQL.
ORDERS = Order.__table__
CHALLENGE_RECORDS = ChallengeRecord.__table__
_NOTIFY_URLS = OrderNotifyUrl.__table__
_ENDPOINTS = WebhookEndpoint.__table__

SNAPSHOT_COLUMNS = (
    ORDERS.c.id,
    ORDERS.c.tenant_id,
    ORDERS.c.issuer,
    ORDERS.c.algorithm,
    ORDERS.c.challenge_type,
    ORDERS.c.domains,
    ORDERS.c.acme_order_url,
    ORDERS.c.acme_orders,
    ORDERS.c.key_encrypted.is_not(None).label("has_key"),
    ORDERS.c.csr_pem,
    ORDERS.c.attempts,
    ORDERS.c.reason,
    ORDERS.c.deadline_at,
    ORDERS.c.created_at,
    exists().where(CHALLENGE_RECORDS.c.order_id == ORDERS.c.id).label("has_records"),
    ORDERS.c.profile,
    ORDERS.c.replaces_certificate_id,
    # Whether the order's end has anyone to tell (certok.events.outbox.order_finished): a
    # notifyUrl given with the order, or an enabled webhook endpoint of its tenant. Without
    # either, the save that ends the order runs without the outbox's hook: on PostgreSQL the
    # issuing statement alone, outside a transaction (`issuing_alone`).
    or_(
        exists().where(_NOTIFY_URLS.c.order_id == ORDERS.c.id),
        exists().where(
            _ENDPOINTS.c.tenant_id == ORDERS.c.tenant_id, _ENDPOINTS.c.disabled_at.is_(None)
        ),
    ).label("notifies"),
)


# Hot statements, built once: building a statement and its cache key costs several times
# what executing it does. Values come as bound parameters named b_* (an UPDATE's other
# parameters are its SET columns).
_LOAD = CursorStatement(
    select(*SNAPSHOT_COLUMNS).where(
        ORDERS.c.id == bindparam("b_order_id"),
        ORDERS.c.state == PENDING,
        ORDERS.c.lease_owner == bindparam("b_worker_id"),
    )
)
_SAVE = update(ORDERS).where(
    ORDERS.c.id == bindparam("b_order_id"), ORDERS.c.lease_owner == bindparam("b_worker_id")
)
_PRESENTED = CursorStatement(
    select(
        CHALLENGE_RECORDS.c.authz_url,
        CHALLENGE_RECORDS.c.value,
        CHALLENGE_RECORDS.c.created_at,
        CHALLENGE_RECORDS.c.answered_at,
    )
    .where(CHALLENGE_RECORDS.c.order_id == bindparam("b_order_id"))
    .order_by(CHALLENGE_RECORDS.c.id)
)
_MARK_ANSWERED = update(CHALLENGE_RECORDS).where(
    CHALLENGE_RECORDS.c.order_id == bindparam("b_order_id"),
    CHALLENGE_RECORDS.c.authz_url.in_(bindparam("b_authz_urls", expanding=True)),
)


# (connection, order id, now): called in the transaction that ends an order; returns how many
# webhook deliveries it queued.
FinishHook = Callable[[Connection, int, dt.datetime], int]


@dataclass(frozen=True)
class FinishingSave:
    """What a save that ended an order reports: `save_job` with a finish hook, and on
    PostgreSQL every issuing save (with or without the hook).

    `deliveries_queued`: the webhook deliveries the hook queued in the save's transaction, 0
    without a hook (the delivery worker needs waking only when there are some). On PostgreSQL
    the issuing statement also returns the certificate record's id and the order's key as
    stored, for the waiting requests' view (certok/orders/finished_row.py); None elsewhere."""

    deliveries_queued: int
    certificate_id: int | None = None
    key_encrypted: bytes | None = None


def load_snapshot(
    connection: Connection, order_id: int, worker_id: str, hold_lease_for: float | None
) -> OrderSnapshot | None:
    """The pending order `worker_id` holds the lease of, or None."""
    row = _LOAD.run(connection, {"b_order_id": order_id, "b_worker_id": worker_id}).first()
    if row is None:
        return None
    return snapshot_of(row, hold_lease_for)


def snapshot_of(row: Any, hold_lease_for: float | None) -> OrderSnapshot:
    """A row of `SNAPSHOT_COLUMNS` (a load, or the claim's RETURNING) as a snapshot."""
    return OrderSnapshot(
        id=row.id,
        tenant_id=row.tenant_id,
        issuer=row.issuer,
        algorithm=row.algorithm,
        challenge_type=row.challenge_type,
        domains=row.domains.split(","),
        acme_order_url=row.acme_order_url,
        acme_orders=row.acme_orders,
        has_key=bool(row.has_key),
        csr_pem=row.csr_pem,
        attempts=row.attempts,
        reason=row.reason,
        deadline_at=row.deadline_at,
        created_at=row.created_at,
        has_records=bool(row.has_records),
        hold_lease_for=hold_lease_for,
        profile=row.profile,
        replaces_certificate_id=row.replaces_certificate_id,
        notifies=bool(row.notifies),
    )


def read_presented(connection: Connection, order_id: int) -> dict[str, PresentedRecord]:
    """The order's stored challenge material by authorization URL."""
    rows = _PRESENTED.run(connection, {"b_order_id": order_id}).rows
    return {
        row.authz_url: PresentedRecord(row.value, row.created_at, row.answered_at) for row in rows
    }


def save_job(
    connection: Connection,
    *,
    order_id: int,
    worker_id: str,
    values: dict[str, Any],
    answered: list[str],
    answered_at: dt.datetime,
    drop_records: ChallengeSolver | None,
    certificate: IssuedCertificate | None = None,
    after: FinishHook | None = None,
) -> FinishingSave | None:
    """Save `values` under the lease; `drop_records`: the solver whose material all goes.

    On PostgreSQL a save of the shape `one_statement_save` names is one statement (see
    `_combined_save`); `OrderSaves` runs those outside a transaction. The issuing save is
    one statement there too (`issue_in_one_statement`), followed by `after` in its
    transaction. A save with `after` (one that ends the order), and PostgreSQL's issuing save
    without it, return what they report (`FinishingSave`); any other, None.
    """
    params = {**values, "b_order_id": order_id, "b_worker_id": worker_id}
    combined = (answered or drop_records is not None) and one_statement_save(
        answered, drop_records, certificate, after
    )
    if combined and connection.dialect.name == "postgresql":
        statement = _combined_save(tuple(sorted(values)), "answered" if answered else "drop")
        named = {f"v_{key}": value for key, value in values.items()}
        side = {"b_authz_urls": answered, "b_answered_at": answered_at} if answered else {}
        saved = statement.run(
            connection, {**named, **side, "b_order_id": order_id, "b_worker_id": worker_id}
        ).scalar()
        if saved != 1:
            raise LeaseLost(order_id)
        return None
    if (
        certificate is not None  # for the type checker: the next test says as much
        and one_issuing_statement(answered, drop_records, certificate)
        and connection.dialect.name == "postgresql"
    ):
        # The order, the certificate's record and the material's removal in one statement.
        saved_certificate = issue_in_one_statement(
            connection,
            order_id=order_id,
            worker_id=worker_id,
            values=values,
            certificate=certificate,
        )
        if saved_certificate is None:
            raise LeaseLost(order_id)
        certificate_id, key_encrypted = saved_certificate
        queued = 0 if after is None else after(connection, order_id, answered_at)
        return FinishingSave(queued, certificate_id, key_encrypted)
    if connection.dialect.name == "postgresql":
        named = {f"v_{key}": value for key, value in values.items()}
        saved_count = _plain_save(tuple(sorted(values))).run(
            connection, {**named, "b_order_id": order_id, "b_worker_id": worker_id}
        )
        if saved_count.rowcount != 1:
            raise LeaseLost(order_id)
    elif connection.execute(_SAVE, params).rowcount != 1:
        raise LeaseLost(order_id)
    if certificate is not None:
        record_issued(connection, order_id, certificate)
    if answered:
        write_answered(connection, order_id=order_id, authz_urls=answered, at=answered_at)
    if drop_records is not None:
        # Not announced to the DNS server (see ChallengeMaterial.remove).
        drop_records.cleanup(connection, order_id, None)
    if after is not None:
        return FinishingSave(after(connection, order_id, answered_at))
    return None


def one_statement_save(
    answered: list[str],
    drop_records: ChallengeSolver | None,
    certificate: IssuedCertificate | None,
    after: FinishHook | None,
) -> bool:
    """Whether `save_job` sends one statement on PostgreSQL: the order's UPDATE, alone or with
    either the answers' mark or the removal of all its challenge material (not both)."""
    return certificate is None and after is None and not (answered and drop_records is not None)


def issuing_alone(
    answered: list[str],
    drop_records: ChallengeSolver | None,
    certificate: IssuedCertificate | None,
    after: FinishHook | None,
) -> bool:
    """Whether `save_job` is the issuing save without a finish hook: one statement on
    PostgreSQL (`issue_in_one_statement`), and nothing after it."""
    return one_issuing_statement(answered, drop_records, certificate) and after is None


def one_issuing_statement(
    answered: list[str],
    drop_records: ChallengeSolver | None,
    certificate: IssuedCertificate | None,
) -> bool:
    """Whether `save_job`'s issuing save is `issue_in_one_statement` on PostgreSQL: the
    certificate, all the challenge material dropped, and no answer to mark."""
    return certificate is not None and drop_records is not None and not answered


# One statement per shape (the SET columns, and what goes with the save), built once.
_COMBINED: dict[tuple[tuple[str, ...], str], CursorStatement] = {}


def _combined_save(columns: tuple[str, ...], kind: str) -> CursorStatement:
    """The lease-fenced UPDATE of the order and, in the same statement, the mark of its
    answered challenges (`answered`) or the removal of all its challenge material (`drop`):
    PostgreSQL runs data-modifying WITH clauses once, on the same snapshot, and the second
    one touches the order's records only if the first one saved the order (the lease held).
    The removal is what every solver's `cleanup(connection, order_id, None)` does: delete the
    order's rows of challenge_records. The statement returns how many orders it saved."""
    statement = _COMBINED.get((columns, kind))
    if statement is not None:
        return statement
    saved = fenced_save(columns, [ORDERS.c.id])
    of_saved = CHALLENGE_RECORDS.c.order_id.in_(select(saved.c.id))
    side = (
        update(CHALLENGE_RECORDS)
        .where(
            of_saved,
            CHALLENGE_RECORDS.c.authz_url.in_(bindparam("b_authz_urls", expanding=True)),
        )
        .values(answered_at=bindparam("b_answered_at"))
        if kind == "answered"
        else delete(CHALLENGE_RECORDS).where(of_saved)
    )
    statement = CursorStatement(
        select(func.count().label("saved")).select_from(saved).add_cte(side.cte("side"))
    )
    _COMBINED[(columns, kind)] = statement
    return statement


_PLAIN: dict[tuple[str, ...], CursorStatement] = {}


def _plain_save(columns: tuple[str, ...]) -> CursorStatement:
    """The lease-fenced UPDATE of `columns` alone, built once per set of columns (`_SAVE`
    takes its SET columns from each call's parameters, which a statement compiled once
    cannot)."""
    statement = _PLAIN.get(columns)
    if statement is None:
        statement = CursorStatement(fenced_update(columns))
        _PLAIN[columns] = statement
    return statement


def write_answered(
    connection: Connection, *, order_id: int, authz_urls: list[str], at: dt.datetime
) -> None:
    connection.execute(
        _MARK_ANSWERED, {"answered_at": at, "b_order_id": order_id, "b_authz_urls": authz_urls}
    )


def remove_job(
    connection: Connection,
    *,
    solver: ChallengeSolver,
    order_id: int,
    authz_urls: list[str] | None,
) -> None:
    solver.cleanup(connection, order_id, authz_urls)


def present_job(
    connection: Connection,
    *,
    solver: ChallengeSolver,
    presenter: Presenter,
    material: list[Material],
    replaced_authz: list[str],
) -> None:
    """Present new material (replacing older values) if the worker still holds the lease."""
    if replaced_authz:
        solver.cleanup(connection, presenter.order_id, replaced_authz)
    if not solver.present(connection, presenter, material):
        raise LeaseLost(presenter.order_id)
