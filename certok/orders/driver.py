"""The order driver: one ACME step per call, state saved in between.

Each call to `OrderDriver.step` loads the order, does one exchange with the CA (fetching the
order and its authorizations counts as one), saves what it learned with the next attempt time,
and says how long to wait before the next step. A restart therefore resumes the same ACME
order from its saved URL instead of starting over.

Requests to the CA are the costliest part of a step, so none is sent twice: the answer to
newOrder is used as the order (only its authorizations are read after it), and a poll of an
order whose challenges are all answered reads the order alone (`authorizations_needed`).

Every save is fenced by the lease: a worker that lost its lease (it stalled past the lease
time and another worker took over) cannot overwrite the newer state.

The database sees few, small statements per step: the load reads only the columns a step
uses (never the certificate or the encrypted key) plus whether the order has challenge
material; saves are Core statements (`certok.db.writes.write`: on SQLite, the process's writes
share transactions) with no ORM unit of work; what one step writes after its last exchange
with the CA goes in one transaction (the state or the next attempt time, the last answer's
mark, the lease handed back, challenge material no longer needed). Writes that must precede
an exchange stay in transactions of their own, committed before it: the ACME order URL (with
the new key and CSR) before its authorizations are read, the challenge material before a
challenge is answered, an answer's mark before the next answer. A poll the worker holds on to
saves nothing: the next one follows in the same task.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from certok import metrics
from certok.certificates.ordering import new_order_for
from certok.certificates.records import IssuedCertificate, issued_certificate, record_issued
from certok.clock import Clock, utcnow
from certok.crypto import (
    SecretBox,
    certificate_facts,
    generate_private_key,
    make_csr,
    private_key_to_pem,
)
from certok.db.models import ChallengeRecord, Delegation, Order
from certok.db.writes import write
from certok.errors import CertokError, Unavailable
from certok.http01.store import HTTP01_KIND, record_name
from certok.issuance import (
    AcmeProblem,
    AuthzInfo,
    ChallengeInfo,
    OrderInfo,
    ProblemKind,
    dns01_txt_value,
    http01_key_authorization,
    valid_token,
)
from certok.orders.accounts import AccountRegistry, IssuerAccount
from certok.orders.acme_order_budget import AcmeOrderBudget, BudgetWait
from certok.orders.schedule import next_attempt
from certok.orders.service import FAILURE, ISSUED, PENDING, order_key_owner
from certok.settings import Settings

log = logging.getLogger(__name__)

# RFC 8555 §7.1.6 status words.
STATUS_PENDING = "pending"
STATUS_READY = "ready"
STATUS_PROCESSING = "processing"
STATUS_VALID = "valid"
STATUS_INVALID = "invalid"

CHALLENGE_FOR_TYPE = {"dns": "dns-01", "http": "http-01"}
MAX_POLL_SECONDS = 10.0
# How many times a failed ownership re-check is retried before the order fails: a passing
# DNS blip must not fail an order whose delegation was verified seconds ago.
OWNERSHIP_RETRIES = 2
# A failed validation (dns, connection, unauthorized, …) kills that authorization; certok then
# tries a new ACME order (after the ownership pre-check passes again) up to this many in all.
MAX_ACME_ORDERS = 3
# While every challenge of a pending order was answered less than this long ago, a poll reads
# the order alone (see authorizations_needed).
AUTHZ_RECHECK_SECONDS = 10.0


# (tenant id, challenge type, names) → why the tenant may not order them now, or None.
OwnershipCheck = Callable[[int, str, list[str]], str | None]


# Core tables: the driver's statements skip the ORM (identity map, unit of work, and the
# synchronize_session evaluation of ORM-enabled UPDATEs), which cost more than the SQL.
ORDERS = Order.__table__
CHALLENGE_RECORDS = ChallengeRecord.__table__
DELEGATIONS = Delegation.__table__


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


@dataclass(frozen=True)
class PresentedRecord:
    """Challenge material already stored for one authorization."""

    value: str
    created_at: dt.datetime
    answered_at: dt.datetime | None


_SNAPSHOT_COLUMNS = (
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
)


# Hot statements, built once: building a statement and its cache key costs several times
# what executing it does (a snapshot load: 276 µs built per call, 42 µs prebuilt). Values
# come as bound parameters named b_* (an UPDATE's other parameters are its SET columns).
_LOAD = select(*_SNAPSHOT_COLUMNS).where(
    ORDERS.c.id == bindparam("b_order_id"),
    ORDERS.c.state == PENDING,
    ORDERS.c.lease_owner == bindparam("b_worker_id"),
)
_SAVE = update(ORDERS).where(
    ORDERS.c.id == bindparam("b_order_id"), ORDERS.c.lease_owner == bindparam("b_worker_id")
)
_LEASE_OWNER = select(ORDERS.c.lease_owner).where(ORDERS.c.id == bindparam("b_order_id"))
_LEASE_AND_LABELS = (
    select(ORDERS.c.lease_owner, DELEGATIONS.c.base_name, DELEGATIONS.c.label)
    .select_from(
        ORDERS.outerjoin(
            DELEGATIONS,
            (DELEGATIONS.c.tenant_id == bindparam("b_tenant_id"))
            & DELEGATIONS.c.base_name.in_(bindparam("b_identifiers", expanding=True)),
        )
    )
    .where(ORDERS.c.id == bindparam("b_order_id"))
)
_PRESENTED = (
    select(
        CHALLENGE_RECORDS.c.authz_url,
        CHALLENGE_RECORDS.c.value,
        CHALLENGE_RECORDS.c.created_at,
        CHALLENGE_RECORDS.c.answered_at,
    )
    .where(CHALLENGE_RECORDS.c.order_id == bindparam("b_order_id"))
    .order_by(CHALLENGE_RECORDS.c.id)
)
_OF_AUTHORIZATIONS = (
    CHALLENGE_RECORDS.c.order_id == bindparam("b_order_id"),
    CHALLENGE_RECORDS.c.authz_url.in_(bindparam("b_authz_urls", expanding=True)),
)
_MARK_ANSWERED = update(CHALLENGE_RECORDS).where(*_OF_AUTHORIZATIONS)
_DROP_RECORDS = delete(CHALLENGE_RECORDS).where(
    CHALLENGE_RECORDS.c.order_id == bindparam("b_order_id")
)
_DROP_SOME_RECORDS = delete(CHALLENGE_RECORDS).where(*_OF_AUTHORIZATIONS)
_INSERT_RECORDS = insert(CHALLENGE_RECORDS)


# (connection, order id, now): called in the transaction that ends an order.
FinishHook = Callable[[Connection, int, dt.datetime], None]


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
        on_challenge_records_changed: Callable[[], None] | None = None,
        clock: Clock = utcnow,
        on_finished_in_transaction: FinishHook | None = None,
        budget: AcmeOrderBudget | None = None,
    ) -> None:
        self._sessions = session_factory
        # Runs in the transaction that ends an order (issued or failed): the events outbox
        # (certok.events.outbox.order_finished). A module-level function: it may be pickled.
        self._on_finished_tx = on_finished_in_transaction
        self._budget = budget
        self._settings = settings
        self._box = box
        self._accounts = accounts
        self._ownership = ownership
        self._worker_id = worker_id
        self._records_changed = on_challenge_records_changed
        self._clock = clock
        self._propagation_seconds = settings.effective_challenge_propagation_seconds

    # --- entry point ---------------------------------------------------------------------
    def step(self, order_id: int, *, hold_lease_for: float | None = None) -> float | None:
        """Advance the order by one step. Returns seconds until the next step, None when done.

        With `hold_lease_for`, a next step further away than that releases the lease in the
        step's own save (the caller will not keep the order); without it the lease is kept.
        """
        order = self._load(order_id, hold_lease_for)
        if order is None:
            return None
        if self._clock() > order.deadline_at:
            self._fail(order, f"gave up at the order deadline; last problem: {order.reason}")
            return None
        try:
            account = self._accounts.account(order.issuer)
            if order.acme_order_url is None:
                return self._begin(order, account)
            info = account.session.fetch_order(order.acme_order_url, include_authorizations=False)
            # Stored answers matter only while the order is pending: no read otherwise.
            presented = self._presented(order) if info.status == STATUS_PENDING else {}
            if authorizations_needed(info, presented, self._clock()):
                info = account.session.fetch_authorizations(info)
            return self._advance(order, account, info, presented)
        except AcmeProblem as problem:
            return self._on_problem(order, problem)
        except LeaseLost:
            raise
        except Unavailable as error:
            # A part of certok is restarting (the writer process): not the order's fault.
            return self._retry_later(order, error.message, None)
        except CertokError as error:
            self._fail(order, error.message)
            return None
        except Exception:
            # A bug or an unexpected failure must not spin: back off like a retryable problem.
            log.exception("order %s: unexpected error", order.id)
            return self._retry_later(order, "internal error (see the server log)", None)

    # --- steps -----------------------------------------------------------------------------
    def _begin(self, order: OrderSnapshot, account: IssuerAccount) -> float | None:
        # The shared account's budget and the tenant's cap (acme_order_budget.py): a known
        # wait costs nothing; a place is taken only after the ownership check has passed.
        if self._budget is not None and (
            wait := self._budget.waiting(order.issuer, order.tenant_id)
        ):
            return self._queue(order, wait)
        problem = self._ownership_problem(order)
        if problem is not None:
            if order.attempts < OWNERSHIP_RETRIES:
                return self._retry_later(order, problem, None)
            self._fail(order, problem)
            return None
        if self._budget is not None and (
            wait := self._budget.reserve(
                order_id=order.id, tenant_id=order.tenant_id, issuer=order.issuer
            )
        ):
            return self._queue(order, wait)
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
        self._save(order.id, acme_order_url=created.url, acme_orders=acme_orders, **key_values)
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
        return self._advance(order, account, info)

    def _advance(
        self,
        order: OrderSnapshot,
        account: IssuerAccount,
        info: OrderInfo,
        presented: dict[str, PresentedRecord] | None = None,
    ) -> float | None:
        """`presented`: the stored challenge material, when the step has read it already."""
        if info.status == STATUS_INVALID:
            # "invalid": The certificate will not be issued. Consider this order process abandoned.
            reason = info.error or _first_authz_error(info) or "the CA marked the order invalid"
            dead = any(a.error_kind == ProblemKind.AUTHORIZATION_DEAD for a in info.authorizations)
            return self._start_over_or_fail(order, reason, dead)
        if info.status == STATUS_PENDING:
            return self._work_on_authorizations(order, account, info, presented)
        # Every authorization is valid: the challenge material has done its work and goes
        # with this step's closing save (the CA does not look at it again).
        drop_records = order.has_records
        if info.status == STATUS_READY:
            # "ready": The server agrees that the requirements have been fulfilled, and is
            # awaiting finalization. Submit a finalization request.
            assert order.csr_pem is not None
            info = account.session.finalize(info, order.csr_pem.encode("ascii"))
            if info.status != STATUS_VALID:
                return self._poll_later(order, info.retry_after, drop_records=drop_records)
        if info.status == STATUS_PROCESSING:
            return self._poll_later(order, info.retry_after, drop_records=drop_records)
        if info.status == STATUS_VALID and info.certificate_url:
            fullchain = account.session.download_certificate(info.certificate_url)
            self._issue(order, fullchain, account)
            return None
        return self._poll_later(order, info.retry_after, drop_records=drop_records)

    def _work_on_authorizations(
        self,
        order: OrderSnapshot,
        account: IssuerAccount,
        info: OrderInfo,
        presented: dict[str, PresentedRecord] | None,
    ) -> float | None:
        wanted = CHALLENGE_FOR_TYPE[order.challenge_type]
        to_answer: list[tuple[AuthzInfo, ChallengeInfo]] = []
        finished_authz: list[str] = []
        for authz in info.authorizations:
            if authz.status == STATUS_VALID:
                finished_authz.append(authz.url)
                continue
            if authz.status != STATUS_PENDING:
                # RFC 8555 §7.1.6: invalid, deactivated, expired and revoked are final.
                reason = authz.error or f"authorization for {authz.identifier} is {authz.status}"
                dead = authz.error_kind == ProblemKind.AUTHORIZATION_DEAD
                return self._start_over_or_fail(order, reason, dead)
            challenge = next((c for c in authz.challenges if c.type == wanted), None)
            if challenge is None:
                self._fail(
                    order,
                    f"the CA offered no {wanted} challenge for {authz.identifier}"
                    + (": wildcard names need type=dns" if wanted == "http-01" else ""),
                )
                return None
            if not valid_token(challenge.token):
                self._fail(order, f"the CA sent a malformed challenge token for {authz.identifier}")
                return None
            if challenge.status == STATUS_PENDING:
                to_answer.append((authz, challenge))
        if presented is None:
            presented = self._presented(order) if to_answer or finished_authz else {}
        finished_with_records = [url for url in finished_authz if url in presented]
        if finished_with_records:
            self._remove_challenge_records(order.id, finished_with_records)
        if not to_answer:
            return self._poll_later(order, info.retry_after)
        ready = self._present(order, account, to_answer, presented)
        # Each answer is saved before the next exchange; the last one goes with the step's
        # closing save, which follows it at once.
        answered: list[str] = []
        for index, (authz_url, challenge) in enumerate(ready):
            try:
                account.session.answer_challenge(challenge.url)
            except AcmeProblem as problem:
                if not self._answered_before(account, authz_url, challenge.url, problem):
                    raise
            if index < len(ready) - 1:
                self._mark_answered(order.id, [authz_url])
            else:
                answered.append(authz_url)
        if len(ready) < len(to_answer) and self._propagation_seconds > 0:
            return self._poll_later(
                order, None, at_least=self._propagation_seconds, answered=answered
            )
        return self._poll_later(order, info.retry_after, answered=answered)

    @staticmethod
    def _answered_before(
        account: IssuerAccount, authz_url: str, challenge_url: str, problem: AcmeProblem
    ) -> bool:
        """Whether a refused answer only means the CA already has an earlier one.

        After a crash between answering and saving that fact, the restarted driver answers
        again; if the first answer arrived meanwhile, the challenge is no longer pending and
        the CA refuses the second (Pebble: `malformed`). The next fetch shows the outcome.
        """
        if problem.kind is not ProblemKind.REJECTED:
            return False
        authz = account.session.fetch_authorization(authz_url)
        current = next((c for c in authz.challenges if c.url == challenge_url), None)
        return current is not None and current.status != STATUS_PENDING

    # --- challenge material -----------------------------------------------------------------
    def _presented(self, order: OrderSnapshot) -> dict[str, PresentedRecord]:
        """The order's stored challenge material by authorization URL."""
        if not order.has_records:
            return {}
        with self._reading() as connection:
            rows = connection.execute(_PRESENTED, {"b_order_id": order.id})
            return {
                row.authz_url: PresentedRecord(row.value, row.created_at, row.answered_at)
                for row in rows
            }

    def _present(
        self,
        order: OrderSnapshot,
        account: IssuerAccount,
        items: list[tuple[AuthzInfo, ChallengeInfo]],
        presented: dict[str, PresentedRecord],
    ) -> list[tuple[str, ChallengeInfo]]:
        """Store the challenge material; return the challenges every DNS node serves by now.

        Material goes to the database, where every node's DNS server finds it within its
        refresh interval; a challenge is answered only after that (at once in one process,
        where the refresh is synchronous). `presented` is what the order had stored when
        the step began; material already there with the same value is not written again.
        """
        now = self._clock()
        is_dns = order.challenge_type == "dns"
        # HTTP-01 material is read from the database per request: every node has it at once.
        propagation = self._propagation_seconds if is_dns else 0.0
        settled_before = now - dt.timedelta(seconds=propagation)
        ready_urls: set[str] = set()
        fresh: list[tuple[AuthzInfo, ChallengeInfo, str]] = []
        for authz, challenge in items:
            if is_dns:
                value = dns01_txt_value(account.key, challenge.token)
            else:
                value = http01_key_authorization(account.key, challenge.token)
            existing = presented.get(authz.url)
            if existing is not None and existing.value == value:
                if existing.answered_at is None and existing.created_at <= settled_before:
                    ready_urls.add(authz.url)
                continue
            fresh.append((authz, challenge, value))
            if propagation <= 0:
                ready_urls.add(authz.url)
        if fresh:
            replaced = [authz.url for authz, _, _ in fresh if authz.url in presented]
            self._store_material(order, fresh, replaced, now)
            self._notify_records_changed()
        return [(authz.url, challenge) for authz, challenge in items if authz.url in ready_urls]

    def _store_material(
        self,
        order: OrderSnapshot,
        fresh: list[tuple[AuthzInfo, ChallengeInfo, str]],
        replaced_authz: list[str],
        now: dt.datetime,
    ) -> None:
        """Write new challenge material (replacing older values) if we still hold the lease."""
        material = [
            Material(authz.identifier, authz.url, challenge.token, value)
            for authz, challenge, value in fresh
        ]
        write(
            self._sessions,
            functools.partial(
                _store_material_job,
                order_id=order.id,
                tenant_id=order.tenant_id,
                worker_id=self._worker_id,
                is_dns=order.challenge_type == "dns",
                material=material,
                replaced_authz=replaced_authz,
                now=now,
            ),
        )

    def _mark_answered(self, order_id: int, authz_urls: Sequence[str]) -> None:
        write(
            self._sessions,
            functools.partial(
                _write_answered, order_id=order_id, authz_urls=list(authz_urls), at=self._clock()
            ),
        )

    def _remove_challenge_records(self, order_id: int, authz_urls: list[str] | None = None) -> None:
        # Removals are not announced: nobody waits for them, and the DNS server's periodic
        # refresh (`dns_refresh_seconds`) stops serving the values soon enough. Waiting for a
        # reload here would hold the worker thread for nothing.
        write(
            self._sessions,
            functools.partial(_remove_records_job, order_id=order_id, authz_urls=authz_urls),
        )

    def _notify_records_changed(self) -> None:
        if self._records_changed is not None:
            self._records_changed()

    # --- ownership ---------------------------------------------------------------------------
    def _ownership_problem(self, order: OrderSnapshot) -> str | None:
        """Why this tenant may not order these names now, or None.

        The CA may reuse an authorization it validated earlier for the shared ACME account,
        so certok's own check gates every order, at the moment the order goes out.
        """
        return self._ownership(order.tenant_id, order.challenge_type, order.domains)

    # --- saving state ------------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._sessions() as session:
            yield session.connection()

    def _load(self, order_id: int, hold_lease_for: float | None) -> OrderSnapshot | None:
        with self._reading() as connection:
            row = connection.execute(
                _LOAD, {"b_order_id": order_id, "b_worker_id": self._worker_id}
            ).first()
        if row is None:
            return None
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
        )

    def _save(
        self,
        order_id: int,
        *,
        drop_records: bool = False,
        answered: Sequence[str] = (),
        certificate: IssuedCertificate | None = None,
        finished: bool = False,
        **values: Any,
    ) -> None:
        """Save `values` if we still hold the lease. In the same transaction, `answered` marks
        those authorizations' challenges as answered, and `drop_records` removes all of the
        order's challenge material (a finished order, a new ACME order), so a crash can
        leave neither a finished order's material served nor a new order's half-saved.
        That DELETE runs even when the snapshot saw no material: it is the last guard
        against rows a worker that lost its lease wrote after this step's load."""
        write(
            self._sessions,
            functools.partial(
                _save_job,
                order_id=order_id,
                worker_id=self._worker_id,
                values=values,
                answered=list(answered),
                answered_at=self._clock(),
                drop_records=drop_records,
                certificate=certificate,
                after=self._on_finished_tx if finished else None,
            ),
        )

    def _save_next_attempt(
        self,
        order: OrderSnapshot,
        delay: float,
        answered: Sequence[str] = (),
        drop_records: bool = False,
        **values: Any,
    ) -> None:
        """Save when to come back; hand the lease back too when the caller will not hold it."""
        if order.hold_lease_for is not None and delay > order.hold_lease_for:
            values.update(lease_owner=None, lease_until=None)
        self._save(order.id, answered=answered, drop_records=drop_records, **values)

    def _poll_later(
        self,
        order: OrderSnapshot,
        retry_after: dt.datetime | None,
        at_least: float = 0,
        answered: Sequence[str] = (),
        drop_records: bool = False,
    ) -> float:
        now = self._clock()
        delay = max(_poll_delay(now - order.created_at, self._settings.acme_poll_seconds), at_least)
        if retry_after is not None:
            delay = max(delay, (retry_after - now).total_seconds())
        if (
            order.hold_lease_for is not None
            and delay <= order.hold_lease_for
            and order.attempts == 0
            and not answered
            and not drop_records
        ):
            # The caller keeps the order and polls again in a moment: nothing to save. The row
            # still says when this ACME order was last changed (its creation, an answer), so
            # after a crash orders still waiting for their ACME order come first, and a worker
            # taking this one over simply polls it at once.
            return delay
        self._save_next_attempt(
            order,
            delay,
            answered,
            drop_records=drop_records,
            attempts=0,
            next_attempt_at=now + dt.timedelta(seconds=delay),
        )
        return delay

    def _retry_later(
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
        self._save_next_attempt(
            order,
            delay,
            attempts=failures,
            reason=f"{reason} (retry {failures} at {when:%Y-%m-%d %H:%M:%S} UTC)",
            next_attempt_at=when,
            **values,
        )
        log.warning("order %s: retrying at %s: %s", order.id, when.isoformat(), reason)
        return delay

    def _queue(self, order: OrderSnapshot, wait: BudgetWait) -> float:
        """Wait for a budget: not a failure (attempts stay), the reason says until when."""
        delay = max((wait.until - self._clock()).total_seconds(), 0.0)
        self._save_next_attempt(order, delay, reason=wait.reason, next_attempt_at=wait.until)
        return delay

    def _on_problem(self, order: OrderSnapshot, problem: AcmeProblem) -> float | None:
        if problem.kind in (ProblemKind.RETRYABLE, ProblemKind.RATE_LIMITED):
            return self._retry_later(
                order, f"{problem.type}: {problem.detail}", problem.retry_after
            )
        self._fail(order, f"{problem.type}: {problem.detail}")
        return None

    def _start_over_or_fail(self, order: OrderSnapshot, reason: str, dead: bool) -> float | None:
        """A dead authorization: a new ACME order (ownership re-checked first), within limits.

        Either way the dead order's challenge material goes, in the same transaction as the
        failure or the forgotten ACME order URL.
        """
        if not dead or order.acme_orders >= MAX_ACME_ORDERS:
            self._fail(order, reason)
            return None
        return self._retry_later(
            order,
            f"validation failed; trying a new ACME order: {reason}",
            None,
            drop_records=True,
            acme_order_url=None,
        )

    def _fail(self, order: OrderSnapshot, reason: str) -> None:
        now = self._clock()
        self._save(
            order.id,
            drop_records=True,
            finished=True,
            state=FAILURE,
            reason=reason,
            finished_at=now,
            lease_owner=None,
            lease_until=None,
        )
        log.warning("order %s failed: %s", order.id, reason)
        metrics.order_finished(
            order.issuer, False, reason, (now - order.created_at).total_seconds()
        )

    def _issue(self, order: OrderSnapshot, fullchain: str, account: IssuerAccount) -> None:
        facts = certificate_facts(fullchain)
        now = self._clock()
        # The certificate's record is written in the same transaction (certificates/records).
        record = issued_certificate(
            fullchain,
            now,
            ari=account.session.renewal_info_url() is not None,
        )
        self._save(
            order.id,
            certificate=record,
            drop_records=True,
            finished=True,
            state=ISSUED,
            reason=None,
            certificate_pem=fullchain,
            not_before=facts.not_before,
            not_after=facts.not_after,
            finished_at=now,
            lease_owner=None,
            lease_until=None,
        )
        log.info("order %s issued for %s", order.id, ",".join(order.domains))
        metrics.order_finished(order.issuer, True, None, (now - order.created_at).total_seconds())


# --- write jobs ------------------------------------------------------------------------------
# Module-level functions of plain arguments: a multi-process node runs them in its writer
# process (certok.db.write_channel), which receives them pickled.


@dataclass(frozen=True)
class Material:
    """One authorization's challenge material, as stored."""

    identifier: str
    authz_url: str
    token: str
    value: str


def _save_job(
    connection: Connection,
    *,
    order_id: int,
    worker_id: str,
    values: dict[str, Any],
    answered: list[str],
    answered_at: dt.datetime,
    drop_records: bool,
    certificate: IssuedCertificate | None = None,
    after: FinishHook | None = None,
) -> None:
    result = connection.execute(_SAVE, {**values, "b_order_id": order_id, "b_worker_id": worker_id})
    if result.rowcount != 1:
        raise LeaseLost(order_id)
    if certificate is not None:
        record_issued(connection, order_id, certificate)
    if answered:
        _write_answered(connection, order_id=order_id, authz_urls=answered, at=answered_at)
    if drop_records:
        # Not announced to the DNS server (see OrderDriver._remove_challenge_records).
        connection.execute(_DROP_RECORDS, {"b_order_id": order_id})
    if after is not None:
        after(connection, order_id, answered_at)


def _write_answered(
    connection: Connection, *, order_id: int, authz_urls: list[str], at: dt.datetime
) -> None:
    connection.execute(
        _MARK_ANSWERED, {"answered_at": at, "b_order_id": order_id, "b_authz_urls": authz_urls}
    )


def _remove_records_job(
    connection: Connection, *, order_id: int, authz_urls: list[str] | None
) -> None:
    if authz_urls is None:
        connection.execute(_DROP_RECORDS, {"b_order_id": order_id})
    else:
        connection.execute(_DROP_SOME_RECORDS, {"b_order_id": order_id, "b_authz_urls": authz_urls})


def _store_material_job(
    connection: Connection,
    *,
    order_id: int,
    tenant_id: int,
    worker_id: str,
    is_dns: bool,
    material: list[Material],
    replaced_authz: list[str],
    now: dt.datetime,
) -> None:
    labels: dict[str, str] = {}
    if is_dns:
        identifiers = [item.identifier for item in material]
        labels = _lease_and_labels(connection, order_id, tenant_id, worker_id, identifiers)
    else:
        _check_lease(connection, order_id, worker_id)
    rows: list[dict[str, Any]] = []
    for item in material:
        if is_dns:
            label = labels.get(item.identifier)
            if label is None:
                raise CertokError(
                    f"{item.identifier} has no delegation for this tenant: call /v1/cert/dv first"
                )
            kind, name = "dns-01", label
        else:
            kind, name = HTTP01_KIND, record_name(item.identifier, item.token)
        rows.append(
            {
                "order_id": order_id,
                "kind": kind,
                "name": name,
                "value": item.value,
                "authz_url": item.authz_url,
                "created_at": now,
                "answered_at": None,
            }
        )
    if replaced_authz:
        connection.execute(
            _DROP_SOME_RECORDS, {"b_order_id": order_id, "b_authz_urls": replaced_authz}
        )
    connection.execute(_INSERT_RECORDS, rows)


def _lease_and_labels(
    connection: Connection, order_id: int, tenant_id: int, worker_id: str, identifiers: list[str]
) -> dict[str, str]:
    """Raise LeaseLost unless `worker_id` holds the lease; the tenant's labels for `identifiers`.

    One read does both: the order's row, joined with whichever of the tenant's delegations
    match (none, when a name lost its delegation).
    """
    rows = connection.execute(
        _LEASE_AND_LABELS,
        {"b_order_id": order_id, "b_tenant_id": tenant_id, "b_identifiers": identifiers},
    ).all()
    if not rows or rows[0].lease_owner != worker_id:
        raise LeaseLost(order_id)
    return {row.base_name: row.label for row in rows if row.base_name is not None}


def _check_lease(connection: Connection, order_id: int, worker_id: str) -> None:
    owner = connection.scalar(_LEASE_OWNER, {"b_order_id": order_id})
    if owner != worker_id:
        raise LeaseLost(order_id)


def _poll_delay(age: dt.timedelta, base_seconds: float) -> float:
    """Poll fast while an order is young, then slower (a tenth of its age, at most 10 s)."""
    return min(max(base_seconds, age.total_seconds() / 10), MAX_POLL_SECONDS)


def authorizations_needed(
    info: OrderInfo, presented: Mapping[str, PresentedRecord], now: dt.datetime
) -> bool:
    """Whether a poll that read ``info`` (the order alone) must read its authorizations too.

    An invalid order needs them for the reason. A pending one does, unless every challenge
    is answered and the answers are recent: then the order's own status says all there is to
    know (RFC 8555 §7.1.6: ready once every authorization is valid, invalid as soon as one
    fails), and each poll costs one request instead of one per name. Past
    AUTHZ_RECHECK_SECONDS the authorizations are read again all the same, for a CA that is
    slow to move its order along.
    """
    if info.status == STATUS_INVALID:
        return True
    if info.status != STATUS_PENDING:
        return False
    recent = now - dt.timedelta(seconds=AUTHZ_RECHECK_SECONDS)
    return not info.authorization_urls or not all(
        (record := presented.get(url)) is not None
        and record.answered_at is not None
        and record.answered_at >= recent
        for url in info.authorization_urls
    )


def _first_authz_error(info: OrderInfo) -> str | None:
    return next((a.error for a in info.authorizations if a.error), None)
