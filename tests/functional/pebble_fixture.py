"""A real Pebble CA on loopback for functional tests of the ACME adapter.

Each instance gets a throwaway TLS CA and server certificate (made with `cryptography`), a
config on free loopback ports, and runs with PEBBLE_VA_ALWAYS_VALID=1 so no DNS or HTTP
validation is needed. Pebble still insists on `-dnsserver`: it points at a free loopback
port where nothing answers (and nothing is ever asked). `run_pebble(validating=...)` starts
one that validates for real instead.

Import ``pebble_server`` and ``pebble_eab_server`` into a test module (``# noqa: F401``)
to get the module-scoped fixtures ``pebble`` (options via indirect parametrization, e.g.
``@pytest.mark.parametrize("pebble", [{"nonce_reject": 90}], indirect=True)``) and
``pebble_eab`` (externalAccountBindingRequired with the MAC keys in ``EAB_KEYS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kit.ports import free_port
from tests.kit.processes import stop_process
from tests.rig.tls import write_server_tls

PEBBLE_BINARY = "/usr/bin/pebble"
EAB_KEYS = {"kid-1": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"}
# Names Pebble refuses with rejectedIdentifier (its domainBlocklist covers subdomains too).
BLOCKED_DOMAIN = "blocked.test"
# Ports other processes on a shared machine use: never pick them.
_START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class PebbleInstance:
    directory_url: str
    ca_bundle: str
    management_url: str
    log_path: Path
    eab_keys: dict[str, str] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def root_certificate_pem(self) -> str:
        """Pebble's issuing root (regenerated at every start), from the management port."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(f"{self.management_url}/roots/0", context=context) as answer:
            return answer.read().decode("ascii")

    def certificate_status(self, serial: int) -> str:
        """Pebble's own view of a certificate ("Valid", "Revoked"), from the management port."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        url = f"{self.management_url}/cert-status-by-serial/{serial:x}"
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            status: str = json.loads(answer.read())["Status"]
        return status


@contextlib.contextmanager
def run_pebble(
    workdir: Path,
    *,
    nonce_reject: int = 0,
    eab_required: bool = False,
    strict: bool = False,
    validating: tuple[str, int] | None = None,
) -> Iterator[PebbleInstance]:
    """Start Pebble in ``workdir``, wait for its directory, yield it, stop it.

    ``validating``: (DNS server address, TLS port): Pebble validates challenges for real,
    resolving names through that server and connecting to that port for tls-alpn-01.
    """
    if not Path(PEBBLE_BINARY).exists():
        pytest.skip(f"{PEBBLE_BINARY} is not installed (apt-get install pebble)")
    tls = write_server_tls(workdir / "tls")
    bundle, cert_path, key_path = tls.ca_bundle, tls.certificate, tls.private_key
    acme_port, management_port = free_port(), free_port("pebble")
    config: dict[str, Any] = {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        # With ALWAYS_VALID nothing connects to these; they only have to be valid ports.
        # (A validating Pebble connects to the TLS port for tls-alpn-01.)
        "httpPort": free_port(),
        "tlsPort": validating[1] if validating else free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": eab_required,
        "domainBlocklist": [BLOCKED_DOMAIN],
        "certificateValidityPeriod": 7776000,
    }
    if eab_required:
        config["externalAccountMACKeys"] = EAB_KEYS
    config_path = workdir / "pebble.json"
    config_path.write_text(json.dumps({"pebble": config}, indent=2))
    env = {
        **os.environ,
        "PEBBLE_VA_ALWAYS_VALID": "0" if validating else "1",
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_AUTHZREUSE": "0",
        "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
    }
    command = [
        PEBBLE_BINARY,
        "-config",
        str(config_path),
        "-dnsserver",
        validating[0] if validating else f"127.0.0.1:{free_port()}",
    ]
    if strict:
        command.append("-strict")
    log_path = workdir / "pebble.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=workdir
        )
    instance = PebbleInstance(
        directory_url=f"https://127.0.0.1:{acme_port}/dir",
        ca_bundle=str(bundle),
        management_url=f"https://127.0.0.1:{management_port}",
        log_path=log_path,
        eab_keys=dict(EAB_KEYS) if eab_required else {},
    )
    try:
        _wait_for_directory(process, instance)
        yield instance
    finally:
        stop_process(process)


def _wait_for_directory(process: subprocess.Popen[bytes], instance: PebbleInstance) -> None:
    context = ssl.create_default_context(cafile=instance.ca_bundle)
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"pebble exited with {process.returncode} (busy port?):\n{instance.log_text()}"
            )
        try:
            with urllib.request.urlopen(instance.directory_url, context=context, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"pebble did not serve its directory in time:\n{instance.log_text()}")


# Registered under the short names; the function names differ so that importing them into a
# test module does not shadow the test functions' `pebble` / `pebble_eab` parameters.
@pytest.fixture(scope="module", name="pebble")
def pebble_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PebbleInstance]:
    """A plain Pebble; options (nonce_reject, strict) by indirect parametrization."""
    options: dict[str, Any] = getattr(request, "param", None) or {}
    workdir = tmp_path_factory.mktemp("pebble")
    with run_pebble(workdir, **options) as instance:
        yield instance
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module", name="pebble_eab")
def pebble_eab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleInstance]:
    """A Pebble that requires external account binding (MAC keys: EAB_KEYS)."""
    workdir = tmp_path_factory.mktemp("pebble-eab")
    with run_pebble(workdir, eab_required=True) as instance:
        yield instance
    shutil.rmtree(workdir, ignore_errors=True)
