from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from starlette.routing import Mount
from starlette.testclient import TestClient

from certok.api.caches import TtlCache
from certok.console.auth_pages import SIGN_IN_KIND
from certok.console.web import ConsoleServices
from certok.db.engine import transaction
from certok.persistence import Store
from certok.ratelimit import RateLimiter
from certok.tenants import service as tenants
from certok.tenants import users
from tests.console.harness import Browser, add_user
from tests.functional.test_api import api_settings, make_app

# Sign-in attempts a minute in the tests (each sign-in of a test counts).
SIGN_IN_LIMIT = 8


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashes() -> Iterator[None]:
    """Argon2id with small parameters: the tests sign in often, on a shared machine."""
    users.use_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    yield
    users.use_hasher(PasswordHasher())


@pytest.fixture
def console_app(store: Store, tmp_path: Path):  # type: ignore[no-untyped-def]
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta"):
            tenants.create_tenant(session, name)
    add_user(store, "ann@alpha.test", "alpha")
    add_user(store, "bob@beta.test", "beta")
    add_user(store, "olga@ops.test", None)
    settings = api_settings(
        tmp_path, apply_wait_seconds=0.0, console_sign_in_per_minute=SIGN_IN_LIMIT
    )
    app = make_app(
        settings,
        store,
        wake_worker=lambda: None,
        tokens=TtlCache(ttl=0, max_entries=10),
    )
    # Sign-in buckets that do not refill while a test runs, however slow the machine.
    console_services(app).limiter = RateLimiter({SIGN_IN_KIND: SIGN_IN_LIMIT}, clock=lambda: 1000.0)
    return app


def console_services(app) -> ConsoleServices:  # type: ignore[no-untyped-def]
    [mount] = [r for r in app.routes if isinstance(r, Mount) and r.path == "/console"]
    return mount._base_app.state.console


@pytest.fixture
def browser(console_app) -> Iterator[Browser]:  # type: ignore[no-untyped-def]
    with TestClient(console_app, raise_server_exceptions=True, follow_redirects=False) as client:
        yield Browser(client)


@pytest.fixture
def other_browser(console_app) -> Iterator[Browser]:  # type: ignore[no-untyped-def]
    with TestClient(console_app, raise_server_exceptions=True, follow_redirects=False) as client:
        yield Browser(client)
