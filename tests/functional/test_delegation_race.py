"""Two dv calls storing the same new delegation at once, on PostgreSQL (SQLite's writers take
turns, so the race cannot happen there): the one that loses answers with the label that was
stored, which every process then keeps (certok/domains/known_labels.py), not the one it
computed itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import utcnow
from certok.db.engine import make_engine, opened, transaction
from certok.db.models import Delegation
from certok.db.sessions import make_session_factory
from certok.domains.delegations import compute_label, ensure_delegations
from certok.tenants import service as tenants
from tests.conftest import IN_CI

BASE = "race.customer.test"
STORED_ELSEWHERE = "0123456789abcdef"


@pytest.fixture
def pg_sessions(postgres_database: str | None) -> Iterator[sessionmaker[Session]]:
    if postgres_database is None:
        if IN_CI:
            pytest.fail("CI=true but CERTOK_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL not configured (set CERTOK_TEST_POSTGRES_URL)")
    engine = make_engine(postgres_database)
    yield make_session_factory(engine)
    with engine.begin() as connection:
        connection.execute(Delegation.__table__.delete().where(Delegation.base_name == BASE))
    engine.dispose()


def test_the_loser_of_a_store_race_answers_with_the_stored_label(
    pg_sessions: sessionmaker[Session],
) -> None:
    key = b"k" * 32
    with transaction(pg_sessions) as session:
        tenant_id = tenants.create_tenant(session, "race").id
    engine = opened(pg_sessions).engine

    raced = False

    def store_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # Right after the dv's look-up found nothing, another node stores the name, with a
        # label of its own (as a node with another label key would).
        nonlocal raced
        if raced or "FROM delegations" not in statement:
            return
        raced = True
        with engine.connect() as other:
            other.execute(
                insert(Delegation).values(
                    tenant_id=tenant_id, base_name=BASE, label=STORED_ELSEWHERE, created_at=utcnow()
                )
            )
            other.commit()

    event.listen(engine, "after_cursor_execute", store_first)
    try:
        with transaction(pg_sessions) as session:
            labels = ensure_delegations(session, tenant_id, [BASE], key)
    finally:
        event.remove(engine, "after_cursor_execute", store_first)

    assert raced
    assert compute_label(key, tenant_id, BASE) != STORED_ELSEWHERE
    assert labels == {BASE: STORED_ELSEWHERE}
