"""The rig's programs: where they are installed, and running their control tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from certok.demo.errors import RigError

REQUIRED_BINARIES = {
    "pebble": "/usr/bin/pebble",
    "unbound": "unbound",
    "unbound-control": "unbound-control",
    "nsd": "nsd",
    "nsd-control": "nsd-control",
    "nginx": "nginx",
}
_CONTROL_TIMEOUT_SECONDS = 10.0
# Extra system directories: nsd/unbound/nginx live in /usr/sbin, which a non-root PATH may lack.
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_binary(name: str) -> str | None:
    """Absolute path of a rig binary, also looking in the sbin directories."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    return shutil.which(name, path=search)


def missing_binaries() -> list[str]:
    """Names of the rig's programs that are not installed (empty when the rig can run)."""
    return [name for name, path in REQUIRED_BINARIES.items() if find_binary(path) is None]


def require_binary(name: str) -> str:
    """Absolute path of one of `REQUIRED_BINARIES`, or RigError saying how to install it."""
    path = find_binary(REQUIRED_BINARIES[name])
    if path is None:
        raise RigError(
            f"{name} is not installed: apt-get install -y pebble unbound nsd nginx dnsutils "
            "(scripts/test does this when run as root)"
        )
    return path


def run_control(program: str, config: Path, args: Sequence[str]) -> str:
    """Run `unbound-control`/`nsd-control` against a config; its output, or RigError."""
    argv = [require_binary(program), "-c", str(config), *args]
    try:
        done = subprocess.run(  # noqa: S603 - a rig binary, fixed arguments
            argv, capture_output=True, text=True, timeout=_CONTROL_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise RigError(f"{' '.join(argv)} timed out") from error
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or output.startswith("error"):
        raise RigError(f"{' '.join(argv)} failed ({done.returncode}): {output}")
    return output
