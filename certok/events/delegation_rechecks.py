"""The delegation re-check: is the `_acme-challenge` CNAME of each delegated name that has a
live certificate still in place? `delegation.broken` once it is not (a failed look-up is not a
broken delegation); once it is back, a later break is reported again.

The pass reads the delegations due a re-check (`next_check_at`, indexed) in batches and lets
the database tell those with a live certificate (the names' index by tenant and name), so it
never holds every certificate in memory. A re-check is claimed, not repeated per node: a
compare-and-set UPDATE moves its `next_check_at` an interval (plus jitter) forward before the
look-up, so with several nodes on one database each delegation is looked up once per
interval, by one of them, and the checks are spread over the interval (a delegation never
scheduled gets a random first time within it).
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections.abc import Iterator
from typing import Any

import dns.resolver
from sqlalchemy import Connection, String, bindparam, cast, exists, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock
from certok.db.models import CertificateName, Delegation, EventMark
from certok.db.writes import write
from certok.events.live_certificates import C, live
from certok.events.outbox import clear_mark, emit_once
from certok.events.types import DELEGATION_BROKEN
from certok.names import WILDCARD_PREFIX, challenge_name
from certok.prechecks.delegation import check_delegation

DEL = Delegation.__table__
M = EventMark.__table__

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
                live(bindparam("b_now", type_=C.c.not_after.type)),
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
    return emit_once(
        connection, DELEGATION_BROKEN, subject, now, tenant_id, DELEGATION_BROKEN, data
    )


class DelegationRechecks:
    """One node's re-checks of the delegations (blocking: run `run_pass` in a thread)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        zone: str,
        resolver: dns.resolver.Resolver,
        interval_seconds: float,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._sessions = sessions
        self._zone = zone
        self._resolver = resolver
        self._interval_seconds = interval_seconds
        self._clock = clock
        self._rng = rng

    def run_pass(self) -> int:
        """Re-check the delegations due, of names that have live certificates; how many
        events it queued.

        First the never-scheduled delegations get a first check time, each a random moment
        within the interval, so a node's start (or the upgrade that added the column) is no
        burst of look-ups. Then the due ones, earliest first, a batch at a time: each batch is
        claimed by moving its next check an interval forward before any look-up, so another
        node's pass skips them and each is looked up once per interval, by one node.
        """
        now = self._clock()
        self._schedule_first_checks(now)
        return sum(self._recheck(delegation) for delegation in self._claim_due(now))

    def _schedule_first_checks(self, now: dt.datetime) -> None:
        """Each never-scheduled delegation's first check: a random moment of the interval."""
        interval = dt.timedelta(seconds=self._interval_seconds)
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
        interval = dt.timedelta(seconds=self._interval_seconds)
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
