"""An order's challenge material: what it presented, presenting more, removing it.

The material is written through the order's `ChallengeSolver` in write transactions of its
own, each committed before the exchange with the CA that depends on it: the material before
its challenge is answered, an answer's mark before the next answer.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence

import josepy
from sqlalchemy.orm import Session, sessionmaker

from certok.challenge_solver import (
    ChallengeSolver,
    Material,
    Presenter,
    PresentsInOneStatement,
)
from certok.clock import Clock
from certok.db.engine import opened
from certok.db.writes import write, write_statement
from certok.issuance import AuthzInfo, ChallengeInfo, key_authorization
from certok.orders.rows import (
    OrderSnapshot,
    PresentedRecord,
    present_job,
    read_presented,
    remove_job,
    write_answered,
)


class ChallengeMaterial:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        worker_id: str,
        clock: Clock,
        on_changed: Callable[[], None] | None,
    ) -> None:
        self._sessions = sessions
        self._worker_id = worker_id
        self._clock = clock
        # Told after new material is stored (the DNS server reloads its values).
        self._on_changed = on_changed

    def presented(self, order: OrderSnapshot) -> dict[str, PresentedRecord]:
        """The order's stored challenge material by authorization URL."""
        if not order.has_records:
            return {}
        with opened(self._sessions).read_connection() as connection:
            return read_presented(connection, order.id)

    def present(
        self,
        order: OrderSnapshot,
        solver: ChallengeSolver,
        account_key: josepy.JWK,
        items: list[tuple[AuthzInfo, ChallengeInfo]],
        presented: dict[str, PresentedRecord],
    ) -> list[tuple[str, ChallengeInfo]]:
        """Present the challenge material; return the challenges every node serves by now.

        A challenge is answered only once its material has settled (`settle_seconds` after
        it was presented: at once for a solver whose material every node reads per
        request). `presented` is what the order had stored when the step began; material
        already there with the same value is not presented again.
        """
        now = self._clock()
        propagation = solver.settle_seconds
        settled_before = now - dt.timedelta(seconds=propagation)
        ready_urls: set[str] = set()
        fresh: list[tuple[AuthzInfo, ChallengeInfo, str]] = []
        for authz, challenge in items:
            value = solver.value(key_authorization(account_key, challenge.token))
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
            self._store(order, solver, fresh, replaced, now)
            if self._on_changed is not None:
                self._on_changed()
        return [(authz.url, challenge) for authz, challenge in items if authz.url in ready_urls]

    def _store(
        self,
        order: OrderSnapshot,
        solver: ChallengeSolver,
        fresh: list[tuple[AuthzInfo, ChallengeInfo, str]],
        replaced_authz: list[str],
        now: dt.datetime,
    ) -> None:
        """Write new challenge material (replacing older values) if we still hold the lease."""
        material = [
            Material(authz.identifier, authz.url, challenge.token, value)
            for authz, challenge, value in fresh
        ]
        # Nothing to replace, and a solver whose present is one statement: no transaction.
        one_statement = not replaced_authz and (
            isinstance(solver, PresentsInOneStatement) and solver.presents_in_one_statement()
        )
        (write_statement if one_statement else write)(
            self._sessions,
            functools.partial(
                present_job,
                solver=solver,
                presenter=Presenter(order.id, order.tenant_id, self._worker_id, now),
                material=material,
                replaced_authz=replaced_authz,
            ),
        )

    def mark_answered(self, order_id: int, authz_urls: Sequence[str]) -> None:
        # One UPDATE: no transaction around it on PostgreSQL.
        write_statement(
            self._sessions,
            functools.partial(
                write_answered, order_id=order_id, authz_urls=list(authz_urls), at=self._clock()
            ),
        )

    def remove(self, solver: ChallengeSolver, order_id: int, authz_urls: list[str]) -> None:
        # Removals are not announced: nobody waits for them, and the DNS server's periodic
        # refresh (`dns_refresh_seconds`) stops serving the values soon enough. Waiting for a
        # reload here would hold the worker thread for nothing. One DELETE (every solver's
        # cleanup removes its rows of challenge_records): no transaction around it.
        write_statement(
            self._sessions,
            functools.partial(remove_job, solver=solver, order_id=order_id, authz_urls=authz_urls),
        )
