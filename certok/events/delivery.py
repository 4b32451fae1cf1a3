"""The delivery worker: sends the outbox's due rows, signed, and records what happened.

It runs in every `certok serve` process that runs an order worker. A row is claimed with a
lease (`lease_owner`, `lease_until`) in a write transaction (`certok.events.claims`: SKIP
LOCKED on PostgreSQL, a compare-and-set in the write channel on SQLite, as the order worker
claims orders). Only the lease holder records the outcome, so no two processes send one row
at once; a process killed mid-delivery leaves its lease to expire (or a restart of its node
frees it) and the row is sent again with the same `webhook-id` and body: receivers
de-duplicate on the id, as the Standard Webhooks spec asks.

Outcomes: 2xx delivered; 410 Gone disables the endpoint (its other pending rows are
cancelled); anything else (3xx never followed, 4xx, 5xx, resets, timeouts, refused
addresses) is retried on the schedule in `certok.events.schedule`, later when the receiver's
Retry-After asks for it, until the schedule runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.crypto import SecretBox
from certok.db.writes import write
from certok.errors import Unavailable
from certok.events import claims
from certok.events.outbox import DELIVERED, FAILED, PENDING
from certok.events.schedule import next_attempt_at, parse_retry_after
from certok.events.signing import derived_secret, signature_headers
from certok.prechecks.safe_http import FetchFailed, FetchRefused, SafeFetcher

log = logging.getLogger(__name__)

# Longer than a delivery can take (the 15 s timeout plus the writes around it).
LEASE_SECONDS = 60
USER_AGENT = "certok-webhooks/1"
NOTIFY_KEY_PURPOSE = "notify-url-signing"
GONE = 410
# What a delivery log keeps of a receiver's answer or of a failure.
_MAX_ERROR_CHARS = 300
PURGE_EVERY_SECONDS = 3600.0
# Once-only marks (certok/events/scans.py) outlive any certificate they could concern (the
# longest lifetime CAs issue, 398 days, plus the scans' look-back).
MARK_RETENTION = dt.timedelta(days=400)


def endpoint_secret_owner(public_id: str, which: str = "current") -> str:
    """Associated data binding an endpoint's encrypted secret to its row."""
    return f"webhook:{public_id}:{which}"


def notify_secret(box: SecretBox, tenant_id: int) -> str:
    """The `whsec_` secret that signs a tenant's notifyUrl deliveries (derived, not stored)."""
    return derived_secret(box.derive(NOTIFY_KEY_PURPOSE), f"tenant:{tenant_id}")


@dataclass(frozen=True)
class Claimed:
    """A due delivery this process holds the lease on, with what sending it needs."""

    id: int
    message_id: str
    tenant_id: int
    payload: str
    attempts: int
    url: str
    endpoint_id: int | None
    public_id: str | None
    secret_encrypted: bytes | None
    previous_secret_encrypted: bytes | None
    previous_secret_until: dt.datetime | None


@dataclass(frozen=True)
class Outcome:
    state: str
    status: int | None
    error: str | None
    next_attempt_at: dt.datetime | None
    disable_endpoint: bool = False


class DeliveryWorker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        box: SecretBox,
        fetcher: SafeFetcher,
        *,
        worker_id: str,
        poll_seconds: float = 1.0,
        max_in_flight: int = 32,
        retention_days: int = 30,
        clock: Clock = utcnow,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._sessions = sessions
        self._box = box
        self._fetcher = fetcher
        self._worker_id = worker_id
        self._poll_seconds = poll_seconds
        self._max_in_flight = max_in_flight
        self._retention = dt.timedelta(days=retention_days)
        self._clock = clock
        self._uniform = uniform
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for due deliveries now (thread-safe: called when an event was queued)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def release_own_leases(self) -> int:
        """At start: our id's leases belong to a previous run that died mid-delivery."""
        return write(
            self._sessions, functools.partial(claims.release_job, worker_id=self._worker_id)
        )

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        purged_at = 0.0
        while True:
            try:
                free = self._max_in_flight - len(self._in_flight)
                if free > 0:
                    for claimed in await asyncio.to_thread(self.claim, free):
                        task = asyncio.create_task(self.deliver(claimed))
                        self._in_flight.add(task)
                        task.add_done_callback(self._in_flight.discard)
                now = self._loop.time()
                if now - purged_at > PURGE_EVERY_SECONDS:
                    purged_at = now
                    await asyncio.to_thread(self.purge)
            except Unavailable as error:  # a passing shortage: no traceback to read
                log.warning("webhooks: claiming deliveries failed: %s", error.message)
            except Exception:
                log.exception("webhooks: claiming deliveries failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def run_once(self, limit: int = 100) -> int:
        """Claim what is due and send it all (tests and tools); returns how many were sent."""
        claimed = await asyncio.to_thread(self.claim, limit)
        await asyncio.gather(*(self.deliver(c) for c in claimed))
        return len(claimed)

    # --- claiming ------------------------------------------------------------------------------
    def claim(self, limit: int) -> list[Claimed]:
        job = functools.partial(
            claims.claim_job,
            worker_id=self._worker_id,
            now=self._clock(),
            limit=limit,
            lease_seconds=LEASE_SECONDS,
        )
        return [Claimed(**row) for row in write(self._sessions, job)]

    # --- sending -------------------------------------------------------------------------------
    async def deliver(self, claimed: Claimed) -> None:
        try:
            outcome = await self._attempt(claimed)
        except Exception as error:  # a bug must not leave the row leased for good
            log.exception("webhook delivery %s: unexpected error", claimed.message_id)
            outcome = self._retry(claimed, None, f"internal error: {type(error).__name__}", None)
        try:
            await asyncio.to_thread(self._record, claimed, outcome)
        except Exception:
            log.exception("webhook delivery %s: could not record the outcome", claimed.message_id)

    async def _attempt(self, claimed: Claimed) -> Outcome:
        body = claimed.payload.encode("utf-8")
        now = self._clock()
        headers = signature_headers(
            self._secrets(claimed, now), claimed.message_id, int(now.timestamp()), body
        )
        try:
            result = await self._fetcher.post(claimed.url, body, headers, user_agent=USER_AGENT)
        except FetchRefused as refusal:
            return self._retry(claimed, None, f"refused: {refusal.reason}", None)
        except FetchFailed as failure:
            return self._retry(claimed, None, failure.reason, None)
        status = result.status
        if 200 <= status < 300:
            return Outcome(DELIVERED, status, None, None)
        if status == GONE:
            return Outcome(
                FAILED,
                status,
                "the receiver answered 410 Gone: the endpoint is disabled",
                None,
                disable_endpoint=claimed.endpoint_id is not None,
            )
        retry_after = parse_retry_after(
            next(iter(result.headers.get("retry-after", [])), None), self._clock()
        )
        if 300 <= status < 400:
            error = f"answered {status}; redirects are not followed: register the final URL"
        else:
            error = f"answered {status}"
        snippet = result.body[:120].decode("utf-8", "replace").strip()
        if snippet:
            error += f": {snippet}"
        return self._retry(claimed, status, error, retry_after)

    def _retry(
        self, claimed: Claimed, status: int | None, error: str, retry_after: float | None
    ) -> Outcome:
        when = next_attempt_at(
            self._clock(), claimed.attempts + 1, retry_after, uniform=self._uniform
        )
        if when is None:
            return Outcome(FAILED, status, error + " (no attempts left)", None)
        return Outcome(PENDING, status, error, when)

    def _secrets(self, claimed: Claimed, now: dt.datetime) -> list[str]:
        if claimed.endpoint_id is None:
            return [notify_secret(self._box, claimed.tenant_id)]
        assert claimed.public_id is not None and claimed.secret_encrypted is not None
        secrets_in_use = [
            self._box.decrypt(
                claimed.secret_encrypted, endpoint_secret_owner(claimed.public_id)
            ).decode("ascii")
        ]
        until = claimed.previous_secret_until
        if claimed.previous_secret_encrypted is not None and until is not None and until > now:
            secrets_in_use.append(
                self._box.decrypt(
                    claimed.previous_secret_encrypted,
                    endpoint_secret_owner(claimed.public_id, "previous"),
                ).decode("ascii")
            )
        return secrets_in_use

    def _record(self, claimed: Claimed, outcome: Outcome) -> None:
        now = self._clock()
        values: dict[str, Any] = {
            "state": outcome.state,
            "attempts": claimed.attempts + 1,
            "last_status": outcome.status,
            "last_error": outcome.error[:_MAX_ERROR_CHARS] if outcome.error else None,
            "last_attempt_at": now,
            "lease_owner": None,
            "lease_until": None,
        }
        if outcome.state == PENDING:
            values["next_attempt_at"] = outcome.next_attempt_at
        else:
            values["finished_at"] = now
        recorded = write(
            self._sessions,
            functools.partial(
                claims.record_job,
                delivery_id=claimed.id,
                worker_id=self._worker_id,
                values=values,
                disable_endpoint=claimed.endpoint_id if outcome.disable_endpoint else None,
                reason=outcome.error,
                now=now,
            ),
        )
        if not recorded:
            log.warning("webhook delivery %s: lease lost before recording", claimed.message_id)
        elif outcome.state != DELIVERED:
            log.info(
                "webhook delivery %s to %s: %s (%s)",
                claimed.message_id,
                # Without the query: receivers put their own secrets there.
                claimed.url.split("?", 1)[0],
                outcome.state,
                outcome.error,
            )

    def purge(self) -> int:
        now = self._clock()
        job = functools.partial(
            claims.purge_job, cutoff=now - self._retention, marks_cutoff=now - MARK_RETENTION
        )
        return write(self._sessions, job)
