"""Every benchmark in bench/, one after another, and one combined table at the end.

    python bench/run_all.py [--quick] [--only dns_qps,api_rps,...] [--skip-peers] [--markdown]

Each benchmark runs as its own process (so one's servers never outlive it or disturb the
next) and prints its own progress and table as it goes, then hands its numbers over as JSON
(`--json FILE`, which every benchmark script takes).
`--markdown` prints the combined table in the form bench/README.md keeps under "Latest results".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Measurement, Report, Target, describe_machine, print_report

BENCH_DIR = Path(__file__).resolve().parent
ORDER = (
    "dns_qps",
    "api_rps",
    "issuance_latency",
    "issuance_throughput",
    "growth",
    "agent_noop",
)


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


def bench_arguments(name: str, args: argparse.Namespace) -> list[str]:
    """The command-line flags `name` gets from run_all's own flags."""
    quick = args.quick
    extra: list[str] = []
    if name in ("dns_qps", "api_rps"):
        duration = args.duration or (3.0 if quick else None)
        repeat = args.repeat or (1 if quick else None)
        if duration:
            extra += ["--duration", f"{duration:g}"]
        if repeat:
            extra += ["--repeat", str(repeat)]
    elif name == "issuance_latency":
        extra += ["--runs", str(5 if quick else args.runs)]
        extra += ["--peer-runs", str(2 if quick else args.peer_runs)]
        if args.skip_peers:
            extra.append("--skip-peers")
    elif name == "issuance_throughput":
        if quick:
            extra += ["--orders", "100", "--in-flight", "50", "--names", "50"]
    elif name == "agent_noop":
        if quick:
            extra += ["--runs", "3"]
    elif name == "growth":
        if quick:
            extra += ["--orders", "1000,10000", "--delegations", "1000,10000"]
        duration = args.duration or (3.0 if quick else None)
        if duration:
            extra += ["--duration", f"{duration:g}"]
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(ORDER)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs (3 s, one round, 5 issuances, small sizes): a smoke test",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per load run (default: each bench's)"
    )
    parser.add_argument("--repeat", type=int, help="rounds per load run (default: each bench's)")
    parser.add_argument("--runs", type=int, default=20, help="issuances to time (20)")
    parser.add_argument("--peer-runs", type=int, default=5, help="certbot/lego runs (5)")
    parser.add_argument("--skip-peers", action="store_true", help="no certbot / lego")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args()

    chosen = ORDER if not args.only else tuple(n.strip() for n in args.only.split(","))
    unknown = set(chosen) - set(ORDER)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; know {ORDER}")

    started = time.monotonic()
    combined = Report()
    with tempfile.TemporaryDirectory(prefix="certok-bench-all-") as tmp:
        for name in chosen:
            print(f"\n=== {name} ===", flush=True)
            combined.extend(run_json_bench(name, bench_arguments(name, args), Path(tmp)))

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
