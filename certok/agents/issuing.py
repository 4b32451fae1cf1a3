"""A managed certificate's lifecycle: `check` decides, the normal order engine issues.

No second order path: a new certificate is a verification code and an order made by the same
functions `/v1/cert/dv` and `/v1/cert/apply` use (`issue_code`, `redeem_code`), for names
whose dns-01 delegation to this tenant is in place, with the profile every order gets
(certok/certificates/order_profile.py), driven by the worker like any order (its
retries, nonce handling, crash safety and order-time ownership check all hold). The worker
writes the certificate's record (certok/certificates) as it marks the order issued; the
managed certificate points at that record, deploys it until the record's `renew_at`, and
names it as the one the next order replaces (`replaces`, where the CA offers ARI).

`check`'s answers (httpsok.sh's first line): `12` a name's CNAME is missing or wrong (checked
first, on every call; the second line says which and what to add); `1` + `certmd5,keymd5` a
new certificate is ready to download; `2` still issuing; `3` the file on disk is certok's own
for exactly these names and not yet due; `13` unknown code; anything else is a message the
agent prints as it is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from certok.agents import hosts
from certok.agents.check_facts import read_check_facts
from certok.agents.deployed_record import current_record, record_secret
from certok.agents.server_names import split_delegated
from certok.certificates.order_profile import OrderTerms, order_terms
from certok.certificates.profiles import ProfileCatalog
from certok.clock import Clock, utcnow
from certok.crypto import SecretBox, order_key_owner
from certok.db.engine import transaction
from certok.db.models import (
    AgentHost,
    Certificate,
    ManagedCertificate,
    Order,
    VerificationCode,
)
from certok.errors import InvalidRequest, Unavailable
from certok.order_states import FAILURE, ISSUED, PENDING
from certok.orders.codes import issue_code
from certok.orders.quotas import redeem_job
from certok.orders.redemption import RedemptionTerms
from certok.settings import Settings
from certok.verification.dns_verifier import DnsVerifier

READY = "1"
ISSUING = "2"
VALID = "3"
CNAME_INVALID = "12"
UNKNOWN_CODE = "13"
# A failed order is not retried by every poll: the agent hears why, and the next run (a day
# later from cron) after this long starts a new one.
FAILED_ORDER_QUIET = dt.timedelta(hours=1)
# Without a waiters poller in this process (tests that build the app alone).
WAIT_POLL_SECONDS = 1.0
ALGORITHM = "ECC"


class _Watch(Protocol):
    async def wait(self, timeout: float) -> bool: ...


class OrderWatching(Protocol):
    """What `check` needs of the API's held-request waiters (`certok.api.waiters`)."""

    @property
    def polling(self) -> bool: ...

    def watch(self, order_id: int) -> AbstractContextManager[_Watch]: ...


@dataclass(frozen=True)
class CertificateFiles:
    fullchain: bytes
    key: bytes


class AgentIssuer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        box: SecretBox,
        verifier: DnsVerifier,
        waiters: OrderWatching,
        wake_worker: Callable[[], None],
        settings: Settings,
        renewal_now: Clock,
        profiles: ProfileCatalog | None,
    ) -> None:
        self._sessions = sessions
        self._box = box
        self._verifier = verifier
        self._waiters = waiters
        self._wake_worker = wake_worker
        self._settings = settings
        self._now = renewal_now
        self._profiles = profiles

    # --- /check ----------------------------------------------------------------------------
    async def check(self, tenant_id: int, uuid: str, code: str) -> str:
        snap = await asyncio.to_thread(read_check_facts, self._sessions, tenant_id, uuid, code)
        if snap is None:
            return UNKNOWN_CODE
        names, not_delegated = split_delegated(snap.candidates, snap.delegated)
        if not names:
            why = "; ".join(f"{n}: {r}" for n, r in not_delegated) or "it has no server_name"
            return f"no name of {snap.cert_path} can be issued by certok ({why})"
        # Every call, even with a valid certificate in place: a CNAME removed today would fail
        # the renewal months from now, and the agent prints `12` on every run until it is back.
        problem = await asyncio.to_thread(self._verifier.ownership_problem, tenant_id, names)
        if problem:
            return f"{CNAME_INVALID}\n{problem}"
        wanted = frozenset(names)
        current = snap.certificate
        if current is not None and current.usable and current.names == wanted:
            on_disk = snap.disk_sha256 is not None and snap.disk_sha256 == current.leaf_sha256
            if not on_disk and utcnow() < current.not_after:
                # Newer than what the host has: deploy it, due or not (a renewal just issued
                # under a shifted clock is due at once, and must still be deployed).
                return await self._ready(snap.id)
            if on_disk and self._now() < current.renew_at:
                return VALID
        order = snap.order
        adopted = current.order_id if current is not None else None
        if order is not None and order.names == wanted and order.id != adopted:
            if order.state == PENDING:
                return await self._wait_and_answer(snap.id, order.id)
            if order.state == ISSUED:
                return await self._adopt_and_answer(snap.id, order.id)
            failed_at = order.finished_at
            if order.state == FAILURE and failed_at and utcnow() < failed_at + FAILED_ORDER_QUIET:
                return f"certificate order failed: {order.reason or 'no reason given'}"
        renews = current.id if current is not None else None
        try:
            terms = await asyncio.to_thread(self._order_terms, tenant_id, renews)
        except (InvalidRequest, Unavailable) as refused:  # the tenant's default not offered
            return f"certok: {refused.message}"
        order_id = await asyncio.to_thread(
            self._start_order,
            snap.id,
            tenant_id,
            names,
            order.id if order else None,
            terms,
        )
        if isinstance(order_id, str):  # refused: the tenant's pending cap, or disabled
            return f"certok: {order_id}"
        self._wake_worker()
        return await self._wait_and_answer(snap.id, order_id)

    def files(self, tenant_id: int, uuid: str, code: str) -> CertificateFiles | None:
        """The certificate certok deploys for this code now (full chain, key), or None."""
        with self._sessions() as session:
            mc = hosts.managed_by_code(session, tenant_id, uuid, code)
            return None if mc is None else self._record_files(session, mc)

    def _record_files(self, session: Session, mc: ManagedCertificate) -> CertificateFiles | None:
        record = current_record(session, mc)
        if record is None:
            return None
        secret = record_secret(session, record)
        # The record keeps the order's key ciphertext as it was, bound to the order's id.
        key = self._box.decrypt(secret.key_encrypted, order_key_owner(record.order_id))
        return CertificateFiles(secret.certificate_pem.encode("ascii"), key)

    # --- steps -----------------------------------------------------------------------------
    def _order_terms(self, tenant_id: int, renews: int | None) -> OrderTerms:
        """The new order's terms, as on every order path: it renews the certificate deployed
        now, if any; httpsok.sh names no profile, so the renewed certificate's, else the
        tenant's default."""
        return order_terms(
            self._sessions,
            self._profiles,
            tenant_id=tenant_id,
            issuer=self._settings.default_issuer,
            requested=None,
            deadline_seconds=self._settings.order_deadline_seconds,
            renews=renews,
        )

    def _start_order(
        self,
        managed_id: int,
        tenant_id: int,
        names: list[str],
        previous: int | None,
        terms: OrderTerms,
    ) -> int | str:
        """A new order for `names` (a code redeemed at once) that renews the certificate
        deployed now, if any; bound to the managed certificate unless a concurrent check bound
        one first: then theirs. Within the tenant's caps, as apply (certok/orders/quotas.py):
        joined to a running order for the same names, or refused at the pending cap (the
        refusal's message is returned)."""
        with transaction(self._sessions) as session:
            code = issue_code(
                session, tenant_id, "dns", names, self._settings.code_ttl_seconds, utcnow
            )
            outcome = redeem_job(
                session.connection(),
                RedemptionTerms(
                    tenant_id=tenant_id,
                    code=code,
                    algorithm=ALGORITHM,
                    issuer=self._settings.default_issuer,
                    deadline_seconds=terms.deadline_seconds,
                    # With the record it renews: the driver sends `replaces` for it where the
                    # CA offers ARI, and the new record marks it replaced.
                    order_extras=terms.order_extras(),
                    max_pending=self._settings.tenant_max_pending_orders,
                    join_seconds=self._settings.order_join_seconds,
                    now=utcnow(),
                ),
            )
            if outcome.order_id is None:
                session.execute(delete(VerificationCode).where(VerificationCode.code == code))
                return outcome.refused or "this tenant is disabled: contact the operator"
            order_id = outcome.order_id
            current = ManagedCertificate.order_id
            # An UPDATE's result is a CursorResult: it has the rowcount.
            claimed = cast(
                "CursorResult[Any]",
                session.execute(
                    update(ManagedCertificate)
                    .where(
                        ManagedCertificate.id == managed_id,
                        current.is_(None) if previous is None else current == previous,
                    )
                    .values(order_id=order_id, updated_at=utcnow())
                ),
            )
            if claimed.rowcount == 1:
                return order_id
            # Another run of the agent on this host started one first: use theirs.
            session.execute(delete(VerificationCode).where(VerificationCode.code == code))
            if outcome.created:  # a joined order is another code's as well: never deleted
                session.execute(delete(Order).where(Order.id == order_id))
            winner = session.scalar(
                select(ManagedCertificate.order_id).where(ManagedCertificate.id == managed_id)
            )
            return winner if winner is not None else order_id

    async def _wait_and_answer(self, managed_id: int, order_id: int) -> str:
        state = await self._wait(order_id)
        if state == ISSUED:
            return await self._adopt_and_answer(managed_id, order_id)
        if state == FAILURE:
            reason = await asyncio.to_thread(self._reason, order_id)
            return f"certificate order failed: {reason or 'no reason given'}"
        return ISSUING

    async def _adopt_and_answer(self, managed_id: int, order_id: int) -> str:
        await asyncio.to_thread(self._adopt, managed_id, order_id)
        return await self._ready(managed_id)

    async def _ready(self, managed_id: int) -> str:
        files = await asyncio.to_thread(self._files_by_id, managed_id)
        if files is None:  # pragma: no cover - adopted just before
            return ISSUING
        cert_md5 = hashlib.md5(files.fullchain, usedforsecurity=False).hexdigest()
        key_md5 = hashlib.md5(files.key, usedforsecurity=False).hexdigest()
        return f"{READY}\n{cert_md5},{key_md5}"

    def _files_by_id(self, managed_id: int) -> CertificateFiles | None:
        with self._sessions() as session:
            mc = session.get(ManagedCertificate, managed_id)
            return None if mc is None else self._record_files(session, mc)

    def _adopt(self, managed_id: int, order_id: int) -> None:
        """Deploy the record the issued order made from now on (once; never an older one)."""
        with transaction(self._sessions) as session:
            mc = session.get(ManagedCertificate, managed_id)
            if mc is None:
                return
            record = session.scalar(
                select(Certificate).where(
                    Certificate.order_id == order_id, Certificate.tenant_id == mc.tenant_id
                )
            )
            if record is None or (mc.certificate_id is not None and mc.certificate_id >= record.id):
                return
            mc.certificate_id = record.id
            mc.updated_at = utcnow()
            host = session.get(AgentHost, mc.host_id)
            if host is not None:
                hosts.add_log(
                    session,
                    host,
                    hosts.ISSUED,
                    f"{mc.cert_path}: certificate {record.id} issued for {record.domains}, "
                    f"valid until {record.not_after:%Y-%m-%d %H:%M:%S} UTC, renewed from "
                    f"{record.renew_at:%Y-%m-%d %H:%M:%S} UTC",
                    managed_certificate_id=mc.id,
                )

    def _reason(self, order_id: int) -> str | None:
        with self._sessions() as session:
            return session.scalar(select(Order.reason).where(Order.id == order_id))

    def _state(self, order_id: int) -> str:
        with self._sessions() as session:
            state = session.scalar(select(Order.state).where(Order.id == order_id))
        return state or FAILURE  # purged meanwhile: nothing to wait for

    async def _wait(self, order_id: int) -> str:
        """The order's state once it is no longer pending, or after agent_check_wait_seconds."""
        deadline = time.monotonic() + self._settings.agent_check_wait_seconds
        with self._waiters.watch(order_id) as finished:
            state = await asyncio.to_thread(self._state, order_id)
            while state == PENDING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self._waiters.polling:
                    if not await finished.wait(remaining):
                        break
                else:
                    await finished.wait(min(WAIT_POLL_SECONDS, remaining))
                state = await asyncio.to_thread(self._state, order_id)
        return state
