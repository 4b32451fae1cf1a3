"""The worker's certificate tasks: revocations asked for, ARI checks due, renewals due.

Each tick reads only the rows due (indexes on the next check time, on revocation requests
and on (renewal_noticed_at, renew_at)), at most `certificate_scan_batch` of each, so its cost
follows the work due, not the size of the table. A row is claimed with a compare-and-set
UPDATE before the CA is asked, so two nodes never check or revoke the same certificate at
once. The CA is reached through the issuer's ACME account (RFC 8555 §7.6 lets the issuing
account revoke); when that account may not (the operator replaced it since the certificate
was ordered), the revocation is signed with the certificate's own key instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from certok.certificates import timing
from certok.certificates.ari import AriError, parse_renewal_info
from certok.clock import Clock, utcnow
from certok.crypto import SecretBox, order_key_owner
from certok.db.engine import transaction
from certok.db.models import Certificate, CertificateSecret
from certok.db.results import rows_changed
from certok.issuance import AcmeProblem, AcmeSession, ProblemKind, parse_retry_after
from certok.issuance.problems import BAD_CONFIGURATION

log = logging.getLogger(__name__)

_C = Certificate.__table__
_SECRETS = CertificateSecret.__table__
# A claimed check or revocation is not picked again for this long (a crashed node's claim
# lapses after it).
CLAIM = dt.timedelta(minutes=10)
# A revocation the CA could not take now is tried again after this long.
REVOKE_RETRY = dt.timedelta(minutes=5)


_ARI_COLUMNS = (
    _C.c.id,
    _C.c.issuer,
    _C.c.ari_cert_id,
    _C.c.not_before,
    _C.c.not_after,
    _C.c.renew_at,
    _C.c.ari_window_start,
    _C.c.ari_window_end,
    _C.c.ari_explanation_url,
    _C.c.ari_error,
    _C.c.renewal_noticed_at,
    _C.c.replaced_by_id,
    _C.c.revoked_at,
)
# One statement for every checked row (executemany): the same columns each time.
_SAVE_CHECK = update(_C).where(_C.c.id == bindparam("b_id"))


class Accounts(Protocol):
    def account(self, name: str) -> Any: ...  # an IssuerAccount: `.session` is an AcmeSession


class CertificateTasks:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        accounts: Accounts,
        *,
        box: SecretBox,
        batch: int,
        interval_seconds: float,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        on_renewal_due: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._accounts = accounts
        # Decrypts a certificate's key when only the key itself may revoke it.
        self._box = box
        self._batch = batch
        self._interval = interval_seconds
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._on_renewal_due = on_renewal_due
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the loop ------------------------------------------------------------------------------
    def wake(self) -> None:
        """Run a tick soon (a revocation was asked for). Safe from any thread."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                log.exception("certificate tasks: tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()

    def tick(self) -> tuple[int, int, int]:
        """One pass: (revocations, ARI checks, renewals due) handled."""
        return self.revocations(), self.ari_checks(), self.renewals_due()

    # --- revocation --------------------------------------------------------------------------
    def revocations(self) -> int:
        now = self._clock()
        with self._sessions() as session:
            rows = session.execute(
                select(_C.c.id, _C.c.revoke_requested_at)
                # revoked_at inside coalesce(): SQLite, without statistics, would otherwise
                # take "revoked_at IS NULL" (true of every live certificate) to its index over
                # the revocation requests' and walk every live certificate, every tick.
                .where(
                    _C.c.revoke_requested_at <= now,
                    func.coalesce(_C.c.revoked_at, _C.c.revoked_at).is_(None),
                )
                .order_by(_C.c.revoke_requested_at)
                .limit(self._batch)
            ).all()
        done = 0
        for row in rows:
            if self._claim(row.id, _C.c.revoke_requested_at, row.revoke_requested_at, now):
                self._revoke(row.id, now)
                done += 1
        return done

    def _revoke(self, certificate_id: int, now: dt.datetime) -> None:
        with self._sessions() as session:
            row = session.execute(
                select(
                    _C.c.issuer,
                    _C.c.order_id,
                    _C.c.revoke_reason,
                    _SECRETS.c.certificate_pem,
                    _SECRETS.c.key_encrypted,
                )
                .join(_SECRETS, _SECRETS.c.certificate_id == _C.c.id)
                .where(_C.c.id == certificate_id)
            ).one()
        values: dict[str, Any]
        try:
            signed_by = self._ask_to_revoke(certificate_id, row)
            values = {"revoked_at": now, "revoke_error": None, "next_check_at": None}
            log.info(
                "certificate %s revoked (reason %s), signed with %s",
                certificate_id,
                row.revoke_reason,
                signed_by,
            )
        except AcmeProblem as problem:
            if problem.type == "alreadyRevoked":
                values = {"revoked_at": now, "revoke_error": None, "next_check_at": None}
            elif problem.kind in (ProblemKind.RETRYABLE, ProblemKind.RATE_LIMITED):
                values = {"revoke_requested_at": now + REVOKE_RETRY}
                log.warning("certificate %s: revocation retried later: %s", certificate_id, problem)
            else:
                values = {
                    "revoke_requested_at": None,
                    "revoke_error": f"{problem.type}: {problem.detail}",
                }
                log.warning(
                    "certificate %s: the CA refused revocation: %s", certificate_id, problem
                )
        with transaction(self._sessions) as session:
            session.execute(update(_C).where(_C.c.id == certificate_id).values(**values))

    def _ask_to_revoke(self, certificate_id: int, row: Any) -> str:
        """revokeCert signed by the issuer's account; if that account may not (it is not the
        one that ordered the certificate: the operator replaced it since), once more signed
        with the certificate's own key. Returns which signed the revocation that went through."""
        session = self._accounts.account(row.issuer).session
        reason = row.revoke_reason or 0
        try:
            session.revoke(row.certificate_pem, reason)
            return "the issuer's account"
        except AcmeProblem as problem:
            if problem.type != "unauthorized":
                raise
            log.info(
                "certificate %s: the issuer's account may not revoke it (%s); asking again "
                "signed with the certificate's own key",
                certificate_id,
                problem.detail,
            )
        try:
            # The key is the order's ciphertext, bound to the order's id (see records.py).
            key_pem = self._box.decrypt(row.key_encrypted, order_key_owner(row.order_id))
        except (ValueError, InvalidTag) as exc:
            raise AcmeProblem(
                ProblemKind.REJECTED,
                BAD_CONFIGURATION,
                "the certificate's private key could not be decrypted (a different secret "
                "key?), so it could not sign the revocation",
            ) from exc
        session.revoke_with_certificate_key(row.certificate_pem, key_pem.decode("ascii"), reason)
        return "the certificate's own key"

    # --- ARI ---------------------------------------------------------------------------------
    def ari_checks(self) -> int:
        """Ask renewalInfo for the certificates due a check (at most a batch): one read, one
        claiming UPDATE, the CA once per certificate, then one transaction saving them all."""
        now = self._clock()
        with self._sessions() as session:
            rows = session.execute(
                select(*_ARI_COLUMNS)
                .where(_C.c.next_check_at <= now)
                .order_by(_C.c.next_check_at)
                .limit(self._batch)
            ).all()
        if not rows:
            return 0
        claimed = self._claim_many([row.id for row in rows], now)
        results = [self._check(row, now) for row in rows if row.id in claimed]
        if results:
            with transaction(self._sessions) as session:
                session.execute(_SAVE_CHECK, results)
        return len(results)

    def _claim_many(self, ids: list[int], now: dt.datetime) -> set[int]:
        """Push the due time of `ids` out by CLAIM where it is still due: the ones this call
        changed are this worker's (another node's claim already moved the rest)."""
        claim = (
            update(_C)
            .where(_C.c.id.in_(ids), _C.c.next_check_at <= now)
            .values(next_check_at=now + CLAIM)
        )
        with transaction(self._sessions) as session:
            if session.get_bind().dialect.update_returning:
                return set(session.scalars(claim.returning(_C.c.id)))
            return {i for i in ids if rows_changed(session.execute(claim.where(_C.c.id == i))) == 1}

    def _check(self, row: Any, now: dt.datetime) -> dict[str, Any]:
        """The row's new ARI columns after asking the CA (as `_SAVE_CHECK` parameters)."""
        previous = timing.Renewal(
            renew_at=row.renew_at,
            next_check_at=None,
            window_start=row.ari_window_start,
            window_end=row.ari_window_end,
        )
        values: dict[str, Any] = {
            "b_id": row.id,
            "renew_at": row.renew_at,
            "next_check_at": None,
            "ari_window_start": row.ari_window_start,
            "ari_window_end": row.ari_window_end,
            "ari_explanation_url": row.ari_explanation_url,
            "ari_error": row.ari_error,
            "renewal_noticed_at": row.renewal_noticed_at,
        }
        if row.replaced_by_id is not None or row.revoked_at is not None or now >= row.not_after:
            # RFC 9773 §4.2: no more checks once it expired or was replaced.
            return values
        try:
            session: AcmeSession = self._accounts.account(row.issuer).session
            body, retry_after = session.renewal_info(row.ari_cert_id)
            info = parse_renewal_info(body, parse_retry_after(retry_after, now))
            clock = timing.after_ari(row.not_before, row.not_after, previous, info, now, self._rng)
            values.update(
                renew_at=clock.renew_at,
                next_check_at=clock.next_check_at,
                ari_window_start=clock.window_start,
                ari_window_end=clock.window_end,
                ari_explanation_url=info.explanation_url,
                ari_error=None,
            )
            if clock.renew_at < row.renew_at:
                # An earlier moment (a moved window): the renewal-due notice is owed again.
                values["renewal_noticed_at"] = None
        except (AcmeProblem, AriError) as error:
            clock = timing.after_error(row.not_after, previous, now)
            values.update(next_check_at=clock.next_check_at, ari_error=str(error)[:500])
            log.warning("certificate %s: renewalInfo check failed: %s", row.id, error)
        return values

    # --- renewal due -------------------------------------------------------------------------
    def renewals_due(self) -> int:
        """Mark live certificates past renewAt as noticed and hand their ids to the hook (the
        events outbox's `certificate.renewal_due`)."""
        now = self._clock()
        due = and_(
            _C.c.renewal_noticed_at.is_(None),
            _C.c.renew_at <= now,
            _C.c.revoked_at.is_(None),
            _C.c.replaced_by_id.is_(None),
            _C.c.not_after > now,
        )
        with transaction(self._sessions) as session:
            ids = list(
                session.scalars(
                    select(_C.c.id).where(due).order_by(_C.c.renew_at).limit(self._batch)
                )
            )
            if ids:
                # renewal_noticed_at inside coalesce(): SQLite, without statistics, would
                # otherwise pick the (renewal_noticed_at, renew_at) index for "IS NULL" over
                # the primary key and walk every unnoticed record.
                mark = (
                    update(_C)
                    .where(
                        _C.c.id.in_(ids),
                        func.coalesce(_C.c.renewal_noticed_at, _C.c.renewal_noticed_at).is_(None),
                    )
                    .values(renewal_noticed_at=now)
                )
                if session.get_bind().dialect.update_returning:
                    # Only what this call marked: another node may have noticed some first.
                    ids = list(session.scalars(mark.returning(_C.c.id)))
                else:
                    session.execute(mark)
        if ids and self._on_renewal_due is not None:
            self._on_renewal_due(ids)
        return len(ids)

    def _claim(self, certificate_id: int, column: Any, seen: dt.datetime, now: dt.datetime) -> bool:
        """Compare-and-set: push the due time out by CLAIM; False if another node moved it."""
        with transaction(self._sessions) as session:
            result = session.execute(
                update(_C)
                .where(_C.c.id == certificate_id, column == seen)
                .values({column.name: now + CLAIM})
            )
        return rows_changed(result) == 1
