"""Events nobody's request causes: found by periodic scans, each sent once.

- `certificate.renewal_due`: a live certificate (not revoked, not replaced, not expired) is
  past its `renew_at`.
- `certificate.expiring`: a live certificate is within a threshold of its expiry. The
  thresholds scale with the lifetime: the first at 1/6 of it (at most 14 days: 14 days of a
  90-day certificate, 7.5 of a 45-day one, 27 hours of a 160-hour one), the final at 1/30 (at
  most 3 days: 3 of 90, 1.5 of 45). A certificate already replaced by its renewal is no
  longer expiring in any sense that matters, so it is not reported.
- `certificate.revoked`: revoked at the CA (the certificates worker sets `revoked_at`).
- `delegation.broken`: the delegation re-check (certok/events/delegation_rechecks.py), which
  `EventScanner` runs at its own pace.

Each certificate scan reads only rows near their moment through an index (renew_at,
not_after, revoked_at), not the whole table. "Once" is an `event_marks` row written in the
same transaction as the event's delivery rows; two nodes scanning at once collide on the
mark's unique constraint and one of them simply sends nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.resolver
from sqlalchemy import (
    Connection,
    String,
    cast,
    exists,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.models import EventMark
from certok.db.writes import write
from certok.events.delegation_rechecks import DELEGATION_POLL_SECONDS, DelegationRechecks
from certok.events.live_certificates import C, live
from certok.events.outbox import emit_once, mark_once
from certok.events.types import (
    CERTIFICATE_EXPIRING,
    CERTIFICATE_RENEWAL_DUE,
    CERTIFICATE_REVOKED,
    rfc3339,
)

log = logging.getLogger(__name__)

M = EventMark.__table__


def _unmarked(kind: str) -> Any:
    """Certificates without the mark `kind`: a scan never reads again the rows it has done, so
    it costs what is newly due, and a backlog beyond `limit` is worked through in turn."""
    return ~exists().where(M.c.kind == kind, M.c.subject == cast(C.c.id, String))


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


def certificate_events_job(connection: Connection, *, now: dt.datetime, limit: int) -> int:
    """One write transaction: every due renewal_due / expiring / revoked event, marked."""
    sent = 0
    due = connection.execute(
        select(*_COLUMNS)
        .where(
            C.c.renew_at <= now,
            C.c.renew_at > now - LOOKBACK,
            live(now),
            _unmarked(CERTIFICATE_RENEWAL_DUE),
        )
        .order_by(C.c.renew_at)
        .limit(limit)
    ).all()
    for row in due:
        sent += emit_once(
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
            live(now),
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
        sent += emit_once(
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
        sent += emit_once(
            connection,
            CERTIFICATE_REVOKED,
            str(revocation.id),
            now,
            revocation.tenant_id,
            CERTIFICATE_REVOKED,
            data,
        )
    return sent


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
        self._certificate_seconds = certificate_seconds
        self._delegation_seconds = delegation_seconds
        self._batch = batch
        self._clock = clock
        self._on_queued = on_queued
        self._delegations = DelegationRechecks(
            sessions,
            zone=zone,
            resolver=resolver,
            interval_seconds=delegation_seconds,
            clock=clock,
            rng=rng or random.SystemRandom(),
        )

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
        """Re-check the delegations due (certok/events/delegation_rechecks.py; blocking)."""
        sent = self._delegations.run_pass()
        if sent:
            self._on_queued()
        return sent

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
