"""The real certok server as a subprocess (`python -m certok serve`), configured for a rig.

    server = CertokServer.for_rig(rig, tmp_path, apply_wait_seconds=1)
    server.start()            # returns once GET /healthz answers 200
    httpx.get(server.base_url + "/v1/...")
    server.kill(); server.start()   # crash and recover on the same data dir

Settings reach certok only as `CERTOK_*` environment variables (certok/settings.py), so the
child gets the caller's environment with every inherited `CERTOK_*` removed and then exactly
the variables built here: a developer's shell cannot leak into a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import httpx

from certok.demo.certok_env import ENV_PREFIX, rig_environment
from tests.rig.errors import RigError
from tests.rig.process import ManagedProcess

if TYPE_CHECKING:
    from tests.rig.rig import Rig

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


class CertokServer:
    """One `certok serve` process: start, stop (TERM), kill (KILL), restart, read its log."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        workdir: Path,
        command: Sequence[str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
        rig: Rig | None = None,
    ) -> None:
        """`env` holds the CERTOK_* variables (see `env_for`); `command` replaces the default
        `python -m certok serve` (the harness's own tests use a stand-in)."""
        if "CERTOK_API_PORT" not in env:
            raise RigError("CERTOK_API_PORT is required: the harness polls /healthz on it")
        self.env = dict(env)
        self.api_port = int(self.env["CERTOK_API_PORT"])
        self.workdir = workdir
        self.command = list(command or [sys.executable, "-m", "certok", "serve"])
        self.startup_timeout = startup_timeout
        self.rig = rig
        self.log_path = workdir / "certok.log"
        self._process: ManagedProcess | None = None

    @classmethod
    def for_rig(cls, rig: Rig, workdir: Path, **extra: object) -> CertokServer:
        """A server on `rig`, with its data in `workdir/data` and its log in `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(cls.env_for(rig, workdir / "data", **extra), workdir=workdir, rig=rig)

    @staticmethod
    def env_for(rig: Rig, data_dir: Path, **extra: object) -> dict[str, str]:
        """The CERTOK_* variables that point certok at `rig` (see `rig_environment`)."""
        return rig_environment(rig, data_dir, **extra)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Self:
        """Start and wait until GET /healthz answers 200; on failure raise with the log tail."""
        if self.running:
            raise RigError(f"certok is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = ManagedProcess(
            "certok",
            self.command,
            log_path=self.log_path,
            cwd=self.workdir,
            env=self._child_env(),
        )
        self._process.start()
        try:
            self._process.wait_until(
                self._healthy,
                f"answering GET {self.base_url}/healthz with 200",
                self.startup_timeout,
            )
        except BaseException:
            self._process.kill()
            raise
        if self.rig is not None:
            # unbound may have found certok's DNS port dead while certok was down: forget that.
            self.rig.flush_resolver()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, wait up to `timeout` for a clean exit, then SIGKILL."""
        if self._process is not None:
            self._process.stop(grace=timeout)

    def wait_exit(self, timeout: float) -> int:
        """Wait for certok to exit after a signal the test sent it: its exit status."""
        if self._process is None:
            raise RigError("certok was not started")
        return self._process.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL at once: a crash, with no chance to clean up."""
        if self._process is not None:
            self._process.kill()

    def restart(self, *, hard: bool = False) -> Self:
        """Stop (or with `hard`, kill) and start again on the same data dir and settings."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def cli(self, *args: str) -> str:
        """Run `certok ARGS` on this server's data dir, as an operator would; its stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "certok", *args],
            env={**os.environ, **self._child_env()},
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RigError(f"certok {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def create_tenant(self, name: str) -> str:
        """`certok tenant create NAME`; the token it prints."""
        return self.cli("tenant", "create", name).split("token:")[1].split()[0]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals -----------------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
        env.update(self.env)
        # Logs must reach the file as they happen, not when a buffer fills or the process exits.
        env["PYTHONUNBUFFERED"] = "1"
        # `python -m certok` from any cwd, installed in the venv or not.
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if part
        )
        return env

    def _healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.base_url}/healthz", timeout=0.5, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
