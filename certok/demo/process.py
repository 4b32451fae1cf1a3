"""One child process of the rig: started with its output in a log file, stopped by its PID.

Each child gets its own session (process group), so a KILL after a TERM that was ignored also
reaches the helpers it forked (NSD's server and xfrd processes, nginx's workers) and nothing
outlives the rig. Only PIDs this module started are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from certok.demo.errors import RigError

TERM_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.02


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def tcp_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A named child process with a log file; `logs` lists every file worth showing on failure."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        extra_logs: Sequence[Path] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.logs = [log_path, *extra_logs]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        if self.running:
            raise RigError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self._process = subprocess.Popen(  # noqa: S603 - the rig's own argv
                    self.argv,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise RigError(f"cannot start {self.name} ({self.argv[0]}): {error}") from error

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit on its own (after a signal a test sent): its status."""
        if self._process is None:
            raise RigError(f"{self.name} was not started")
        return self._process.wait(timeout=timeout)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll `ready` until it is true; raise with the log tails if the process dies or stalls."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RigError(
                    f"{self.name} exited with code {self._process.returncode} "
                    f"before {what}\n{self.describe_logs()}"
                )
            try:
                if ready():
                    return
            except Exception:  # noqa: S110 - a service still starting may fail a probe in any way
                pass
            if time.monotonic() > deadline:
                raise RigError(
                    f"{self.name}: not {what} after {timeout:.0f} s\n{self.describe_logs()}"
                )
            time.sleep(_POLL_SECONDS)

    def describe_logs(self, lines: int = 40) -> str:
        parts = [f"$ {' '.join(self.argv)}"]
        for path in self.logs:
            parts.append(f"--- {path} (last {lines} lines) ---\n{tail(path, lines)}")
        return "\n".join(parts)

    def stop(self, grace: float = TERM_GRACE_SECONDS) -> None:
        """TERM, wait up to `grace` seconds, then KILL the process group."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        # Helpers the process forked may linger after the leader is gone.
        self._kill_group(process)
        self._process = None

    def kill(self) -> None:
        process = self._process
        if process is None:
            return
        self._kill_group(process)
        self._process = None

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        # start_new_session made the child its group's leader: its PID is the group ID.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=TERM_GRACE_SECONDS)
