"""The store an admin command works on, and its storage errors told in one line."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import click
from sqlalchemy.exc import DBAPIError

from certok.cli.problems import (
    ConfigProblem,
    database_problem,
    is_database_error,
)
from certok.db.files import sqlite_file
from certok.db.storage_errors import operator_message, storage_failure
from certok.errors import CertokError, ConfigurationError
from certok.persistence import Store, open_store
from certok.settings import Settings
from certok.startup import describe_database

T = TypeVar("T")


def open_admin_store(settings: Settings, *, announce: bool = True) -> Store:
    """The server's store for an admin command, saying on stderr which database it is (a
    command run from another directory would otherwise quietly make a new one)."""
    url = settings.effective_database_url
    database = describe_database(settings)
    new = url.startswith("sqlite") and not (settings.data_dir / "certok.db").exists()
    try:
        store = open_store(settings)
    except ConfigurationError as exc:
        raise ConfigProblem(exc.message) from None
    except Exception as exc:
        # A full disk or read-only storage is named as such, before any other diagnosis.
        storage = storage_problem(exc, settings)
        if storage is not None:
            raise click.ClickException(storage) from None
        if is_database_error(exc):
            raise database_problem(exc, settings) from None
        raise
    if new:
        click.echo(
            f"certok: created a new database {database}: if `certok serve` keeps its data "
            "elsewhere, run this where it runs or set data_dir (CERTOK_DATA_DIR, --config)",
            err=True,
        )
    elif announce:  # `serve` names it in its start-up summary, in the log's format
        click.echo(f"certok: database {database}", err=True)
    return store


def with_store(ctx: click.Context, action: Callable[[Store], T]) -> T:
    settings: Settings = ctx.obj
    with storage_errors_in_one_line(settings):
        store = open_admin_store(settings)
        try:
            return action(store)
        finally:
            store.close()


@contextlib.contextmanager
def storage_errors_in_one_line(settings: Settings) -> Iterator[None]:
    """certok's own errors, a full disk and read-only storage: one line, no traceback."""
    try:
        yield
    except ConfigurationError:
        raise  # the configuration's own one-line error (exit status 2)
    except CertokError as exc:
        raise click.ClickException(exc.message) from exc
    except (DBAPIError, OSError) as exc:
        problem = storage_problem(exc, settings)
        if problem is None:
            raise
        raise click.ClickException(problem) from exc


def storage_problem(exc: BaseException, settings: Settings) -> str | None:
    """The operator's one line for a full disk or read-only storage, else None."""
    if not isinstance(exc, DBAPIError | OSError):
        return None
    database = sqlite_file(settings.effective_database_url)
    directory = database.parent if database is not None else settings.data_dir
    failure = storage_failure(exc, directory)
    return None if failure is None else operator_message(failure, directory)
