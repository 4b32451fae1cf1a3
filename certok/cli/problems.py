"""Configuration mistakes as one or two lines an operator can act on, never a traceback.

Each message names the setting (and where its value came from: an environment variable, the
config file or a command-line option), the bad value and what to do. The `certok` command
exits with status 2 for all of them, like a usage error.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import IO, Any

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from certok.settings import Settings
from certok.settings_loading import ENV_PREFIX, setting_names, unknown_environment_variables
from certok.startup import describe_database

EXIT_CONFIG = 2
_MAX_VALUE_CHARS = 80


class ConfigProblem(click.ClickException):
    """A configuration mistake: printed as `certok: error: …` on stderr, exit status 2."""

    exit_code = EXIT_CONFIG

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"certok: error: {self.format_message()}", err=True)


def load_problem(exc: Exception, config: Path | None) -> ConfigProblem:
    """The settings could not be loaded: why, in one or two lines."""
    if isinstance(exc, tomllib.TOMLDecodeError):
        return ConfigProblem(
            f"config file {config} is not valid TOML: {exc}; fix that line "
            '(strings need quotes, lists are written ["a", "b"])'
        )
    if isinstance(exc, OSError):
        return ConfigProblem(f"config file {config} cannot be read: {exc.strerror or exc}")
    if isinstance(exc, SettingsError):
        return _settings_error(exc)
    if isinstance(exc, ValidationError):
        return _validation_problem(exc, config)
    raise exc


def check_environment() -> None:
    """Refuse CERTOK_* variables that name no setting, like unknown keys in the config file."""
    unknown = unknown_environment_variables()
    if not unknown:
        return
    known = setting_names()
    hints = []
    for name in unknown:
        head = name.split("__")[0].upper()
        close = difflib.get_close_matches(head, known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close and close[0] != head else ""
        hints.append(f"{name}{hint}")
    raise ConfigProblem(
        f"unknown setting in the environment: {', '.join(hints)}; rename or unset it "
        "(every setting is listed in docs/settings.md)"
    )


def database_problem(exc: Exception, settings: Settings) -> ConfigProblem:
    """The database named by database_url/data_dir could not be opened."""
    url = describe_database(settings)
    if isinstance(exc, ArgumentError | NoSuchModuleError):
        return ConfigProblem(
            f"database_url {url} is not a URL certok can use ({_first_line(exc)}); write it "
            "as postgresql+psycopg://user:password@host:5432/certok "
            "(pip install 'certok[postgres]')"
        )
    cause = getattr(exc, "orig", None) or exc
    reason = _first_line(cause)
    if settings.effective_database_url.startswith("sqlite"):
        return ConfigProblem(
            f"cannot open the SQLite database {url} ({reason}); check data_dir "
            f"({settings.data_dir}): it must be a writable directory"
        )
    return ConfigProblem(
        f"cannot connect to the database at database_url {url} ({reason}); check that "
        "PostgreSQL is running and the URL's host, port, user, password and database"
    )


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError | ArgumentError | NoSuchModuleError)


def _settings_error(exc: SettingsError) -> ConfigProblem:
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else "?"
    variable = ENV_PREFIX + field.upper()
    value = os.environ.get(variable)
    shown = f"={_short(value)}" if value is not None else ""
    return ConfigProblem(
        f"setting {field}: {variable}{shown} is not valid JSON; lists and tables are written "
        f"as JSON in the environment, e.g. {variable}='[\"127.0.0.1:53\"]'"
    )


def _validation_problem(exc: ValidationError, config: Path | None) -> ConfigProblem:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    setting = ".".join(loc) or "settings"
    if first.get("type") == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], list(Settings.model_fields), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close and len(loc) == 1 else ""
        line = f"unknown setting {setting!r}{_source(loc, config)}{hint}; remove or rename it"
    else:
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        value = first.get("input")
        shown = f" = {_short(value)}" if not isinstance(value, dict) else ""
        line = f"setting {setting}{shown}{_source(loc, config)}: {message}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return ConfigProblem(f"{line}{more}\nsee docs/settings.md for every setting and its range")


def _source(loc: list[str], config: Path | None) -> str:
    if not loc:
        return ""
    variable = ENV_PREFIX + "__".join(part.upper() for part in loc)
    if variable in os.environ or ENV_PREFIX + loc[0].upper() in os.environ:
        return f" (from the environment, {variable})"
    if config is not None:
        return f" (in {config})"
    return ""


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
