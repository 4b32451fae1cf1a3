"""The `CERTOK_*` settings that point a certok server at a running rig.

Settings reach certok only as environment variables (certok/settings.py): a child process
gets exactly these, with every inherited `CERTOK_*` removed, so a shell's variables cannot
leak into a demo or a test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from certok.demo.rig import Rig

ENV_PREFIX = "CERTOK_"


def env_name(key: str) -> str:
    """`apply_wait_seconds` → `CERTOK_APPLY_WAIT_SECONDS`; a full `CERTOK_*` name stays as is."""
    return key if key.startswith(ENV_PREFIX) else ENV_PREFIX + key.upper()


def env_value(value: object) -> str:
    """How pydantic-settings reads a value from the environment: lists and dicts as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def rig_environment(rig: Rig, data_dir: Path, **extra: object) -> dict[str, str]:
    """The CERTOK_* variables that point certok at `rig`.

    `extra` adds or overrides settings by field name (`apply_wait_seconds=1`,
    `issuers__google__eab_kid="kid-2"`) or by full variable name; a value of None removes
    the variable (certok then uses its default).
    """
    env = {
        "CERTOK_DATA_DIR": str(data_dir),
        "CERTOK_API_HOST": "127.0.0.1",
        "CERTOK_API_PORT": str(rig.certok_api_port),
        "CERTOK_PUBLIC_URL": f"http://127.0.0.1:{rig.certok_api_port}",
        "CERTOK_DNS_HOST": "127.0.0.1",
        "CERTOK_DNS_PORT": str(rig.certok_dns_port),
        "CERTOK_DNS_ZONE": rig.certok_zone,
        "CERTOK_RESOLVERS": json.dumps([rig.resolver_address]),
        "CERTOK_ACME_POLL_SECONDS": "0.05",
    }
    # CERTOK_TEST_PROCESSES=N runs every rig server as `processes = N` (scripts/test runs
    # the end-to-end tests once more that way); a test's own `processes=` still wins.
    if os.environ.get("CERTOK_TEST_PROCESSES"):
        env["CERTOK_PROCESSES"] = os.environ["CERTOK_TEST_PROCESSES"]
    for issuer, directory in (
        ("LETSENCRYPT", rig.directory_url),
        ("ZEROSSL", rig.directory_url),
        ("GOOGLE", rig.eab_directory_url),
    ):
        env[f"CERTOK_ISSUERS__{issuer}__DIRECTORY"] = directory
        env[f"CERTOK_ISSUERS__{issuer}__CA_BUNDLE"] = str(rig.ca_bundle)
    env["CERTOK_ISSUERS__GOOGLE__EAB_KID"] = rig.eab_kid
    env["CERTOK_ISSUERS__GOOGLE__EAB_HMAC_KEY"] = rig.eab_hmac_key
    for key, value in extra.items():
        name = env_name(key)
        if value is None:
            env.pop(name, None)
        else:
            env[name] = env_value(value)
    # The public URL follows an overridden API port unless it was given too.
    if "CERTOK_PUBLIC_URL" not in {env_name(key) for key in extra}:
        env["CERTOK_PUBLIC_URL"] = f"http://127.0.0.1:{env['CERTOK_API_PORT']}"
    return env


def child_environment(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any CERTOK_*, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    env.update(settings)
    return env
