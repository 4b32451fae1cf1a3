"""Purging: finished orders past their retention, and verification codes nobody can use.

What goes, and when:

- an order that finished (`issued` or `failure`) more than `order_retention_hours` ago, with
  its encrypted private key and certificate, the code that started it and any challenge
  records left behind (the driver already drops those when an order finishes);
- a certificate record (certok/certificates), `certificate_retention_days` after it expired,
  whatever became of its order: records outlive their orders;
- a code never redeemed, an hour after it expired. Until then `apply` with it answers
  "expired, call /v1/cert/dv again"; afterwards it answers "not found" like any unknown code.

A pending order is never touched, however old. Deletion runs in batches, each in its own
short transaction, because on SQLite every write transaction holds the process's writer lock
(see `certok.db.engine.transaction`) and the API and the worker must not wait long behind it.
A batch that held the database longer than `BATCH_SECONDS` halves the next one: deleting an
order makes the database look for codes still pointing at it, and without an index on
`verification_codes.order_id` that look is a scan of the whole table per order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.engine import transaction
from certok.db.models import (
    Certificate,
    CertificateName,
    CertificateSecret,
    ChallengeRecord,
    Order,
    VerificationCode,
)
from certok.db.results import rows_changed
from certok.order_states import FAILURE, ISSUED
from certok.settings import Settings

log = logging.getLogger(__name__)

# Most rows per transaction; with the indexes in place a batch this size takes milliseconds.
BATCH_SIZE = 500
# Longest a batch should hold the database; a slower one halves the next batch.
BATCH_SECONDS = 0.1
# The first batch: small, because how long a batch takes is known only after one ran.
FIRST_BATCH_SIZE = 25
# How long an unredeemed code outlives its expiry, so a late apply still hears "expired".
EXPIRED_CODE_GRACE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class PurgeCounts:
    """Rows deleted (or, in a dry run, that would be)."""

    orders: int = 0
    challenge_records: int = 0
    codes: int = 0
    certificates: int = 0

    @property
    def total(self) -> int:
        return self.orders + self.challenge_records + self.codes + self.certificates

    def __add__(self, other: PurgeCounts) -> PurgeCounts:
        return PurgeCounts(
            orders=self.orders + other.orders,
            challenge_records=self.challenge_records + other.challenge_records,
            codes=self.codes + other.codes,
            certificates=self.certificates + other.certificates,
        )

    def describe(self) -> str:
        text = (
            f"{self.orders} finished order(s) with {self.challenge_records} challenge "
            f"record(s), {self.codes} verification code(s)"
        )
        if self.certificates:
            text += f", {self.certificates} expired certificate record(s)"
        return text


def purge(
    sessions: sessionmaker[Session],
    retention_hours: float,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    code_grace: dt.timedelta = EXPIRED_CODE_GRACE,
    clock: Clock = utcnow,
    should_stop: Callable[[], bool] = lambda: False,
    certificate_retention_days: float | None = None,
) -> PurgeCounts:
    """Delete what has outlived its use (see the module docstring); return the counts.

    `should_stop` is asked between batches, so a shutting-down server need not wait for a
    long purge to finish; what was deleted so far stays deleted and is counted.
    Certificate records go only when `certificate_retention_days` is given.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = clock()
    old_orders = _finished_before(now - dt.timedelta(hours=retention_hours))
    dead_codes = _unredeemed_expired_before(now - code_grace)
    old_certificates = (
        Certificate.not_after < now - dt.timedelta(days=certificate_retention_days)
        if certificate_retention_days is not None
        else None
    )
    if dry_run:
        counts = _count(sessions, old_orders, dead_codes)
        if old_certificates is not None:
            with sessions() as session:
                found = session.scalar(
                    select(func.count()).select_from(Certificate).where(old_certificates)
                )
            counts += PurgeCounts(certificates=found or 0)
        return counts
    # Codes first: on a store that was never purged they are the bulk, and fewer of them
    # makes every later look-up in verification_codes cheaper.
    codes = _drain(
        lambda size: _delete_code_batch(sessions, dead_codes, size), batch_size, should_stop
    )
    orders = _drain(
        lambda size: _delete_order_batch(sessions, old_orders, size), batch_size, should_stop
    )
    certificates = PurgeCounts()
    if old_certificates is not None:
        certificates = _drain(
            lambda size: _delete_certificate_batch(sessions, old_certificates, size),
            batch_size,
            should_stop,
        )
    return codes + orders + certificates


def _delete_certificate_batch(
    sessions: sessionmaker[Session], expired: ColumnElement[bool], batch_size: int
) -> _Batch:
    """A batch of certificate records past expiry plus retention (an index on not_after
    finds them); nothing else points at them by foreign key."""
    candidates = _find_candidates(sessions, Certificate.id, expired, batch_size)
    if not candidates:
        return PurgeCounts(), 0, 0.0
    with transaction(sessions) as session:
        started = time.monotonic()
        ids = session.scalars(
            select(Certificate.id).where(Certificate.id.in_(candidates), expired)
        ).all()
        deleted = 0
        if ids:
            session.execute(delete(CertificateName).where(CertificateName.certificate_id.in_(ids)))
            session.execute(
                delete(CertificateSecret).where(CertificateSecret.certificate_id.in_(ids))
            )
            deleted = rows_changed(
                session.execute(delete(Certificate).where(Certificate.id.in_(ids)))
            )
    return PurgeCounts(certificates=deleted), len(candidates), time.monotonic() - started


# What one batch did: rows deleted, rows it selected, and how long it held the database.
_Batch = tuple[PurgeCounts, int, float]


def _drain(
    delete_batch: Callable[[int], _Batch], max_batch: int, should_stop: Callable[[], bool]
) -> PurgeCounts:
    """Run `delete_batch` until it finds fewer rows than it asked for."""
    total = PurgeCounts()
    size = min(FIRST_BATCH_SIZE, max_batch)
    while not should_stop():
        counts, selected, held = delete_batch(size)
        total += counts
        if selected < size:
            break
        size = next_batch_size(size, held, max_batch)
    return total


def next_batch_size(size: int, held_seconds: float, max_batch: int) -> int:
    """Halve after a batch that held the database too long; grow back after quick ones."""
    if held_seconds > BATCH_SECONDS:
        return max(1, size // 2)
    if held_seconds < BATCH_SECONDS / 4:
        return min(max_batch, size * 2)
    return size


def _finished_before(cutoff: dt.datetime) -> ColumnElement[bool]:
    # Issued and failed orders never change state again, so a row chosen by this condition
    # still matches when the same transaction deletes it.
    return and_(Order.state.in_((ISSUED, FAILURE)), Order.finished_at < cutoff)


def _unredeemed_expired_before(cutoff: dt.datetime) -> ColumnElement[bool]:
    return and_(VerificationCode.order_id.is_(None), VerificationCode.expires_at < cutoff)


def _count(
    sessions: sessionmaker[Session],
    old_orders: ColumnElement[bool],
    dead_codes: ColumnElement[bool],
) -> PurgeCounts:
    order_ids = select(Order.id).where(old_orders)
    with sessions() as session:
        orders = session.scalar(select(func.count()).select_from(Order).where(old_orders))
        records = session.scalar(
            select(func.count()).where(ChallengeRecord.order_id.in_(order_ids))
        )
        codes = session.scalar(
            select(func.count()).where(dead_codes | VerificationCode.order_id.in_(order_ids))
        )
    return PurgeCounts(orders=orders or 0, challenge_records=records or 0, codes=codes or 0)


def _delete_code_batch(
    sessions: sessionmaker[Session], dead_codes: ColumnElement[bool], batch_size: int
) -> _Batch:
    candidates = _find_candidates(sessions, VerificationCode.id, dead_codes, batch_size)
    if not candidates:
        return PurgeCounts(), 0, 0.0
    with transaction(sessions) as session:
        # Timed from inside: waiting for the writer lock is not holding it.
        started = time.monotonic()
        # Re-checked: a code redeemed since the look-up keeps its order readable.
        deleted = rows_changed(
            session.execute(
                delete(VerificationCode).where(VerificationCode.id.in_(candidates), dead_codes)
            )
        )
    return PurgeCounts(codes=deleted), len(candidates), time.monotonic() - started


def _delete_order_batch(
    sessions: sessionmaker[Session], old_orders: ColumnElement[bool], batch_size: int
) -> _Batch:
    """A batch of old orders and the rows that reference them (the foreign keys to
    orders.id: challenge_records.order_id and verification_codes.order_id)."""
    candidates = _find_candidates(sessions, Order.id, old_orders, batch_size)
    if not candidates:
        return PurgeCounts(), 0, 0.0
    with transaction(sessions) as session:
        started = time.monotonic()
        ids = session.scalars(select(Order.id).where(Order.id.in_(candidates), old_orders)).all()
        records = codes = orders = 0
        if ids:
            records = rows_changed(
                session.execute(delete(ChallengeRecord).where(ChallengeRecord.order_id.in_(ids)))
            )
            codes = rows_changed(
                session.execute(delete(VerificationCode).where(VerificationCode.order_id.in_(ids)))
            )
            orders = rows_changed(session.execute(delete(Order).where(Order.id.in_(ids))))
    counts = PurgeCounts(orders=orders, challenge_records=records, codes=codes)
    return counts, len(candidates), time.monotonic() - started


def _find_candidates(
    sessions: sessionmaker[Session],
    id_column: ColumnElement[int] | InstrumentedAttribute[int],
    condition: ColumnElement[bool],
    limit: int,
) -> Sequence[int]:
    """Ids of up to `limit` matching rows, read outside any write transaction.

    Finding them may scan many rows (there is no index on `finished_at` or `expires_at`),
    so it is done before taking the writer; the write re-checks each row by primary key.
    No ORDER BY: sorting every match costs more than the batch itself, and a scan meets the
    oldest rows first anyway (in primary-key order, or the due index's `next_attempt_at`).
    """
    with sessions() as session:
        return session.scalars(select(id_column).where(condition).limit(limit)).all()


async def run_purger(
    sessions: sessionmaker[Session], settings: Settings, interval_seconds: float
) -> None:
    """Purge now and then every `interval_seconds` until cancelled; 0 (or less) disables it.

    The purge runs in a thread; a failed run is logged and the next one tries again.
    """
    if interval_seconds <= 0:
        return
    stopping = threading.Event()
    try:
        while True:
            try:
                counts = await asyncio.to_thread(
                    purge,
                    sessions,
                    settings.order_retention_hours,
                    should_stop=stopping.is_set,
                    certificate_retention_days=settings.certificate_retention_days,
                )
            except Exception:
                log.warning("purge failed; retrying in %.0f s", interval_seconds, exc_info=True)
            else:
                if counts.total:
                    log.info("purged %s", counts.describe())
            await asyncio.sleep(interval_seconds)
    finally:
        # Cancelled mid-purge: the thread finishes its current batch and stops there.
        stopping.set()
