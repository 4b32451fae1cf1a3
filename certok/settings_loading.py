"""Where settings come from: the TOML config file and ``CERTOK_*`` variables, and the
variables that name no setting (a typo must not go unnoticed)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from certok.issuer_settings import IssuerSettings
from certok.settings import Settings

ENV_PREFIX = "CERTOK_"
# CERTOK_* variables that are not settings: the config file's path, the Python the scripts
# use, and the test suite's own knobs (CERTOK_TEST_*, the rig's and the crash test's), which
# a test's certok subprocess may inherit.
_NOT_SETTINGS = frozenset(
    {"CERTOK_CONFIG", "CERTOK_PYTHON", "CERTOK_RIG_KEEP", "CERTOK_CRASH_SEED"}
)
_NOT_SETTINGS_PREFIX = "CERTOK_TEST_"


def unknown_environment_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``CERTOK_*`` variables that name no setting (a typo such as CERTOK_API_PROT)."""
    env = os.environ if environ is None else environ
    fields = {name.upper() for name in Settings.model_fields}
    issuer_fields = {name.upper() for name in IssuerSettings.model_fields}
    unknown = []
    for key in env:
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _NOT_SETTINGS:
            continue
        if upper.startswith(_NOT_SETTINGS_PREFIX):
            continue
        parts = upper[len(ENV_PREFIX) :].split("__")
        bad_issuer_field = parts[0] == "ISSUERS" and (
            len(parts) != 3 or parts[2] not in issuer_fields
        )
        if parts[0] not in fields or bad_issuer_field:
            unknown.append(key)
    return sorted(unknown)


def setting_names() -> list[str]:
    """Every ``CERTOK_*`` variable name a top-level setting has (for suggestions)."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings from the TOML file (``config_file`` or ``$CERTOK_CONFIG``) and env."""
    path = config_file or os.environ.get("CERTOK_CONFIG")
    values: dict[str, Any] = {}
    if path:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    values.update(overrides)
    return Settings(**values)
