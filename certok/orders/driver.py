"""The order driver: the RFC 8555 state machine, one ACME step per call, state saved between.

Each call to `OrderDriver.step` loads the order, does one exchange with the CA (fetching the
order and its authorizations counts as one), saves what it learned with the next attempt time,
and says how long to wait before the next step. A restart therefore resumes the same ACME
order from its saved URL instead of starting over. The load is skipped when the worker has the
order at hand: the claim's row for the first step, and for a step that follows another in the
same worker, the order as that step's saves left it (`take_carried`, `snapshot_after`: only
the lease holder writes what a step reads, whoever else changes the order takes the lease
away first, and a snapshot is carried only from a step whose save the lease let through).

Requests to the CA are the costliest part of a step, so none is sent twice: the answer to
newOrder is used as the order (only its authorizations are read after it), and a poll of an
order whose challenges are all answered reads the order alone (`authorizations_needed`).

The driver names no challenge type: the order's type picks a `ChallengeSolver` from the
mapping the wiring code passes in (`certok.challenge_solver`). The row's reads and writes are
`certok.orders.rows`; how a step ends (saves, polls, retries) is `certok.orders.saves`.
Writes that must precede an exchange stay in transactions of their own, committed before it:
the ACME order URL (with the new key and CSR) before its authorizations are read, the
challenge material before a challenge is answered, an answer's mark before the next answer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from certok.certificates.ordering import new_order_for
from certok.challenge_solver import ChallengeSolver, ExplainsMissingChallenge
from certok.clock import Clock, utcnow
from certok.crypto import (
    SecretBox,
    generate_private_key,
    make_csr,
    order_key_owner,
    private_key_to_pem,
)
from certok.db.engine import opened
from certok.errors import CertokError, Unavailable
from certok.issuance import (
    STATUS_INVALID,
    STATUS_PENDING,
    STATUS_PROCESSING,
    STATUS_READY,
    STATUS_VALID,
    AcmeProblem,
    AuthzInfo,
    ChallengeInfo,
    OrderInfo,
    ProblemKind,
    valid_token,
)
from certok.orders.accounts import AccountRegistry, IssuerAccount
from certok.orders.acme_order_budget import AcmeOrderBudget
from certok.orders.ca_verdicts import answered_before, first_authz_error
from certok.orders.carried import snapshot_after
from certok.orders.finished_row import FinishedRow
from certok.orders.material import ChallengeMaterial
from certok.orders.polling import authorizations_needed
from certok.orders.rows import (
    FinishHook,
    LeaseLost,
    OrderSnapshot,
    PresentedRecord,
    load_snapshot,
)
from certok.orders.saves import OrderSaves
from certok.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["LeaseLost", "OrderDriver", "OwnershipCheck", "SolverRegistry"]

# How many times a failed ownership re-check is retried before the order fails: a passing
# DNS blip must not fail an order whose delegation was verified seconds ago.
OWNERSHIP_RETRIES = 2
# A failed validation (dns, connection, unauthorized, …) kills that authorization; certok then
# tries a new ACME order (after the ownership pre-check passes again) up to this many in all.
MAX_ACME_ORDERS = 3


# (tenant id, challenge type, names) → why the tenant may not order them now, or None.
OwnershipCheck = Callable[[int, str, list[str]], str | None]
# certok's challenge type of an order (`orders.challenge_type`) → its solver.
SolverRegistry = Mapping[str, ChallengeSolver]


class OrderDriver:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        box: SecretBox,
        accounts: AccountRegistry,
        ownership: OwnershipCheck,
        *,
        worker_id: str,
        solvers: SolverRegistry,
        on_challenge_records_changed: Callable[[], None] | None = None,
        clock: Clock = utcnow,
        on_finished_in_transaction: FinishHook | None = None,
        budget: AcmeOrderBudget | None = None,
    ) -> None:
        self._sessions = session_factory
        self._budget = budget
        self._box = box
        self._accounts = accounts
        self._ownership = ownership
        self._worker_id = worker_id
        self._solvers = solvers
        self._clock = clock
        self._material = ChallengeMaterial(
            session_factory,
            worker_id=worker_id,
            clock=clock,
            on_changed=on_challenge_records_changed,
        )
        self._saves = OrderSaves(
            session_factory,
            worker_id=worker_id,
            clock=clock,
            poll_seconds=settings.acme_poll_seconds,
            on_finished_in_transaction=on_finished_in_transaction,
        )
        # The snapshot a step hands to the order's next step (`take_carried`). Worker threads
        # set and pop distinct keys.
        self._carried: dict[int, OrderSnapshot] = {}

    def take_finished(self, order_id: int) -> FinishedRow | None:
        """What the step that ended `order_id` saved (for the waiting requests), once."""
        return self._saves.take_finished(order_id)

    def take_carried(self, order_id: int) -> OrderSnapshot | None:
        """The order as the last step left it, for the next step, once; None when that step
        gave no such snapshot (the next step then loads the order)."""
        return self._carried.pop(order_id, None)

    # --- entry point ---------------------------------------------------------------------
    def step(
        self,
        order_id: int,
        *,
        hold_lease_for: float | None = None,
        snapshot: OrderSnapshot | None = None,
    ) -> float | None:
        """Advance the order by one step. Returns seconds until the next step, None when done.

        With `hold_lease_for`, a next step further away than that releases the lease in the
        step's own save (the caller will not keep the order); without it the lease is kept.
        `snapshot`: the order as the claim that just leased it returned it, or as the previous
        step left it (`take_carried`), instead of a load. A step the caller keeps the order
        after (within `hold_lease_for`) leaves its order's snapshot to `take_carried`.
        """
        order: OrderSnapshot | None
        if snapshot is not None and snapshot.id == order_id:
            order = dataclasses.replace(snapshot, hold_lease_for=hold_lease_for)
        else:
            # A connection, not a session: a load runs for many steps of every order.
            with opened(self._sessions).read_connection() as connection:
                order = load_snapshot(connection, order_id, self._worker_id, hold_lease_for)
        if order is None:
            return None
        try:
            delay = self._step(order)
        finally:  # taken even from a step that raised: nothing stays for its next step
            written = self._saves.take_written(order_id)
        if delay is not None and hold_lease_for is not None and delay <= hold_lease_for:
            # The lease is kept and the caller drives the order on: what this step wrote is
            # all that changed (`snapshot_after`), so the next step needs no read.
            carried = snapshot_after(order, written)
            if carried is not None:
                self._carried[order_id] = carried
        return delay

    def _step(self, order: OrderSnapshot) -> float | None:
        solver = self._solvers.get(order.challenge_type)
        if solver is None:
            # Nothing was presented without a solver: there is no material to remove.
            self._saves.fail(order, f"no solver for challenge type {order.challenge_type}", None)
            return None
        if self._clock() > order.deadline_at:
            reason = f"gave up at the order deadline; last problem: {order.reason}"
            self._saves.fail(order, reason, solver)
            return None
        try:
            account = self._accounts.account(order.issuer)
            if order.acme_order_url is None:
                return self._begin(order, solver, account)
            info = account.session.fetch_order(order.acme_order_url, include_authorizations=False)
            # Stored answers matter only while the order is pending: no read otherwise.
            presented = self._material.presented(order) if info.status == STATUS_PENDING else {}
            if authorizations_needed(info, presented, self._clock()):
                info = account.session.fetch_authorizations(info)
            return self._advance(order, solver, account, info, presented)
        except AcmeProblem as problem:
            return self._saves.on_problem(order, problem, solver)
        except LeaseLost:
            raise
        except Unavailable as error:
            # A part of certok is restarting (the writer process): not the order's fault.
            self._saves.distrust(order.id)
            return self._saves.retry_later(order, error.message, None)
        except CertokError as error:
            self._saves.fail(order, error.message, solver)
            return None
        except Exception:
            # A bug or an unexpected failure must not spin: back off like a retryable problem.
            log.exception("order %s: unexpected error", order.id)
            self._saves.distrust(order.id)
            return self._saves.retry_later(order, "internal error (see the server log)", None)

    # --- steps -----------------------------------------------------------------------------
    def _begin(
        self, order: OrderSnapshot, solver: ChallengeSolver, account: IssuerAccount
    ) -> float | None:
        # The shared account's budget and the tenant's cap (acme_order_budget.py): a known
        # wait costs nothing; a place is taken only after the ownership check has passed.
        if self._budget is not None and (
            wait := self._budget.waiting(order.issuer, order.tenant_id)
        ):
            return self._saves.queue(order, wait)
        # The CA may reuse an authorization it validated earlier for the shared ACME account,
        # so certok's own check gates every order, at the moment the order goes out.
        problem = self._ownership(order.tenant_id, order.challenge_type, order.domains)
        if problem is not None:
            if order.attempts < OWNERSHIP_RETRIES:
                return self._saves.retry_later(order, problem, None)
            self._saves.fail(order, problem, solver)
            return None
        if self._budget is not None and (
            wait := self._budget.reserve(
                order_id=order.id, tenant_id=order.tenant_id, issuer=order.issuer
            )
        ):
            return self._saves.queue(order, wait)
        csr_pem = order.csr_pem
        key_values: dict[str, Any] = {}
        if csr_pem is None or not order.has_key:
            # The CA sees the CSR only at finalization: key and CSR are saved with the ACME
            # order's URL below, and a crash before that save makes both afresh.
            key = generate_private_key(order.algorithm)
            csr_pem = make_csr(key, order.domains)
            key_values = {
                "key_encrypted": self._box.encrypt(
                    private_key_to_pem(key).encode("ascii"), order_key_owner(order.id)
                ),
                "csr_pem": csr_pem,
            }
        # The URL is saved the moment the CA has made the order, before its authorizations
        # are read: a crash in between must resume this ACME order, not create another.
        created = new_order_for(self._sessions, account.session, order, csr_pem.encode("ascii"))
        acme_orders = order.acme_orders + 1
        self._saves.save(
            order.id, acme_order_url=created.url, acme_orders=acme_orders, **key_values
        )
        log.info("order %s: ACME order %s created at %s", order.id, created.url, order.issuer)
        # The save succeeded under our lease: the snapshot plus what it wrote is the row now.
        order = dataclasses.replace(
            order,
            acme_order_url=created.url,
            acme_orders=acme_orders,
            csr_pem=csr_pem,
            has_key=True,
        )
        # The CA's answer to newOrder is the order itself: only its authorizations are read.
        info = created
        if authorizations_needed(created, {}, self._clock()):
            info = account.session.fetch_authorizations(created)
        return self._advance(order, solver, account, info)

    def _advance(
        self,
        order: OrderSnapshot,
        solver: ChallengeSolver,
        account: IssuerAccount,
        info: OrderInfo,
        presented: dict[str, PresentedRecord] | None = None,
    ) -> float | None:
        """`presented`: the stored challenge material, when the step has read it already."""
        if info.status == STATUS_INVALID:
            # "invalid": The certificate will not be issued. Consider this order process abandoned.
            reason = info.error or first_authz_error(info) or "the CA marked the order invalid"
            dead = any(
                a.error_kind == ProblemKind.AUTHORIZATION_INVALID for a in info.authorizations
            )
            return self._start_over_or_fail(order, solver, reason, dead)
        if info.status == STATUS_PENDING:
            return self._work_on_authorizations(order, solver, account, info, presented)
        # Every authorization is valid: the challenge material has done its work and goes
        # with this step's closing save (the CA does not look at it again).
        drop_records = solver if order.has_records else None
        if info.status == STATUS_READY:
            # "ready": The server agrees that the requirements have been fulfilled, and is
            # awaiting finalization. Submit a finalization request.
            assert order.csr_pem is not None
            info = account.session.finalize(info, order.csr_pem.encode("ascii"))
            if info.status != STATUS_VALID:
                return self._saves.poll_later(order, info.retry_after, drop_records=drop_records)
        if info.status == STATUS_PROCESSING:
            return self._saves.poll_later(order, info.retry_after, drop_records=drop_records)
        if info.status == STATUS_VALID and info.certificate_url:
            fullchain = account.session.download_certificate(info.certificate_url)
            ari = account.session.renewal_info_url() is not None
            self._saves.issue(order, fullchain, solver, ari=ari)
            return None
        return self._saves.poll_later(order, info.retry_after, drop_records=drop_records)

    def _work_on_authorizations(
        self,
        order: OrderSnapshot,
        solver: ChallengeSolver,
        account: IssuerAccount,
        info: OrderInfo,
        presented: dict[str, PresentedRecord] | None,
    ) -> float | None:
        wanted = solver.acme_type
        to_answer: list[tuple[AuthzInfo, ChallengeInfo]] = []
        finished_authz: list[str] = []
        for authz in info.authorizations:
            if authz.status == STATUS_VALID:
                finished_authz.append(authz.url)
                continue
            if authz.status != STATUS_PENDING:
                # RFC 8555 §7.1.6: invalid, deactivated, expired and revoked are final.
                reason = authz.error or f"authorization for {authz.identifier} is {authz.status}"
                dead = authz.error_kind == ProblemKind.AUTHORIZATION_INVALID
                return self._start_over_or_fail(order, solver, reason, dead)
            challenge = next((c for c in authz.challenges if c.type == wanted), None)
            if challenge is None:
                reason = f"the CA offered no {wanted} challenge for {authz.identifier}"
                if isinstance(solver, ExplainsMissingChallenge):
                    reason += f": {solver.missing_challenge_hint()}"
                self._saves.fail(order, reason, solver)
                return None
            if not valid_token(challenge.token):
                reason = f"the CA sent a malformed challenge token for {authz.identifier}"
                self._saves.fail(order, reason, solver)
                return None
            if challenge.status == STATUS_PENDING:
                to_answer.append((authz, challenge))
        if presented is None:
            presented = self._material.presented(order) if to_answer or finished_authz else {}
        finished_with_records = [url for url in finished_authz if url in presented]
        if finished_with_records:
            self._material.remove(solver, order.id, finished_with_records)
        if not to_answer:
            return self._saves.poll_later(order, info.retry_after)
        ready = self._material.present(order, solver, account.key, to_answer, presented)
        self._saves.note_presented(order.id)
        # Each answer is saved before the next exchange; the last one goes with the step's
        # closing save, which follows it at once.
        answered: list[str] = []
        for index, (authz_url, challenge) in enumerate(ready):
            try:
                account.session.answer_challenge(challenge.url)
            except AcmeProblem as problem:
                if not answered_before(account, authz_url, challenge.url, problem):
                    raise
            if index < len(ready) - 1:
                self._material.mark_answered(order.id, [authz_url])
            else:
                answered.append(authz_url)
        if len(ready) < len(to_answer) and solver.settle_seconds > 0:
            return self._saves.poll_later(
                order, None, at_least=solver.settle_seconds, answered=answered
            )
        return self._saves.poll_later(order, info.retry_after, answered=answered)

    def _start_over_or_fail(
        self, order: OrderSnapshot, solver: ChallengeSolver, reason: str, dead: bool
    ) -> float | None:
        """A dead authorization: a new ACME order (ownership re-checked first), within limits.

        Either way the dead order's challenge material goes, in the same transaction as the
        failure or the forgotten ACME order URL.
        """
        if not dead or order.acme_orders >= MAX_ACME_ORDERS:
            self._saves.fail(order, reason, solver)
            return None
        return self._saves.retry_later(
            order,
            f"validation failed; trying a new ACME order: {reason}",
            None,
            drop_records=solver,
            acme_order_url=None,
        )
