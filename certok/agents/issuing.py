"""A managed certificate's lifecycle: `check` decides, the normal order engine issues.

No second order path: a new certificate is a verification code and an order made by the same
functions `/v1/cert/dv` and `/v1/cert/apply` use (`issue_code`, `redeem_code`), for names
whose dns-01 delegation to this tenant is in place, driven by the worker like any order (its
retries, nonce handling, crash safety and order-time ownership check all hold). When the
order is issued its certificate and key (re-encrypted) are kept on the managed certificate,
since finished orders are purged after `order_retention_hours`.

`check`'s answers (httpsok.sh's first line): `1` + `certmd5,keymd5` a new certificate is ready
to download; `2` still issuing; `3` the file on disk is certok's own for exactly these names
and not yet due; `12` a name's CNAME is missing or wrong (the second line says which and what
to add); `13` unknown code; anything else is a message the agent prints as it is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from certok.agents import hosts
from certok.agents.renewal import renew_at
from certok.agents.server_names import split_delegated
from certok.clock import Clock, utcnow
from certok.crypto import SecretBox, certificate_facts
from certok.db.engine import transaction
from certok.db.models import AgentHost, Delegation, ManagedCertificate, Order, VerificationCode
from certok.domains.verify import DnsVerifier
from certok.names import base_name
from certok.orders.codes import issue_code
from certok.orders.service import FAILURE, ISSUED, PENDING, order_key_owner, redeem_code
from certok.settings import Settings

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


def managed_key_owner(managed_id: int) -> str:
    """Associated data for a managed certificate's encrypted key (binds it to the row)."""
    return f"managed-certificate:{managed_id}:key"


@dataclass(frozen=True)
class _OrderFacts:
    id: int
    state: str
    names: frozenset[str]
    reason: str | None
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class _Snapshot:
    id: int
    cert_path: str
    candidates: list[str]
    delegated: set[str]
    order: _OrderFacts | None
    issued_order_id: int | None
    cert_sha256: str | None
    cert_names: frozenset[str]
    renew_at: dt.datetime | None
    disk_sha256: str | None


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
    ) -> None:
        self._sessions = sessions
        self._box = box
        self._verifier = verifier
        self._waiters = waiters
        self._wake_worker = wake_worker
        self._settings = settings
        self._now = renewal_now

    # --- /check ----------------------------------------------------------------------------
    async def check(self, tenant_id: int, uuid: str, code: str) -> str:
        snap = await asyncio.to_thread(self._snapshot, tenant_id, uuid, code)
        if snap is None:
            return UNKNOWN_CODE
        names, not_delegated = split_delegated(snap.candidates, snap.delegated)
        if not names:
            why = "; ".join(f"{n}: {r}" for n, r in not_delegated) or "it has no server_name"
            return f"no name of {snap.cert_path} can be issued by certok ({why})"
        wanted = frozenset(names)
        if (
            snap.cert_sha256 is not None
            and snap.cert_names == wanted
            and snap.renew_at is not None
            and self._now() < snap.renew_at
        ):
            if snap.disk_sha256 == snap.cert_sha256:
                return VALID
            return await self._ready(snap.id)
        order = snap.order
        if order is not None and order.names == wanted and order.id != snap.issued_order_id:
            if order.state == PENDING:
                return await self._wait_and_answer(snap.id, order.id)
            if order.state == ISSUED:
                return await self._adopt_and_answer(snap.id, order.id)
            quiet_until = (order.finished_at or utcnow()) + FAILED_ORDER_QUIET
            if order.state == FAILURE and utcnow() < quiet_until:
                return f"certificate order failed: {order.reason or 'no reason given'}"
        problem = await asyncio.to_thread(self._verifier.ownership_problem, tenant_id, names)
        if problem:
            return f"{CNAME_INVALID}\n{problem}"
        order_id = await asyncio.to_thread(
            self._start_order, snap.id, tenant_id, names, order.id if order else None
        )
        self._wake_worker()
        return await self._wait_and_answer(snap.id, order_id)

    def files(self, tenant_id: int, uuid: str, code: str) -> CertificateFiles | None:
        """The certificate certok deploys for this code now (full chain, key), or None."""
        with self._sessions() as session:
            mc = hosts.managed_by_code(session, tenant_id, uuid, code)
            if mc is None or mc.certificate_pem is None or mc.key_encrypted is None:
                return None
            key = self._box.decrypt(mc.key_encrypted, managed_key_owner(mc.id))
            return CertificateFiles(mc.certificate_pem.encode("ascii"), key)

    # --- steps -----------------------------------------------------------------------------
    def _snapshot(self, tenant_id: int, uuid: str, code: str) -> _Snapshot | None:
        with self._sessions() as session:
            mc = hosts.managed_by_code(session, tenant_id, uuid, code)
            if mc is None:
                return None
            candidates = hosts.candidate_names(mc)
            bases = sorted({base_name(n) for n in candidates})
            delegated = set(
                session.scalars(
                    select(Delegation.base_name).where(
                        Delegation.tenant_id == tenant_id, Delegation.base_name.in_(bases)
                    )
                )
            )
            order = None
            if mc.order_id is not None:
                row = session.get(Order, mc.order_id)
                if row is not None and row.tenant_id == tenant_id:
                    order = _OrderFacts(
                        row.id,
                        row.state,
                        frozenset(row.domains.split(",")),
                        row.reason,
                        row.finished_at,
                    )
            return _Snapshot(
                id=mc.id,
                cert_path=mc.cert_path,
                candidates=candidates,
                delegated=delegated,
                order=order,
                issued_order_id=mc.issued_order_id,
                cert_sha256=mc.cert_sha256,
                cert_names=frozenset((mc.cert_names or "").split(",")) - {""},
                renew_at=mc.renew_at,
                disk_sha256=mc.disk_sha256,
            )

    def _start_order(
        self, managed_id: int, tenant_id: int, names: list[str], previous: int | None
    ) -> int:
        """A new order for `names` (a code redeemed at once), bound to the managed certificate
        unless a concurrent check bound one first: then theirs."""
        with transaction(self._sessions) as session:
            code = issue_code(
                session, tenant_id, "dns", names, self._settings.code_ttl_seconds, utcnow
            )
            order_id, _ = redeem_code(
                session,
                tenant_id,
                code,
                algorithm=ALGORITHM,
                issuer=self._settings.default_issuer,
                deadline_seconds=self._settings.order_deadline_seconds,
            )
            current = ManagedCertificate.order_id
            claimed = session.execute(
                update(ManagedCertificate)
                .where(
                    ManagedCertificate.id == managed_id,
                    current.is_(None) if previous is None else current == previous,
                )
                .values(order_id=order_id, updated_at=utcnow())
            )
            if claimed.rowcount == 1:
                return order_id
            # Another run of the agent on this host started one first: use theirs.
            session.execute(delete(VerificationCode).where(VerificationCode.code == code))
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
            if mc is None or mc.certificate_pem is None or mc.key_encrypted is None:
                return None
            key = self._box.decrypt(mc.key_encrypted, managed_key_owner(mc.id))
            return CertificateFiles(mc.certificate_pem.encode("ascii"), key)

    def _adopt(self, managed_id: int, order_id: int) -> None:
        """Keep the issued order's certificate and key on the managed certificate (once)."""
        with transaction(self._sessions) as session:
            mc = session.get(ManagedCertificate, managed_id)
            order = session.get(Order, order_id)
            if mc is None or order is None or order.state != ISSUED:
                return
            if mc.issued_order_id is not None and mc.issued_order_id >= order_id:
                return  # this one (or a newer one) is kept already
            if not order.certificate_pem or not order.key_encrypted:
                return
            key = self._box.decrypt(order.key_encrypted, order_key_owner(order.id))
            facts = certificate_facts(order.certificate_pem)
            mc.issued_order_id = order.id
            mc.certificate_pem = order.certificate_pem
            mc.key_encrypted = self._box.encrypt(key, managed_key_owner(mc.id))
            mc.cert_sha256 = leaf_sha256(order.certificate_pem.encode("ascii"))
            mc.cert_names = order.domains
            mc.not_after = facts.not_after
            mc.renew_at = renew_at(facts.not_before, facts.not_after)
            mc.updated_at = utcnow()
            host = session.get(AgentHost, mc.host_id)
            if host is not None:
                hosts.add_log(
                    session,
                    host,
                    hosts.ISSUED,
                    f"{mc.cert_path}: issued for {order.domains}, valid until "
                    f"{facts.not_after:%Y-%m-%d %H:%M:%S} UTC, renewed from "
                    f"{mc.renew_at:%Y-%m-%d %H:%M:%S} UTC",
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


def leaf_sha256(pem: bytes) -> str | None:
    """SHA-256 of the first certificate in `pem` (DER), or None if there is none."""
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError):
        return None
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
