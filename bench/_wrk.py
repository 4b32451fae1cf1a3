"""wrk as the HTTP load generator: one measured run and what its `--latency` output says.

api_rps.py and growth.py both drive certok's API with wrk (`-t1`, pinned to the load core) and
read the same figures from it: requests/s, latency (average and percentiles), requests, error
answers, socket errors, and the server's CPU over the run.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import CpuMeter, pinned, tool_path

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_DURATION = r"([\d.]+)(us|ms|s|m)"
_PERCENTILES = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+" + _DURATION + r"\s*$", re.MULTILINE)


@dataclass
class WrkResult:
    rps: float
    avg: float
    p50: float
    p99: float
    requests: int
    non_2xx: int
    socket_errors: int
    cpu_percent: float | None  # the server's, over the run
    command: str

    @property
    def per_cpu_second(self) -> float | None:
        """Requests per CPU-second of the server: what one core does when other work on the
        shared machine takes some of the server's core."""
        if not self.cpu_percent:
            return None
        return self.rps / (self.cpu_percent / 100.0)

    @property
    def clean(self) -> bool:
        """No error answers and no socket errors: error answers are cheap, so a rate that
        includes them is not the endpoint's."""
        return self.non_2xx == 0 and self.socket_errors == 0


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(output: str, command: str = "", cpu_percent: float | None = None) -> WrkResult:
    """The figures of one `wrk --latency` run from its output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    avg = re.search(r"^\s+Latency\s+" + _DURATION, output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    percentiles = {float(p): _seconds(v, u) for p, v, u in _PERCENTILES.findall(output)}
    if not (rps and avg and total and 50.0 in percentiles and 99.0 in percentiles):
        raise SystemExit(f"could not read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        rps=float(rps.group(1)),
        avg=_seconds(*avg.groups()),
        p50=percentiles[50.0],
        p99=percentiles[99.0],
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        cpu_percent=cpu_percent,
        command=command,
    )


def run_wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    core: int | None,
    headers: Sequence[str] = (),
    script: Path | None = None,
    server_pgid: int | None = None,
) -> WrkResult:
    """One `wrk -t1 --latency` run on `core`, measuring the CPU of `server_pgid` meanwhile."""
    argv = [tool_path("wrk"), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv = pinned([*argv, url], core)
    with CpuMeter(server_pgid) as cpu:
        finished = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_wrk(finished.stdout, shlex.join(argv), cpu.percent)
