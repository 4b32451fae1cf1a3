"""A stand-in recursive resolver for `certok serve`'s CNAME lookups, as a process of its own.

    python bench/_stub_resolver.py --port P [--zone Z --map FILE]

Answers `_acme-challenge.<name>` CNAME `<label>.<zone>` for every `name → label` in the JSON
map, and NXDOMAIN to everything else (with no map: to everything). api_rps.py points certok at
it so that dv for a name without a delegation runs its whole path; growth.py so that every
delegated name's dv does. It runs on the load generator's core, on the event loop `certok serve`
uses, so that what it costs is not charged to certok.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
from _common import LOOPBACK, run_on_uvloop


class StubResolverProtocol(asyncio.DatagramProtocol):
    """CNAME answers from `targets` (lower-case absolute owner → target), NXDOMAIN else."""

    def __init__(self, targets: Mapping[str, str]) -> None:
        self._targets = targets

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return  # not a DNS query: a real resolver would drop it too
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA
        question = query.question[0]
        target = self._targets.get(question.name.to_text().lower())
        if target is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.CNAME:
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "CNAME", target))
        self.transport.sendto(reply.to_wire(), addr)  # type: ignore[attr-defined]


def challenge_targets(labels: Mapping[str, str], zone: str) -> dict[str, str]:
    """`_acme-challenge.<name>.` → `<label>.<zone>.` for a `name → label` map."""
    return {
        f"_acme-challenge.{name}.".lower(): f"{label}.{zone}." for name, label in labels.items()
    }


async def serve(port: int, targets: Mapping[str, str]) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: StubResolverProtocol(targets), local_addr=(LOOPBACK, port)
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"{len(targets)} CNAMEs, NXDOMAIN else, on {LOOPBACK}:{port}", flush=True)
    await stop.wait()
    transport.close()


def command(port: int, zone: str = "", label_map: Path | None = None) -> list[str]:
    """The argv that runs this resolver (with `label_map`'s names delegated into `zone`)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(port)]
    if label_map is not None:
        argv += ["--zone", zone, "--map", str(label_map)]
    return argv


def answers(port: int) -> bool:
    """Whether the resolver on `port` answers at all (it reads its map before it binds)."""
    query = dns.message.make_query("_acme-challenge.probe.bench.test.", "CNAME")
    try:
        dns.query.udp(query, LOOPBACK, port=port, timeout=0.3)
    except Exception:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--zone", default="", help="the zone the labels are in")
    parser.add_argument("--map", type=Path, help="JSON object: delegated name → label")
    args = parser.parse_args(argv)
    if args.map is not None and not args.zone:
        parser.error("--map needs --zone")
    labels = json.loads(args.map.read_text()) if args.map is not None else {}
    run_on_uvloop(serve(args.port, challenge_targets(labels, args.zone)))


if __name__ == "__main__":
    main()
