from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from certok.api.caches import TtlCache
from certok.db.engine import transaction
from certok.store import Store
from certok.tenants import service as tenants
from tests.console.harness import Browser, add_user
from tests.functional.test_api import api_settings, make_app


@pytest.fixture
def console_app(store: Store, tmp_path: Path):  # type: ignore[no-untyped-def]
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta"):
            tenants.create_tenant(session, name)
    add_user(store, "ann@alpha.test", "alpha")
    add_user(store, "bob@beta.test", "beta")
    add_user(store, "olga@ops.test", None)
    settings = api_settings(tmp_path, apply_wait_seconds=0.0, console_sign_in_per_minute=5)
    return make_app(
        settings,
        store,
        wake_worker=lambda: None,
        tokens=TtlCache(ttl=0, max_entries=10),
    )


@pytest.fixture
def browser(console_app) -> Iterator[Browser]:  # type: ignore[no-untyped-def]
    with TestClient(console_app, raise_server_exceptions=True, follow_redirects=False) as client:
        yield Browser(client)


@pytest.fixture
def other_browser(console_app) -> Iterator[Browser]:  # type: ignore[no-untyped-def]
    with TestClient(console_app, raise_server_exceptions=True, follow_redirects=False) as client:
        yield Browser(client)
