"""Stopping a program a test started: politely first, and by force when it does not listen."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], grace_seconds: float = 5.0) -> None:
    """SIGTERM, wait up to `grace_seconds`, then SIGKILL; returns once the process is gone."""
    process.terminate()
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
