"""The rig's two Pebbles (plain and EAB): their processes and the root each makes at start."""

from __future__ import annotations

import http.client
import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from certok.demo.errors import RigError
from certok.demo.process import ManagedProcess

PEBBLE_NAMES = ("pebble", "pebble-eab")


def base_settings(nonce_reject: int) -> dict[str, str]:
    """The `PEBBLE_*` variables every rig Pebble starts with."""
    return {
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
        "PEBBLE_AUTHZREUSE": "0",
    }


def pebble_process(
    name: str,
    binary: str,
    config: Path,
    settings: Mapping[str, str],
    resolver_address: str,
    runtime_dir: Path,
) -> ManagedProcess:
    """One Pebble resolving through the rig's unbound, with exactly `settings` as `PEBBLE_*`."""
    # Only the variables this rig sets reach Pebble: a PEBBLE_* in the caller's environment
    # would silently change its behaviour.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PEBBLE_")}
    env.update(settings)
    return ManagedProcess(
        name,
        [binary, "-config", str(config), "-dnsserver", resolver_address],
        log_path=runtime_dir / "logs" / f"{name}.log",
        cwd=runtime_dir / "pebble",
        env=env,
    )


def fetch_root(management_url: str, ca_bundle: Path) -> str:
    """PEM of a Pebble's current root, from its management port."""
    context = ssl.create_default_context(cafile=str(ca_bundle))
    host, port = management_url.removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), timeout=5.0, context=context)
    try:
        connection.request("GET", "/roots/0")
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    if response.status != 200:
        raise RigError(f"Pebble's /roots/0 answered {response.status}: {body[:200]}")
    return body
