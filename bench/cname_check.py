"""CPU per CNAME delegation check: certok's lean lookup against dnspython's resolvers.

    python bench/cname_check.py [--checks 1000] [--rounds 5]

Every dv and every order's ownership re-check follows `_acme-challenge.<name>`'s CNAME through
the configured resolver (certok/prechecks/delegation.py). This script starts the stand-in
resolver (bench/_stub_resolver.py, in its own process, so its CPU is not counted) with one
delegated name, and in one process and in alternating rounds runs `--checks` checks each way:
- *certok*: `check_delegation` as certok runs it: the question asked and the answer read
  without dnspython objects (certok/prechecks/cname_wire.py), in the calling thread;
- *dns.resolver*: the same `check_delegation` with that lean lookup switched off, so every
  question goes through dnspython's blocking resolver (what certok did before);
- *asyncio*: the same CNAME query through `dns.asyncresolver` on an event loop kept per
  thread, the way certok's worker threads ran each check before that (`asyncio.Runner`). Only
  the query: the chain walk around it is left out, so this way is a lower bound of what it cost.
All get the same one-hop answer. Reported: the median round per way in µs of this process's
CPU per check (system time included: the datagram exchange), and certok / dns.resolver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _stub_resolver
import dns.asyncresolver
import dns.rdatatype
from _common import LOOPBACK, free_port, start_process

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certok.prechecks import delegation
from certok.prechecks.delegation import check_delegation
from certok.prechecks.resolver import make_blocking_resolver, make_resolver

NAME = "www.customer.test"
LABEL = "0123456789abcdef"
ZONE = "acme.bench.test"


def cpu_per_call(call: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count


async def _asyncio_check(resolver: dns.asyncresolver.Resolver, owner: str) -> bool:
    answer = await resolver.resolve(owner, dns.rdatatype.CNAME, raise_on_no_answer=False)
    return any(rrset.rdtype == dns.rdatatype.CNAME for rrset in answer.response.answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checks", type=int, default=1000, help="per round and way (1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per way (5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certok-bench-cname-") as tmp:
        workdir = Path(tmp)
        label_map = workdir / "labels.json"
        label_map.write_text(json.dumps({NAME: LABEL}))
        port = free_port("stub resolver")
        resolver_process = start_process(
            "stub-resolver",
            _stub_resolver.command(port, ZONE, label_map),
            workdir=workdir,
            ready=lambda: _stub_resolver.answers(port),
            what="answering",
        )
        try:
            rounds = measure(f"{LOOPBACK}:{port}", args.checks, args.rounds)
        finally:
            resolver_process.stop()
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    for name, value in medians.items():
        print(f"cname_check: {name:12} {value * 1e6:7.0f} µs CPU per check "
              f"(median of {args.rounds} rounds of {args.checks})")  # fmt: skip
    ratio = medians["certok"] / medians["dns.resolver"]
    print(f"cname_check: certok / dns.resolver = {ratio:.2f}")


def measure(address: str, checks: int, rounds: int) -> dict[str, list[float]]:
    challenge, target = f"_acme-challenge.{NAME}", f"{LABEL}.{ZONE}"
    blocking = make_blocking_resolver([address], timeout=2.0)
    asynchronous = make_resolver([address], timeout=2.0)
    runner = asyncio.Runner()

    lean_lookup = delegation.lookup_aliases

    def certok_check() -> bool:
        return check_delegation(challenge, target, blocking).valid

    def dnspython_check() -> bool:
        delegation.lookup_aliases = lambda *args: None  # type: ignore[assignment]
        try:
            return check_delegation(challenge, target, blocking).valid
        finally:
            delegation.lookup_aliases = lean_lookup

    def asyncio_check() -> bool:
        return runner.run(_asyncio_check(asynchronous, challenge + "."))

    ways: dict[str, Callable[[], bool]] = {
        "certok": certok_check,
        "dns.resolver": dnspython_check,
        "asyncio": asyncio_check,
    }
    try:
        for name, check in ways.items():
            if not check():
                raise SystemExit(f"cname_check: the {name} check did not find the CNAME")
        results: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, check in ways.items():
                results[name].append(cpu_per_call(check, checks))
    finally:
        runner.close()
    return results


if __name__ == "__main__":
    main()
