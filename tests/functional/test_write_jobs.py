"""Write jobs (`certok.db.writes`): batched on a SQLite file, one failing job fails alone, and
the writer process's channel runs them for other processes (or lets them run locally when it
is not there)."""

from __future__ import annotations

import datetime as dt
import functools
import pickle
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import make_engine
from certok.db.migrate import upgrade
from certok.db.models import Base, Tenant
from certok.db.sessions import make_session_factory
from certok.db.write_channel import WriterUnavailable, serve_writes
from certok.db.writes import TransactionWriter, WriteBatcher, write
from certok.errors import Unavailable
from tests.rig.open_files import file_table_full

TENANTS = Tenant.__table__


class NameTaken(Exception):
    """Raised by a job, to be seen by its caller alone."""


def add_tenant(connection: Connection, *, name: str) -> str:
    taken = connection.scalar(select(func.count()).where(TENANTS.c.name == name))
    # A taken name still writes a row first: the rollback must undo it.
    written = f"{name}-half-done-{secrets.token_hex(4)}" if taken else name
    connection.execute(
        insert(TENANTS).values(name=written, disabled=False, created_at=dt.datetime.now(dt.UTC))
    )
    if taken:
        raise NameTaken(name)
    return threading.current_thread().name


def tenant_names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.scalars(select(TENANTS.c.name)))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'certok.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _thirty_jobs_and_three_failing(sessions: sessionmaker[Session]) -> list[object]:
    """Each job's result (the name of the thread it ran in) or exception, all sent at once."""
    write(sessions, functools.partial(add_tenant, name="taken"))
    names = [f"t{i}" for i in range(30)] + ["taken"] * 3
    results: dict[int, object] = {}
    start = threading.Barrier(len(names))

    def call(index: int, name: str) -> None:
        start.wait()
        try:
            results[index] = write(sessions, functools.partial(add_tenant, name=name))
        except NameTaken as error:
            results[index] = error

    threads = [threading.Thread(target=call, args=item) for item in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[i] for i in range(len(names))]


def test_jobs_run_in_the_writer_thread_and_a_failing_one_fails_alone(engine: Engine) -> None:
    results = _thirty_jobs_and_three_failing(make_session_factory(engine))
    assert set(results[:30]) == {"certok-db-writer"}
    assert all(isinstance(result, NameTaken) for result in results[30:])
    # The failed jobs' inserts were rolled back; every other job's committed.
    assert tenant_names(engine) == sorted([f"t{i}" for i in range(30)] + ["taken"])


def _wait_until_listening(path: Path) -> None:
    # Until it listens, a job would run in the caller's process instead.
    deadline = time.monotonic() + 5
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                assert time.monotonic() < deadline, "the writer did not start listening"
        time.sleep(0.01)


@contextmanager
def writer_process(engine: Engine, tmp_path: Path) -> Iterator[tuple[Path, str, Engine]]:
    """A writer serving `engine` on a socket in a thread: its socket path, its thread's name,
    and another engine on the same file standing for an API + worker process."""
    path = tmp_path / "writer.sock"
    stop = threading.Event()
    sessions = make_session_factory(engine)
    server = threading.Thread(target=serve_writes, args=(path, sessions, stop), daemon=True)
    server.start()
    client_engine = make_engine(f"sqlite:///{tmp_path / 'certok.db'}")
    try:
        yield path, server.name, client_engine
    finally:
        stop.set()
        server.join(timeout=5)
        client_engine.dispose()
    assert not server.is_alive()


def test_the_writer_process_runs_every_connections_jobs_in_its_one_thread(
    engine: Engine, tmp_path: Path
) -> None:
    with writer_process(engine, tmp_path) as (path, writer_thread, client_engine):
        _wait_until_listening(path)
        # 33 calling threads: 33 connections, jobs arriving together and batched.
        client = make_session_factory(client_engine, writer_socket=path)
        results = _thirty_jobs_and_three_failing(client)
    assert set(results[:30]) == {writer_thread}
    assert all(isinstance(result, NameTaken) for result in results[30:])
    assert tenant_names(engine) == sorted([f"t{i}" for i in range(30)] + ["taken"])


@pytest.mark.parametrize("kind", ["sqlite-in-memory", "postgresql"])
def test_databases_without_a_single_writer_write_in_the_callers_thread(
    kind: str, postgres_database: str | None
) -> None:
    # PostgreSQL locks rows, not the database; an in-memory SQLite has no other process.
    if kind == "postgresql":
        if postgres_database is None:
            pytest.skip("PostgreSQL not configured (set CERTOK_TEST_POSTGRES_URL)")
        engine = make_engine(postgres_database)
    else:
        engine = create_engine("sqlite://")
        Base.metadata.create_all(engine)
    try:
        name = f"caller-{secrets.token_hex(4)}"
        sessions = make_session_factory(engine)
        assert isinstance(sessions.writer, TransactionWriter)
        assert write(sessions, functools.partial(add_tenant, name=name)) == "MainThread"
        assert name in tenant_names(engine)
    finally:
        with engine.begin() as connection:
            connection.execute(delete(TENANTS).where(TENANTS.c.name.like("caller-%")))
        engine.dispose()


def test_the_writer_channel_runs_jobs_and_returns_results_and_errors(
    engine: Engine, tmp_path: Path
) -> None:
    with writer_process(engine, tmp_path) as (path, writer_thread, client_engine):
        # Before the writer listens, a job runs in the caller's process (nothing was sent).
        absent = make_session_factory(client_engine, writer_socket=tmp_path / "not-there.sock")
        assert write(absent, functools.partial(add_tenant, name="local")) == "certok-db-writer"
        _wait_until_listening(path)
        assert path.stat().st_mode & 0o777 == 0o600

        client = make_session_factory(client_engine, writer_socket=path)
        assert write(client, functools.partial(add_tenant, name="remote")) == writer_thread
        with pytest.raises(NameTaken):
            write(client, functools.partial(add_tenant, name="remote"))
        # A job that does not pickle is refused before anything is sent.
        with pytest.raises(Exception, match="pickle"):
            write(client, lambda connection: None)
        assert tenant_names(engine) == ["local", "remote"]


def test_out_of_descriptors_a_write_is_refused_clearly_and_then_goes_through(
    engine: Engine, tmp_path: Path
) -> None:
    with writer_process(engine, tmp_path) as (path, writer_thread, client_engine):
        _wait_until_listening(path)
        client = make_session_factory(client_engine, writer_socket=path)
        with file_table_full(), pytest.raises(Unavailable) as refused:
            write(client, functools.partial(add_tenant, name="later"))
        assert "cannot open a connection to the writer process" in refused.value.message
        assert "try again" in refused.value.message
        assert tenant_names(engine) == []
        assert write(client, functools.partial(add_tenant, name="later")) == writer_thread
        assert tenant_names(engine) == ["later"]


def test_a_writer_that_goes_away_mid_job_is_reported(engine: Engine, tmp_path: Path) -> None:

    path = tmp_path / "writer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def accept_then_hang_up() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.close()

    peer = threading.Thread(target=accept_then_hang_up, daemon=True)
    peer.start()
    client_engine = make_engine(f"sqlite:///{tmp_path / 'certok.db'}")
    client = make_session_factory(client_engine, writer_socket=path)
    try:
        # The job may or may not have committed: the caller hears so, nothing runs again.
        with pytest.raises(WriterUnavailable):
            write(client, functools.partial(add_tenant, name="x"))
        assert tenant_names(engine) == []
    finally:
        peer.join(timeout=5)
        listener.close()
        client_engine.dispose()


def test_the_writer_answers_unreadable_jobs_and_failed_batches_and_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certok.db import write_channel, writes

    sessions = make_session_factory(engine)
    assert isinstance(sessions.writer, WriteBatcher)
    job = pickle.dumps(functools.partial(add_tenant, name="a"))
    unreadable, ran = write_channel._run_frames(sessions, [b"not a pickle", job])
    assert unreadable[0] is False and "unreadable write job" in str(unreadable[1])
    assert ran == (True, threading.current_thread().name)

    locked = OSError("database is locked")

    def cannot_run(engine: Engine, lock: object, jobs: list[object]) -> None:
        raise locked

    monkeypatch.setattr(writes, "run_jobs", cannot_run)
    assert write_channel._run_frames(sessions, [job, job]) == [(False, locked), (False, locked)]
    assert tenant_names(engine) == ["a"]
