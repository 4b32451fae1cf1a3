"""Fixtures shared by the functional tests of the DNS zone: a real SQLite database with the
rows certok's other parts write, and an asyncio loop in a background thread."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import ChallengeRecord, Delegation, Order, Tenant
from certok.db.sessions import make_session_factory

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread; run() executes a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@dataclass
class Zone:
    """Writes the rows certok's other parts write: delegations and dns-01 TXT values."""

    sessions: sessionmaker[Session]
    tenant_id: int
    order_id: int

    def delegate(self, label: str, base_name: str) -> None:
        with transaction(self.sessions) as session:
            session.add(
                Delegation(
                    tenant_id=self.tenant_id, base_name=base_name, label=label, created_at=now()
                )
            )

    def present(self, label: str, value: str) -> None:
        with transaction(self.sessions) as session:
            session.add(
                ChallengeRecord(
                    order_id=self.order_id,
                    kind="dns-01",
                    name=label,
                    value=value,
                    authz_url=f"https://ca.test/authz/{value}",
                    created_at=now(),
                )
            )

    def clean_up(self, label: str) -> None:
        with transaction(self.sessions) as session:
            session.execute(delete(ChallengeRecord).where(ChallengeRecord.name == label))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def zone(sessions: sessionmaker[Session]) -> Zone:
    return make_zone(sessions)


def make_zone(sessions: sessionmaker[Session]) -> Zone:
    """A tenant and a pending dns-01 order to hang delegations and TXT values on."""
    with transaction(sessions) as session:
        tenant = Tenant(name="tenant-a", disabled=False, created_at=now())
        session.add(tenant)
        session.flush()
        order = Order(
            tenant_id=tenant.id,
            issuer="letsencrypt",
            algorithm="ECC",
            challenge_type="dns",
            domains="customer.test,*.customer.test",
            state="pending",
            attempts=0,
            next_attempt_at=now(),
            deadline_at=now() + dt.timedelta(days=1),
            created_at=now(),
        )
        session.add(order)
        session.flush()
        return Zone(sessions, tenant.id, order.id)
