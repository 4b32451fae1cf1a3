"""Helpers the benchmarks share: ports, core pinning, helper processes, CPU meters, the event
loop, results and their tables, and the command line every script has (`--json`, subcommands).

The machine is small (2 cores) and shared, so every benchmark runs its reference in the same
script, on the same core, with the load generator pinned to the other core, and reports ratios
next to absolute numbers. Results are numbers, never assertions: a missed target is printed,
not raised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.rig.certok_server import CertokServer
from tests.rig.ports import PortAllocator
from tests.rig.process import ManagedProcess

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
_T = TypeVar("_T")
_ports = PortAllocator()
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- ports, tools, cores ------------------------------------------------------------------------


def free_port(purpose: str) -> int:
    """A loopback port free for both TCP and UDP, never handed out twice in this process."""
    return _ports.allocate(purpose)


def require_tools(*names: str) -> None:
    """Exit with the install command when a program the benchmark runs is missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [name for name in names if shutil.which(name, path=search) is None]
    if missing:
        raise SystemExit(
            f"missing program(s): {', '.join(missing)}; install them with "
            f"`apt-get update && apt-get install -y {' '.join(missing)}`"
        )


def tool_path(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    path = shutil.which(name, path=search)
    if path is None:
        require_tools(name)
    assert path is not None
    return path


@dataclass(frozen=True)
class Cores:
    """Which CPU the server under test gets and which the load generator gets."""

    server: int | None
    load: int | None

    @classmethod
    def pick(cls) -> Cores:
        # Affinity, not cpu_count: a container or an outer taskset may allow fewer CPUs.
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2 or shutil.which("taskset") is None:
            # One core: pinning both to it would only hide that they compete.
            return cls(server=None, load=None)
        return cls(server=allowed[0], load=allowed[1])

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (fewer than 2 usable cores or no taskset)"
        return f"server on CPU {self.server}, load generator on CPU {self.load}"


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """`argv` run under `taskset -c core` (unchanged when core is None)."""
    if core is None:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of every live process in process group `pgid`.

    The benchmarks start each server in its own session (tests.rig.process), so its group holds
    exactly that server and the helpers it forked (NSD serves from a child process).
    """
    return processes_cpu_seconds(lambda _name, fields: int(fields[2]) == pgid) or 0.0  # pgrp


def named_cpu_seconds(name: str) -> float | None:
    """User+system CPU seconds of every live process whose command is `name` (a server this
    machine runs, such as PostgreSQL's backends); None when no such process runs here (the
    kernel keeps the first 15 characters of a command)."""
    return processes_cpu_seconds(lambda command, _fields: command == name)


def processes_cpu_seconds(wanted: Callable[[str, list[str]], bool]) -> float | None:
    """User+system CPU seconds of every live process for which `wanted(command name, the stat
    fields after it)` holds; None when none does."""
    total, matched = 0, False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            # A command name is any bytes its program chose.
            with open(f"/proc/{entry}/stat", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue  # exited while we looked
        # The command name may hold spaces and parentheses: split after the last ")".
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if wanted(command, fields):
            matched = True
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / _CLOCK_TICKS if matched else None


class CpuMeter:
    """CPU use of a process group over a window, as a percentage of one core."""

    def __init__(self, pgid: int | None) -> None:
        self._pgid = pgid
        self._cpu = 0.0
        self._wall = 0.0
        self.percent: float | None = None

    def _cpu_seconds(self) -> float | None:
        return None if self._pgid is None else group_cpu_seconds(self._pgid)

    def __enter__(self) -> Self:
        self._cpu = self._cpu_seconds() or 0.0
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._wall
        now = self._cpu_seconds()
        if now is None or wall <= 0:
            return
        self.percent = 100.0 * (now - self._cpu) / wall


class SelfCpuMeter(CpuMeter):
    """CPU use of this process (a load generator in the script itself), all its threads."""

    def __init__(self) -> None:
        super().__init__(None)

    def _cpu_seconds(self) -> float | None:
        times = os.times()
        return times.user + times.system


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# --- helper processes and event loops -----------------------------------------------------------


def script_command(script: str, subcommand: str, *args: str) -> list[str]:
    """`python <script> <subcommand> <args>`: a benchmark running a helper of its own."""
    return [sys.executable, str(Path(script).resolve()), subcommand, *args]


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    workdir: Path,
    ready: Callable[[], bool],
    what: str,
    core: int | None = None,
    timeout: float = STARTUP_TIMEOUT,
    cwd: Path | None = None,
    extra_logs: Sequence[Path] = (),
) -> ManagedProcess:
    """Start `argv` (pinned to `core`) with its output in `workdir/<name>.log`, and return once
    `ready()` holds. A process that never gets ready is stopped before the error is raised, so
    nothing outlives a failed benchmark."""
    process = ManagedProcess(
        name,
        pinned(argv, core),
        log_path=workdir / f"{name}.log",
        cwd=cwd or workdir,
        extra_logs=extra_logs,
    )
    process.start()
    try:
        process.wait_until(ready, what, timeout)
    except BaseException:
        process.stop()
        raise
    return process


class Stoppable(Protocol):
    def stop(self) -> None: ...


_Process = TypeVar("_Process", bound=Stoppable)


class Processes:
    """The servers a benchmark started, stopped newest first (a server may need an older one, as
    certok needs its resolver, until it has stopped)."""

    def __init__(self) -> None:
        self._started: list[Stoppable] = []

    def add(self, process: _Process) -> _Process:
        self._started.append(process)
        return process

    def stop_all(self) -> None:
        while self._started:
            self._started.pop().stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def certok_serve(
    env: Mapping[str, str], *, workdir: Path, core: int | None, timeout: float = STARTUP_TIMEOUT
) -> CertokServer:
    """A `certok serve` outside the rig (settings in `env`) pinned to `core`; not started yet."""
    command = pinned([sys.executable, "-m", "certok", "serve"], core)
    return CertokServer(env, workdir=workdir, command=command, startup_timeout=timeout)


def run_on_uvloop(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run `coroutine` on uvloop when it is installed (certok's `fast` extra; the loop
    `certok serve` runs on, certok.cli.main), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# --- machine -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d"),
        "nproc": str(os.cpu_count() or "?"),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def describe_machine() -> str:
    m = machine()
    return f"{m['date']}, nproc {m['nproc']}, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}"


# --- results -------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One row of a result table. Latencies are in seconds, keyed by what they are ("avg", "p99",
    "median", "p90"); `ratio` is throughput (or latency, per `ratio_of`) over the reference's."""

    bench: str
    case: str
    rate: float | None = None
    rate_unit: str = ""
    ratio: float | None = None
    ratio_of: str = ""
    latency: dict[str, float] = field(default_factory=dict)
    cpu_percent: float | None = None
    note: str = ""


@dataclass
class Target:
    """A goal from the issue and whether this run met it."""

    bench: str
    goal: str
    measured: str
    met: bool


@dataclass
class Report:
    measurements: list[Measurement] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.measurements.extend(other.measurements)
        self.targets.extend(other.targets)
        self.commands.extend(other.commands)

    def to_json(self) -> str:
        return json.dumps(
            {
                "machine": machine(),
                "measurements": [asdict(m) for m in self.measurements],
                "targets": [asdict(t) for t in self.targets],
                "commands": self.commands,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        return cls(
            measurements=[Measurement(**m) for m in data["measurements"]],
            targets=[Target(**t) for t in data["targets"]],
            commands=list(data.get("commands", [])),
        )

    def write(self, path: Path | None) -> None:
        if path is not None:
            path.write_text(self.to_json())


def format_duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def format_rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}".strip()


def _row(m: Measurement) -> list[str]:
    latency = ", ".join(f"{key} {format_duration(value)}" for key, value in m.latency.items())
    ratio = "-" if m.ratio is None else f"{m.ratio:.2f}x {m.ratio_of}".strip()
    cpu = "-" if m.cpu_percent is None else f"{m.cpu_percent:.0f}%"
    return [m.bench, m.case, format_rate(m.rate, m.rate_unit), ratio, latency or "-", cpu, m.note]


TABLE_HEADER = ["bench", "case", "rate", "ratio", "latency", "server CPU", "note"]


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, markdown: bool = False) -> str:
    rows = [list(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def print_report(report: Report, *, markdown: bool = False) -> None:
    print(table(TABLE_HEADER, (_row(m) for m in report.measurements), markdown=markdown))
    if report.targets:
        print()
        print(
            table(
                ["bench", "target (from the issue)", "measured", "met"],
                ([t.bench, t.goal, t.measured, "yes" if t.met else "NO"] for t in report.targets),
                markdown=markdown,
            )
        )


def clean_environment() -> None:
    """Drop inherited CERTOK_* variables: settings reach children only as the bench sets them."""
    for key in [k for k in os.environ if k.startswith("CERTOK_")]:
        del os.environ[key]


# --- the command line every benchmark script has -----------------------------------------------


def run_subcommand(subcommands: Mapping[str, Callable[[list[str]], None]]) -> bool:
    """`script.py <subcommand> ...` runs a helper the benchmark starts as a process of its own
    (a server, a resolver): True when one was asked for and has run."""
    if len(sys.argv) > 1 and sys.argv[1] in subcommands:
        subcommands[sys.argv[1]](sys.argv[2:])
        return True
    return False


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The parser of a benchmark script: its docstring's first paragraph, and `--json`."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here (run_all.py)")
    return parser


def invocation(script: str) -> str:
    """The command line this benchmark was started with, for the report."""
    return shlex.join([sys.executable, str(Path(script).resolve()), *sys.argv[1:]])


def print_commands(commands: Iterable[str]) -> None:
    unique = list(dict.fromkeys(commands))
    if unique:
        print("\ncommands measured:")
        for command in unique:
            print(f"  {command}")


def finish(report: Report, json_path: Path | None, *, show_commands: bool = False) -> None:
    """Print the report's tables (and the commands it measured), and write its JSON."""
    print()
    print_report(report)
    if show_commands:
        print_commands(report.commands)
    report.write(json_path)
