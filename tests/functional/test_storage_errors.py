"""A full disk and read-only storage are named as such, by the API and by the CLI.

The API answers 503 with a message saying the disk is full (or the storage read-only), not
that the database is unreachable; the CLI prints one line, no traceback. The disk fills
without root here (SQLite's `max_page_count`); the CLI's tests mount a small tmpfs (as root
only), full or read-only, since the command's own process must meet the real thing.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, insert
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from certok.db.models import Order
from certok.db.sessions import make_session_factory
from certok.persistence import Store
from tests.functional.test_api import ApiHarness, api, api_settings, assert_error, make_app
from tests.kit.rows import order_row

__all__ = ["api"]  # the fixture, imported for these tests

NOW = dt.datetime.now(dt.UTC)


def _sqlite_only(harness: ApiHarness) -> Path:
    database = harness.store.engine.url.database
    if harness.store.engine.dialect.name != "sqlite" or not database:
        pytest.skip("SQLite's page limit stands in for a full disk")
    return Path(database)


def _fill_the_disk(harness: ApiHarness) -> None:
    """From now on the database cannot grow by one page: every connection gets
    `max_page_count` = the current size, and the orders' pages are filled to the brim with
    orders like the one `apply` will write."""
    engine = harness.store.engine

    def limit(connection: Any, _record: object) -> None:
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(engine, "connect", limit)
    engine.dispose()  # pooled connections were opened without the limit
    # The apply's own tenant, names and a state sorting just before `pending`: the new order's
    # row and index entries all go to the rightmost pages these fill, whatever other columns
    # and indexes the orders table has.
    row = order_row(
        harness.tenant_ids["alpha"],
        NOW,
        issuer="google",
        domains="a.example.com",
        state="failure",
        deadline_at=NOW,
    )
    for _ in range(10_000):
        try:
            with engine.begin() as connection:
                connection.execute(insert(Order), row)
        except OperationalError as full:
            assert "full" in str(full)
            return
    raise AssertionError("the database never filled up")


def test_apply_on_a_full_disk_says_the_disk_is_full(api: ApiHarness) -> None:
    _sqlite_only(api)
    code = api.code_for("alpha", ["a.example.com"])
    _fill_the_disk(api)
    response = api.get("/v1/cert/apply", code=code)
    assert_error(response, 503, "disk is full", "retry")
    assert "unreachable" not in response.json()["msg"]
    assert int(response.headers["retry-after"]) > 0


def test_apply_on_read_only_storage_says_so(api: ApiHarness, tmp_path: Path) -> None:
    database = _sqlite_only(api)
    code = api.code_for("alpha", ["a.example.com"])
    # The same database, opened the way read-only storage lets it be opened.
    engine = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")
    store = Store(engine, make_session_factory(engine), api.store.box)
    app = make_app(api_settings(tmp_path, apply_wait_seconds=0), store, wake_worker=lambda: None)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(
            "/v1/cert/apply", params={"code": code}, headers={"httpsok-token": api.tokens["alpha"]}
        )
    engine.dispose()
    assert_error(response, 503, "read-only", "retry")
    assert "unreachable" not in response.json()["msg"]


# --- the CLI, on a real full or read-only file system ---------------------------------------


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def certok_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")}
    env["CERTOK_DATA_DIR"] = str(data)
    return subprocess.run(
        [sys.executable, "-m", "certok", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_the_cli_on_a_full_disk_prints_one_line(small_mount: Path) -> None:
    data = small_mount / "data"
    assert certok_cli(data, "tenant", "create", "first").returncode == 0
    # Unbuffered: a write the disk takes only part of leaves nothing behind for close() to
    # flush (and fail on), whatever room the database left.
    with open(small_mount / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as full:
            assert full.errno == errno.ENOSPC
    assert_one_line(certok_cli(data, "tenant", "create", "second"), "full", str(data))


def test_the_cli_on_a_read_only_data_directory_prints_one_line(small_mount: Path) -> None:
    data = small_mount / "data"
    assert certok_cli(data, "tenant", "create", "first").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    assert_one_line(certok_cli(data, "tenant", "create", "second"), "read-only", str(data))
    # A data directory that does not exist yet cannot be made there either.
    assert_one_line(certok_cli(small_mount / "new", "tenant", "list"), "read-only")


def test_the_cli_on_a_full_disk_from_the_first_start(small_mount: Path) -> None:
    with open(small_mount / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    assert_one_line(certok_cli(small_mount / "data", "tenant", "create", "first"), "full")
