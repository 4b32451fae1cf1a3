"""Every benchmark in bench/, one after another, and one combined table at the end.

    python bench/run_all.py [--quick] [--only dns_qps,api_rps,issuance_latency] [--markdown]

Each benchmark runs as its own process (so one's servers never outlive it or disturb the
next) and prints its own progress and table as it goes; dns_qps.py and api_rps.py hand their
numbers over as JSON, issuance_latency.py's summary lines are read from its output.
`--markdown` prints the combined table in the form bench/README.md keeps under "Latest results".
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Measurement, Report, Target, describe_machine, print_report

BENCH_DIR = Path(__file__).resolve().parent
ORDER = ("dns_qps", "api_rps", "issuance_latency")


def _tee(argv: list[str]) -> tuple[int, str]:
    """Run `argv`, echoing its output as it comes; (exit code, everything it printed)."""
    print(f"$ {' '.join(argv)}", flush=True)
    lines: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        code = process.wait()
    return code, "".join(lines)


def _failed(bench: str, code: int, output: str) -> Report:
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return Report(
        measurements=[Measurement(bench=bench, case="FAILED", note=f"exit {code}: {last[:120]}")]
    )


def run_json_bench(name: str, extra: list[str], workdir: Path) -> Report:
    result = workdir / f"{name}.json"
    argv = [sys.executable, str(BENCH_DIR / f"{name}.py"), *extra, "--json", str(result)]
    code, output = _tee(argv)
    if code != 0 or not result.exists():
        return _failed(name, code, output)
    return Report.from_json(result.read_text())


_ISSUANCE_LINE = re.compile(
    r"^\s+(?P<who>floor[^:]*|certok serve):\s+median (?P<median>[\d.]+) s\s+"
    r"p90 (?P<p90>[\d.]+) s\s+\(n=(?P<n>\d+)\)",
    re.MULTILINE,
)


def parse_issuance(output: str, command: str) -> Report:
    """The two summary lines of bench/issuance_latency.py as measurements."""
    rows = {m["who"]: m for m in _ISSUANCE_LINE.finditer(output)}
    floor = next((match for who, match in rows.items() if who.startswith("floor")), None)
    certok = rows.get("certok serve")
    if floor is None or certok is None:
        return _failed("issuance_latency", 0, "could not read its summary lines")
    report = Report(commands=[command])
    floor_median = float(floor["median"])
    for label, match, ratio in (
        ("floor: acme library client, 0.1 s polls", floor, 1.0),
        ("certok serve: apply -> issued", certok, float(certok["median"]) / floor_median),
    ):
        report.measurements.append(
            Measurement(
                bench="issuance_latency",
                case=label,
                ratio=ratio,
                ratio_of="floor's latency",
                latency={"median": float(match["median"]), "p90": float(match["p90"])},
                note=f"dns-01, one name, Pebble; n={match['n']}",
            )
        )
    return report


def run_issuance(runs: int) -> Report:
    argv = [sys.executable, str(BENCH_DIR / "issuance_latency.py"), "--runs", str(runs)]
    code, output = _tee(argv)
    if code != 0:
        return _failed("issuance_latency", code, output)
    return parse_issuance(output, shlex.join(argv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(ORDER)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs (3 s, one round, 5 issuances): a smoke test",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per load run (default: each bench's)"
    )
    parser.add_argument("--repeat", type=int, help="rounds per load run (default: each bench's)")
    parser.add_argument("--runs", type=int, default=20, help="issuances to time (20)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args()

    chosen = ORDER if not args.only else tuple(n.strip() for n in args.only.split(","))
    unknown = set(chosen) - set(ORDER)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; know {ORDER}")
    duration = args.duration or (3.0 if args.quick else None)
    repeat = args.repeat or (1 if args.quick else None)
    extra: list[str] = []
    if duration:
        extra += ["--duration", f"{duration:g}"]
    if repeat:
        extra += ["--repeat", str(repeat)]

    started = time.monotonic()
    combined = Report()
    with tempfile.TemporaryDirectory(prefix="certok-bench-all-") as tmp:
        for name in chosen:
            print(f"\n=== {name} ===", flush=True)
            if name == "issuance_latency":
                combined.extend(run_issuance(5 if args.quick else args.runs))
            else:
                combined.extend(run_json_bench(name, extra, Path(tmp)))

    print(f"\n=== all benchmarks ({time.monotonic() - started:.0f} s) ===")
    print(f"machine: {describe_machine()}\n")
    print_report(combined, markdown=args.markdown)
    if combined.commands:
        print("\ncommands measured:")
        for command in dict.fromkeys(combined.commands):
            print(f"  {command}")
    missed: list[Target] = [t for t in combined.targets if not t.met]
    if missed:
        print(f"\n{len(missed)} target(s) not met (numbers, not a failure of this script)")


if __name__ == "__main__":
    main()
