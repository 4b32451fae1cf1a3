"""When each API token was last used, for the console's token list: cheaply.

The API calls `seen` only when it reads a token from the database (a token-cache miss, at most
once per `token_cache_seconds` per token and process), never on the cached fast paths. A token
is written at most once a minute per process, by a background thread the request does not
wait for, and the UPDATE skips rows another process stamped within that minute.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection, or_, update
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.models import ApiToken
from certok.db.writes import write

log = logging.getLogger("certok.tokens")

EVERY_SECONDS = 60.0
MAX_REMEMBERED = 100_000


def mark_used(connection: Connection, digest: str, now: dt.datetime, cutoff: dt.datetime) -> None:
    table = ApiToken.__table__
    connection.execute(
        update(table)
        .where(
            table.c.digest == digest,
            or_(table.c.last_used_at.is_(None), table.c.last_used_at < cutoff),
        )
        .values(last_used_at=now)
    )


class TokenUsage:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._monotonic = monotonic
        self._stamped: dict[str, float] = {}
        self._running: set[asyncio.Future[None]] = set()

    def seen(self, digest: str) -> None:
        """Note a use of the token with this SHA-256 hex digest (call on the event loop)."""
        now = self._monotonic()
        last = self._stamped.get(digest)
        if last is not None and now - last < EVERY_SECONDS:
            return
        if len(self._stamped) >= MAX_REMEMBERED:
            self._stamped.clear()
        self._stamped[digest] = now
        task = asyncio.ensure_future(asyncio.to_thread(self.record, digest))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def record(self, digest: str) -> None:
        stamp = self._clock()
        try:
            write(
                self._sessions,
                functools.partial(
                    mark_used,
                    digest=digest,
                    now=stamp,
                    cutoff=stamp - dt.timedelta(seconds=EVERY_SECONDS),
                ),
            )
        except Exception:  # a lost stamp is not worth failing anything for
            log.warning("could not record a token's last use", exc_info=True)

    async def drain(self) -> None:
        """Wait for the writes under way (tests)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
