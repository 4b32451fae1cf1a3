"""A rolling upgrade of two certok nodes on one PostgreSQL, as docs/deployment.md describes it.

Version N is this checkout. Version N+1 is a copy of it whose one difference is a migration
that adds a column (the kind of change a release makes): `certok db upgrade` of N+1 runs once
while both N nodes serve, then each node in turn is stopped and started again as N+1, so that
an N and an N+1 node work side by side on the new schema. Orders are asked for at every stage
and kept in flight across each step: none is lost, none is issued twice.
"""

from __future__ import annotations

import collections
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from certok.db.migrate import MIGRATIONS_DIR
from tests.e2e.cluster import (
    MANY_ORDERS_SETTINGS,
    KeptAliveUser,
    cluster,
    database_engine,
    scalar,
    slow_down_the_ca,
    stopped_after,
    wait_until_settled,
)
from tests.e2e.flow import delegation_lines, extra_hosts
from tests.rig import Rig

REPO_PACKAGE = Path(__file__).resolve().parents[2] / "certok"
ISSUER = "letsencrypt"
ORDERS_PER_STAGE = 15
STAGES = 4
NEW_COLUMN = "upgrade_note"
PENDING = "SELECT count(*) FROM orders WHERE state = 'pending'"


_MIGRATION = '''"""test only: version N+1 of the rolling-upgrade test adds a column

Revision ID: {revision}
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("{column}", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("orders", "{column}")
'''


def next_release(directory: Path) -> tuple[Path, str]:
    """A copy of this checkout's certok package with one more migration: the directory to put
    on PYTHONPATH, and the new revision."""
    package = directory / "certok"
    shutil.copytree(REPO_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    revision = "9001"
    migration = package / "db" / "migrations" / "versions" / f"{revision}_upgrade_test.py"
    migration.write_text(_MIGRATION.format(revision=revision, down=head, column=NEW_COLUMN))
    return directory, revision


def ask_for(users: Sequence[KeptAliveUser], codes: Sequence[str]) -> None:
    """Apply for each code, taking turns over `users` (the nodes' APIs)."""
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda i: users[i % len(users)].apply(codes[i], issuer=ISSUER)["status"],
                range(len(codes)),
            )
        )
    assert collections.Counter(answers) == {"pending": len(codes)}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_rolling_upgrade_loses_no_order(cluster_rig: Rig, tmp_path: Path) -> None:
    rig = cluster_rig
    started = time.monotonic()
    release, revision = next_release(tmp_path / "release-n1")
    with cluster(rig, tmp_path, 2) as (shared, _postgres):
        slow_down_the_ca(shared.proxy)
        old = [shared.node(i, tmp_path / f"n-{i}", settings=MANY_ORDERS_SETTINGS) for i in range(2)]
        new = [
            shared.node(i, tmp_path / f"n1-{i}", release=release, settings=MANY_ORDERS_SETTINGS)
            for i in range(2)
        ]
        with stopped_after([*old, *new]):
            old[0].cli("db", "upgrade")
            for node in old:
                node.start()
            rig.flush_resolver()
            engine = database_engine(shared.database_url)
            token = old[0].create_tenant("acme-corp")
            names, hosts = extra_hosts(ORDERS_PER_STAGE * STAGES)
            at = {node: KeptAliveUser(node, token) for node in [*old, *new]}
            data = [at[old[i % 2]].dv(",".join(names[i::STAGES])) for i in range(STAGES)]
            rig.set_customer_records(delegation_lines(*data, extra=hosts))
            codes = [at[old[i % 2]].dv(name)["code"] for i, name in enumerate(names)]
            assert all(codes)
            stages = [
                codes[i * ORDERS_PER_STAGE : (i + 1) * ORDERS_PER_STAGE] for i in range(STAGES)
            ]

            # Stage 1: both nodes at N; the schema of N+1 goes in once while they work.
            ask_for([at[node] for node in old], stages[0])
            assert "up to date" in new[0].cli("db", "upgrade")
            assert scalar(engine, "SELECT version_num FROM alembic_version") == revision
            columns = {c["name"] for c in inspect(engine).get_columns("orders")}
            assert NEW_COLUMN in columns

            # Stage 2: the N nodes keep taking orders on the new schema, and one of them that
            # crashes starts again on it (systemd restarting it mid-rollout).
            ask_for([at[node] for node in old], stages[1])
            old[1].kill()
            old[1].start()
            rig.flush_resolver()
            assert f"revision {revision}, which this certok does not know" in old[1].log_text()

            # Stage 3: node 0 upgraded; an N node and an N+1 node side by side.
            in_flight = [scalar(engine, PENDING)]
            old[0].stop()
            new[0].start()
            rig.flush_resolver()
            ask_for([at[new[0]], at[old[1]]], stages[2])

            # Stage 4: node 1 upgraded too.
            in_flight.append(scalar(engine, PENDING))
            old[1].stop()
            new[1].start()
            rig.flush_resolver()
            ask_for([at[node] for node in new], stages[3])

            print(f"rolling upgrade: orders pending as each N node stopped: {in_flight}")
            assert all(in_flight), in_flight
            states = wait_until_settled(engine, codes, timeout=120)
            assert collections.Counter(states.values()) == {"issued": len(codes)}
            certificates = shared.proxy.issued_certificates()
            assert {n: count for n, count in certificates.items() if count != 1} == {}
            assert set(certificates) == {(name,) for name in names}
            assert scalar(engine, "SELECT count(*) FROM challenge_records") == 0
            # The N+1 nodes drove orders too.
            assert any("issued for" in node.log_text() for node in new)
            engine.dispose()
    print(f"rolling upgrade: whole run {time.monotonic() - started:.1f} s")
