"""Events nobody's request causes: found by periodic scans, each sent once.

- `certificate.renewal_due`: a live certificate (not revoked, not replaced, not expired) is
  past its `renew_at`.
- `certificate.expiring`: a live certificate is within a threshold of its expiry. The
  thresholds scale with the lifetime: the first at 1/6 of it (at most 14 days: 14 days of a
  90-day certificate, 7.5 of a 45-day one, 27 hours of a 160-hour one), the final at 1/30 (at
  most 3 days: 3 of 90, 1.5 of 45). A certificate already replaced by its renewal is no
  longer expiring in any sense that matters, so it is not reported.
- `certificate.revoked`: revoked at the CA (the certificates worker sets `revoked_at`).
- `delegation.broken`: the `_acme-challenge` CNAME of a delegated name that has a live
  certificate no longer leads to certok (a failed lookup is not a broken delegation). Once
  the CNAME is back, a later break is reported again.

Each certificate scan reads only rows near their moment through an index (renew_at,
not_after, revoked_at), not the whole table; the delegation scan reads the delegations due a
re-check (`next_check_at`, indexed) in batches and lets the database tell those with a live
certificate (the names' index by tenant and name), so neither holds every certificate in
memory. A delegation's re-check is claimed, not repeated per node: a compare-and-set UPDATE
moves its `next_check_at` an interval (plus jitter) forward before the look-up, so with
several nodes on one database each delegation is looked up once per interval, by one of them,
and the checks are spread over the interval (a delegation never scheduled gets a random first
time within it). "Once" is an `event_marks` row written in the same transaction as the event's
delivery rows; two nodes scanning at once collide on the mark's unique constraint and one of
them simply sends nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dns.resolver
from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    cast,
    exists,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.models import Certificate, CertificateName, Delegation, EventMark
from certok.db.writes import write
from certok.events.outbox import clear_mark, emit, mark_once
from certok.events.types import (
    CERTIFICATE_EXPIRING,
    CERTIFICATE_RENEWAL_DUE,
    CERTIFICATE_REVOKED,
    DELEGATION_BROKEN,
    rfc3339,
)
from certok.names import WILDCARD_PREFIX, challenge_name
from certok.prechecks.delegation import check_delegation

log = logging.getLogger(__name__)

C = Certificate.__table__
M = EventMark.__table__


def _unmarked(kind: str) -> Any:
    """Certificates without the mark `kind`: a scan never reads again the rows it has done, so
    it costs what is newly due, and a backlog beyond `limit` is worked through in turn."""
    return ~exists().where(M.c.kind == kind, M.c.subject == cast(C.c.id, String))


DEL = Delegation.__table__
# How far back a scan looks for moments it may have missed (a node down for a while).
LOOKBACK = dt.timedelta(days=7)
FIRST_FRACTION, FIRST_CAP = 1 / 6, dt.timedelta(days=14)
FINAL_FRACTION, FINAL_CAP = 1 / 30, dt.timedelta(days=3)


@dataclass(frozen=True)
class Threshold:
    name: str  # "first" | "final"
    remaining: dt.timedelta


def expiry_thresholds(not_before: dt.datetime, not_after: dt.datetime) -> list[Threshold]:
    lifetime = not_after - not_before
    return [
        Threshold("first", min(lifetime * FIRST_FRACTION, FIRST_CAP)),
        Threshold("final", min(lifetime * FINAL_FRACTION, FINAL_CAP)),
    ]


def crossed_threshold(
    not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime
) -> Threshold | None:
    """The last threshold `now` has passed (final beats first), or None."""
    crossed = None
    for threshold in expiry_thresholds(not_before, not_after):
        if not_after - now <= threshold.remaining:
            crossed = threshold
    return crossed


# Delegations are re-checked this many at a time: a node holds one batch, not every row.
_DELEGATION_BATCH = 1_000
_NAMES = CertificateName.__table__
# A check claimed falls due again one interval later plus up to this fraction of it, drawn per
# delegation: checks that fell due together (a backlog after every node was down) drift apart
# instead of staying in one burst, and no delegation is checked twice within an interval.
RECHECK_JITTER = 0.1
# The due delegations are picked at least this often: a pass takes only those due, so the
# checks follow their spread times rather than one burst per interval.
DELEGATION_POLL_SECONDS = 60.0


def _live(now: Any) -> Any:
    return and_(C.c.revoked_at.is_(None), C.c.replaced_by_id.is_(None), C.c.not_after > now)


# The delegations due a re-check, earliest first, through the index on next_check_at. Whether
# each is in use (a live certificate of the tenant's for the name or its wildcard) is a test per
# delegation row, in the select list: the database runs it as an index look-up for the batch's
# rows. As a WHERE clause, PostgreSQL may turn the names' test into a join over every live
# certificate, which with a stale estimate (a table just filled) took seconds per batch. Those
# not in use are claimed too, without a look-up, so a pass does not read them again.
_DUE_DELEGATIONS = (
    select(
        DEL.c.id,
        DEL.c.tenant_id,
        DEL.c.base_name,
        DEL.c.label,
        exists(
            select(_NAMES.c.id)
            .select_from(_NAMES.join(C, C.c.id == _NAMES.c.certificate_id))
            .where(
                _NAMES.c.tenant_id == DEL.c.tenant_id,
                _NAMES.c.name.in_([DEL.c.base_name, literal(WILDCARD_PREFIX) + DEL.c.base_name]),
                _live(bindparam("b_now", type_=C.c.not_after.type)),
            )
        ).label("in_use"),
        # Reported broken and not seen fixed since: a re-check that finds it in place clears
        # the mark. The others found in place need no write beyond their claim.
        exists(
            select(M.c.id).where(
                M.c.kind == DELEGATION_BROKEN, M.c.subject == cast(DEL.c.id, String)
            )
        ).label("marked"),
    )
    .where(DEL.c.next_check_at <= bindparam("b_now", type_=DEL.c.next_check_at.type))
    .order_by(DEL.c.next_check_at)
    .limit(_DELEGATION_BATCH)
)
# Never scheduled (new, or from before migration 0010). No order: any of them will do.
_UNSCHEDULED = select(DEL.c.id).where(DEL.c.next_check_at.is_(None)).limit(_DELEGATION_BATCH)
_FIRST_CHECK = (
    update(DEL)
    .where(DEL.c.id == bindparam("b_id"), DEL.c.next_check_at.is_(None))
    .values(next_check_at=bindparam("b_at"))
)
# The compare-and-set: the row moves only if it is still due (another node has not claimed it).
_CLAIM = (
    update(DEL)
    .where(
        DEL.c.id == bindparam("b_id"),
        DEL.c.next_check_at <= bindparam("b_due", type_=DEL.c.next_check_at.type),
    )
    .values(next_check_at=bindparam("b_at"))
)


def first_checks_job(connection: Connection, *, times: list[tuple[int, dt.datetime]]) -> int:
    """Give never-scheduled delegations their first check time, each where still unset (two
    nodes starting at once: the first one's times stand)."""
    if not times:
        return 0
    result = connection.execute(_FIRST_CHECK, [{"b_id": i, "b_at": at} for i, at in times])
    return int(result.rowcount)


def claim_job(
    connection: Connection, *, due: dt.datetime, times: list[tuple[int, dt.datetime]]
) -> list[int]:
    """One UPDATE (executed for every row) moving each delegation still due at `due` to its
    next check time. The ones this transaction moved are this node's to check: another node's
    claim already moved the rest, to a time of its own drawing."""
    if not times:
        return []
    result = connection.execute(_CLAIM, [{"b_id": i, "b_due": due, "b_at": at} for i, at in times])
    if result.rowcount == len(times):
        return [i for i, _ in times]
    stored = dict(
        connection.execute(
            select(DEL.c.id, DEL.c.next_check_at).where(DEL.c.id.in_([i for i, _ in times]))
        ).all()
    )
    return [i for i, at in times if stored.get(i) == at]


def _certificate_data(row: Any) -> dict[str, Any]:
    return {
        "certificateId": row.id,
        "domains": row.domains.split(","),
        "issuer": row.issuer,
        "serial": row.serial,
        "notBefore": rfc3339(row.not_before),
        "notAfter": rfc3339(row.not_after),
        "renewAt": rfc3339(row.renew_at),
    }


_COLUMNS = (
    C.c.id,
    C.c.tenant_id,
    C.c.domains,
    C.c.issuer,
    C.c.serial,
    C.c.not_before,
    C.c.not_after,
    C.c.renew_at,
)


def _once(
    connection: Connection,
    kind: str,
    subject: str,
    now: dt.datetime,
    tenant_id: int,
    event_type: str,
    data: dict[str, Any],
) -> bool:
    if not mark_once(connection, kind, subject, now):
        return False
    emit(connection, tenant_id=tenant_id, event_type=event_type, data=data, now=now)
    return True


def certificate_events_job(connection: Connection, *, now: dt.datetime, limit: int) -> int:
    """One write transaction: every due renewal_due / expiring / revoked event, marked."""
    sent = 0
    due = connection.execute(
        select(*_COLUMNS)
        .where(
            C.c.renew_at <= now,
            C.c.renew_at > now - LOOKBACK,
            _live(now),
            _unmarked(CERTIFICATE_RENEWAL_DUE),
        )
        .order_by(C.c.renew_at)
        .limit(limit)
    ).all()
    for row in due:
        sent += _once(
            connection,
            CERTIFICATE_RENEWAL_DUE,
            str(row.id),
            now,
            row.tenant_id,
            CERTIFICATE_RENEWAL_DUE,
            _certificate_data(row),
        )
    soon = connection.execute(
        select(*_COLUMNS)
        .where(
            C.c.not_after <= now + FIRST_CAP,
            _live(now),
            _unmarked(f"{CERTIFICATE_EXPIRING}:final"),
        )
        .order_by(C.c.not_after)
        .limit(limit)
    ).all()
    for row in soon:
        threshold = crossed_threshold(row.not_before, row.not_after, now)
        if threshold is None:
            continue
        data = {
            **_certificate_data(row),
            "threshold": threshold.name,
            "expiresInSeconds": int((row.not_after - now).total_seconds()),
        }
        if threshold.name == "final":
            # The first notice would now say less than this one: it is not sent late.
            mark_once(connection, f"{CERTIFICATE_EXPIRING}:first", str(row.id), now)
        sent += _once(
            connection,
            f"{CERTIFICATE_EXPIRING}:{threshold.name}",
            str(row.id),
            now,
            row.tenant_id,
            CERTIFICATE_EXPIRING,
            data,
        )
    revoked = connection.execute(
        select(*_COLUMNS, C.c.revoked_at, C.c.revoke_reason)
        .where(C.c.revoked_at > now - LOOKBACK, _unmarked(CERTIFICATE_REVOKED))
        .order_by(C.c.revoked_at)
        .limit(limit)
    ).all()
    for revocation in revoked:
        data = {
            **_certificate_data(revocation),
            "revokedAt": rfc3339(revocation.revoked_at),
            "reason": revocation.revoke_reason or 0,
        }
        sent += _once(
            connection,
            CERTIFICATE_REVOKED,
            str(revocation.id),
            now,
            revocation.tenant_id,
            CERTIFICATE_REVOKED,
            data,
        )
    return sent


def delegation_outcome_job(
    connection: Connection,
    *,
    delegation_id: int,
    tenant_id: int,
    data: dict[str, Any],
    broken: bool,
    now: dt.datetime,
) -> bool:
    subject = str(delegation_id)
    if not broken:
        clear_mark(connection, DELEGATION_BROKEN, subject)
        return False
    return _once(connection, DELEGATION_BROKEN, subject, now, tenant_id, DELEGATION_BROKEN, data)


class EventScanner:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        zone: str,
        resolver: dns.resolver.Resolver,
        certificate_seconds: float,
        delegation_seconds: float,
        batch: int = 1000,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._zone = zone
        self._resolver = resolver
        self._certificate_seconds = certificate_seconds
        self._delegation_seconds = delegation_seconds
        self._batch = batch
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._on_queued = on_queued

    def certificate_events(self) -> int:
        job = functools.partial(certificate_events_job, now=self._clock(), limit=self._batch)
        try:
            sent = write(self._sessions, job)
        except IntegrityError:  # another node marked the same event first: it sends it
            return 0
        if sent:
            self._on_queued()
        return sent

    def delegation_events(self) -> int:
        """Re-check the delegations due, of names that have live certificates (blocking).

        First the never-scheduled delegations get a first check time, each a random moment
        within the interval, so a node's start (or the upgrade that added the column) is no
        burst of look-ups. Then the due ones, earliest first, a batch at a time: each batch is
        claimed by moving its next check an interval forward before any look-up, so another
        node's pass skips them and each is looked up once per interval, by one node.
        """
        now = self._clock()
        self._schedule_first_checks(now)
        sent = 0
        for delegation in self._claim_due(now):
            sent += self._recheck(delegation)
        if sent:
            self._on_queued()
        return sent

    def _schedule_first_checks(self, now: dt.datetime) -> None:
        """Each never-scheduled delegation's first check: a random moment of the interval."""
        interval = dt.timedelta(seconds=self._delegation_seconds)
        while True:
            with self._sessions() as session:
                ids = list(session.scalars(_UNSCHEDULED))
            if not ids:
                return  # the usual pass: one index look-up, no write
            times = [(i, now + interval * self._rng.random()) for i in ids]
            write(self._sessions, functools.partial(first_checks_job, times=times))
            if len(ids) < _DELEGATION_BATCH:
                return

    def _claim_due(self, now: dt.datetime) -> Iterator[Any]:
        """The delegations in use that this pass claimed, a batch at a time (each batch read
        in a session of its own: the caller looks them up between batches). Every row read
        leaves the due ones, claimed by this node or another, so the pass ends."""
        interval = dt.timedelta(seconds=self._delegation_seconds)
        while True:
            with self._sessions() as session:
                batch = session.execute(_DUE_DELEGATIONS, {"b_now": now}).all()
            if not batch:
                return
            claimed_at = self._clock()
            times = [
                (row.id, claimed_at + interval * (1 + RECHECK_JITTER * self._rng.random()))
                for row in batch
            ]
            claimed = set(write(self._sessions, functools.partial(claim_job, due=now, times=times)))
            yield from (row for row in batch if row.in_use and row.id in claimed)
            if len(batch) < _DELEGATION_BATCH:
                return

    def _recheck(self, delegation: Any) -> int:
        """1 when re-checking `delegation` queued an event, else 0."""
        expected = f"{delegation.label}.{self._zone}"
        result = check_delegation(challenge_name(delegation.base_name), expected, self._resolver)
        # A lookup that failed says nothing about the CNAME: no event, no all-clear.
        if not result.valid and "CNAME failed:" in result.detail:
            return 0
        if result.valid and not delegation.marked:
            return 0  # in place, as it was
        data = {
            "domain": delegation.base_name,
            "host": result.name,
            "expected": expected,
            "found": result.found,
            "detail": result.detail,
        }
        try:
            queued: int = write(
                self._sessions,
                functools.partial(
                    delegation_outcome_job,
                    delegation_id=delegation.id,
                    tenant_id=delegation.tenant_id,
                    data=data,
                    broken=not result.valid,
                    now=self._clock(),
                ),
            )
        except IntegrityError:
            return 0
        return queued

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_certificates = next_delegations = loop.time()
        # Each pass takes only the delegations due by then: passes more often than the
        # interval let the checks happen at their spread times.
        delegation_poll = min(self._delegation_seconds, DELEGATION_POLL_SECONDS)
        while True:
            now = loop.time()
            try:
                if self._certificate_seconds > 0 and now >= next_certificates:
                    next_certificates = now + self._certificate_seconds
                    await asyncio.to_thread(self.certificate_events)
                if self._delegation_seconds > 0 and now >= next_delegations:
                    next_delegations = now + delegation_poll
                    await asyncio.to_thread(self.delegation_events)
            except Exception:
                log.exception("event scan failed; trying again at the next interval")
            waits = [
                t - loop.time()
                for t, every in (
                    (next_certificates, self._certificate_seconds),
                    (next_delegations, self._delegation_seconds),
                )
                if every > 0
            ]
            if not waits:
                return
            await asyncio.sleep(max(1.0, min(waits)))
