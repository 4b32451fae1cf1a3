"""How a step ends: what the driver saves, and when the order is stepped next.

Every save is fenced by the lease (`certok.orders.rows.save_job`). What one step writes
after its last exchange with the CA goes in one transaction (on PostgreSQL, most often one
statement): the state or the next attempt
time, the last answer's mark, the lease handed back, challenge material no longer needed.
A poll the worker holds on to saves nothing: the next one follows in the same task.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from certok import metrics
from certok.certificates.records import IssuedCertificate, issued_certificate
from certok.challenge_solver import ChallengeSolver
from certok.clock import Clock
from certok.crypto import certificate_facts
from certok.db.writes import write, write_statement
from certok.issuance import AcmeProblem, ProblemKind
from certok.order_states import FAILURE, ISSUED
from certok.orders.acme_order_budget import BudgetWait
from certok.orders.carried import HAS_RECORDS, UNSURE
from certok.orders.finished_row import FinishedRow
from certok.orders.polling import poll_delay
from certok.orders.rows import (
    FinishHook,
    FinishingSave,
    OrderSnapshot,
    issuing_alone,
    one_statement_save,
    save_job,
)
from certok.orders.schedule import next_attempt

log = logging.getLogger(__name__)


class OrderSaves:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        worker_id: str,
        clock: Clock,
        poll_seconds: float,
        on_finished_in_transaction: FinishHook | None,
    ) -> None:
        self._sessions = sessions
        self._worker_id = worker_id
        self._clock = clock
        self._poll_seconds = poll_seconds
        # Runs in the transaction that ends an order (issued or failed): the events outbox
        # (certok.events.outbox.order_finished). A module-level function: it may be pickled.
        self._on_finished_tx = on_finished_in_transaction
        # What the save that ended an order wrote, until the worker hands it to the waiting
        # requests (`take_finished`). Worker threads set and pop distinct keys.
        self._finished: dict[int, FinishedRow] = {}
        # What the current step's saves wrote to each order's row (`take_written`), so the
        # driver can carry the order to its next step without reading it back.
        self._written: dict[int, dict[str, Any]] = {}

    def take_finished(self, order_id: int) -> FinishedRow | None:
        """What this process's last save of `order_id` wrote when it ended the order, once."""
        return self._finished.pop(order_id, None)

    def note_presented(self, order_id: int) -> None:
        """The step stored challenge material for the order (`ChallengeMaterial.present`)."""
        self._written.setdefault(order_id, {})[HAS_RECORDS] = True

    def distrust(self, order_id: int) -> None:
        """The step failed after a write that may have committed unseen (a connection lost
        after the commit): the next step reads the order (`snapshot_after`)."""
        self._written.setdefault(order_id, {})[UNSURE] = True

    def take_written(self, order_id: int) -> dict[str, Any]:
        """The columns this step's saves set on the order's row, and `HAS_RECORDS` when the
        step stored or removed all of its challenge material; once (`snapshot_after`)."""
        return self._written.pop(order_id, {})

    def save(
        self,
        order_id: int,
        *,
        drop_records: ChallengeSolver | None = None,
        answered: Sequence[str] = (),
        certificate: IssuedCertificate | None = None,
        finished: bool = False,
        notify: bool = True,
        **values: Any,
    ) -> FinishingSave | None:
        """Save `values` if we still hold the lease. In the same transaction, `answered` marks
        those authorizations' challenges as answered, and `drop_records` (the order's solver)
        removes all of the order's challenge material (a finished order, a new ACME order),
        so a crash can leave neither a finished order's material served nor a new order's
        half-saved. That removal runs even when the snapshot saw no material: it is the last
        guard against rows a worker that lost its lease wrote after this step's load.

        A save that ends the order (`finished`) runs the outbox's hook in its transaction,
        unless `notify` is false: the order's end has nobody to tell (`OrderSnapshot.notifies`).

        A save that is one statement (`one_statement_save`, `issuing_alone`) needs no
        transaction around it on PostgreSQL: `write_statement`."""
        after = self._on_finished_tx if finished and notify else None
        job = functools.partial(
            save_job,
            order_id=order_id,
            worker_id=self._worker_id,
            values=values,
            answered=list(answered),
            answered_at=self._clock(),
            drop_records=drop_records,
            certificate=certificate,
            after=after,
        )
        shape = (list(answered), drop_records, certificate, after)
        if one_statement_save(*shape) or issuing_alone(*shape):
            saved = write_statement(self._sessions, job)
        else:
            saved = write(self._sessions, job)
        written = self._written.setdefault(order_id, {})
        written.update(values)
        if drop_records is not None:
            written[HAS_RECORDS] = False
        return saved

    def next_attempt(
        self,
        order: OrderSnapshot,
        delay: float,
        answered: Sequence[str] = (),
        drop_records: ChallengeSolver | None = None,
        **values: Any,
    ) -> None:
        """Save when to come back; hand the lease back too when the caller will not hold it."""
        if order.hold_lease_for is not None and delay > order.hold_lease_for:
            values.update(lease_owner=None, lease_until=None)
        self.save(order.id, answered=answered, drop_records=drop_records, **values)

    def poll_later(
        self,
        order: OrderSnapshot,
        retry_after: dt.datetime | None,
        at_least: float = 0,
        answered: Sequence[str] = (),
        drop_records: ChallengeSolver | None = None,
    ) -> float:
        now = self._clock()
        delay = max(poll_delay(now - order.created_at, self._poll_seconds), at_least)
        if retry_after is not None:
            delay = max(delay, (retry_after - now).total_seconds())
        if (
            order.hold_lease_for is not None
            and delay <= order.hold_lease_for
            and order.attempts == 0
            and not answered
            and drop_records is None
        ):
            # The caller keeps the order and polls again in a moment: nothing to save. The row
            # still says when this ACME order was last changed (its creation, an answer), so
            # after a crash orders still waiting for their ACME order come first, and a worker
            # taking this one over simply polls it at once.
            return delay
        self.next_attempt(
            order,
            delay,
            answered,
            drop_records=drop_records,
            attempts=0,
            next_attempt_at=now + dt.timedelta(seconds=delay),
        )
        return delay

    def retry_later(
        self,
        order: OrderSnapshot,
        reason: str,
        retry_after: dt.datetime | None,
        **values: Any,
    ) -> float:
        now = self._clock()
        failures = order.attempts + 1
        when = next_attempt(now, failures, retry_after)
        delay = (when - now).total_seconds()
        self.next_attempt(
            order,
            delay,
            attempts=failures,
            reason=f"{reason} (retry {failures} at {when:%Y-%m-%d %H:%M:%S} UTC)",
            next_attempt_at=when,
            **values,
        )
        log.warning("order %s: retrying at %s: %s", order.id, when.isoformat(), reason)
        return delay

    def queue(self, order: OrderSnapshot, wait: BudgetWait) -> float:
        """Wait for a budget: not a failure (attempts stay), the reason says until when."""
        delay = max((wait.until - self._clock()).total_seconds(), 0.0)
        self.next_attempt(order, delay, reason=wait.reason, next_attempt_at=wait.until)
        return delay

    def on_problem(
        self, order: OrderSnapshot, problem: AcmeProblem, solver: ChallengeSolver | None
    ) -> float | None:
        if problem.kind in (ProblemKind.RETRYABLE, ProblemKind.RATE_LIMITED):
            return self.retry_later(order, f"{problem.type}: {problem.detail}", problem.retry_after)
        self.fail(order, f"{problem.type}: {problem.detail}", solver)
        return None

    def fail(self, order: OrderSnapshot, reason: str, solver: ChallengeSolver | None) -> None:
        """End the order without a certificate; its challenge material goes with it."""
        now = self._clock()
        saved = self.save(
            order.id,
            drop_records=solver,
            finished=True,
            notify=order.notifies,
            state=FAILURE,
            reason=reason,
            finished_at=now,
            lease_owner=None,
            lease_until=None,
        )
        self._finished[order.id] = FinishedRow(
            order.id,
            FAILURE,
            order.issuer,
            ",".join(order.domains),
            reason,
            deliveries_queued=_queued(order, saved),
        )
        log.warning("order %s failed: %s", order.id, reason)
        metrics.order_finished(
            order.issuer, False, reason, (now - order.created_at).total_seconds()
        )

    def issue(
        self, order: OrderSnapshot, fullchain: str, solver: ChallengeSolver, *, ari: bool
    ) -> None:
        facts = certificate_facts(fullchain)
        now = self._clock()
        # The certificate's record is written in the same transaction (certificates/records).
        record = issued_certificate(fullchain, now, ari=ari)
        saved = self.save(
            order.id,
            certificate=record,
            drop_records=solver,
            finished=True,
            notify=order.notifies,
            state=ISSUED,
            reason=None,
            certificate_pem=fullchain,
            subject=facts.subject,
            not_before=facts.not_before,
            not_after=facts.not_after,
            finished_at=now,
            lease_owner=None,
            lease_until=None,
        )
        if saved is not None and saved.certificate_id is not None:
            # PostgreSQL's issuing statement returned what it stored.
            self._finished[order.id] = FinishedRow(
                order.id,
                ISSUED,
                order.issuer,
                ",".join(order.domains),
                None,
                not_before=facts.not_before,
                not_after=facts.not_after,
                certificate_pem=fullchain,
                subject=facts.subject,
                key_encrypted=saved.key_encrypted,
                certificate_id=saved.certificate_id,
                renew_at=record.renew_at,
                deliveries_queued=_queued(order, saved),
            )
        log.info("order %s issued for %s", order.id, ",".join(order.domains))
        metrics.order_finished(order.issuer, True, None, (now - order.created_at).total_seconds())


def _queued(order: OrderSnapshot, saved: FinishingSave | None) -> int | None:
    """The deliveries an order's end queued: none when it had nobody to tell; what the hook
    reported otherwise (None: not known, the save did not say)."""
    if not order.notifies:
        return 0
    return None if saved is None else saved.deliveries_queued
