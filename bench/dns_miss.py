"""What a reply-cache miss costs certok's DNS answer path: the wire builder against dnspython.

    python bench/dns_miss.py [--labels 2000] [--queries 3000] [--repeat 5]

Under issuance load the zone changes every few milliseconds, so the DNS server's reply cache
misses often. A miss builds the canonical reply once (certok/dnszone/replybuild.py writes it in
wire format; before, dnspython parsed a canonical query and rendered the reply). This script
answers the same queries through ``fast_answer`` with the cache emptied before every query, so
each one is a miss, two ways in the same process and in alternating rounds:
- *builder*: the miss path as certok runs it;
- *dnspython*: the same path with the builder switched off, so the miss falls back to
  dnspython (what every miss cost before the builder);
and, for scale, the same queries answered from a warm cache (*hit*). Every miss reply is
checked to be byte-identical between the two ways. Per kind of reply (a label's TXT with one
or two values, NODATA at an idle label, NXDOMAIN, the apex SOA, the apex NS with glue): the
best of ``--repeat`` rounds in answers per second, and builder / dnspython.

Queries come in random 0x20 case, half with EDNS (some with DO), RD set, ID random. No
network, no other process: one core, pure CPU. Nothing is pinned; the ratio is what matters
on a shared machine.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from collections.abc import Callable

from certok.dnszone import replybuild, zoneindex
from certok.dnszone.answer import ADVERTISED_UDP_PAYLOAD, ZoneConfig, fast_answer
from certok.dnszone.zone_records import ZoneRecords

ZONE = "acme.bench.test"
CONFIG = ZoneConfig(
    zone=ZONE,
    nameservers=(f"ns1.{ZONE}", f"ns2.{ZONE}"),
    nameserver_addresses=("127.0.0.1", "::1"),
    ttl=30,
)
TXT, SOA, NS = 16, 6, 2


def build_records(labels: int) -> tuple[ZoneRecords, dict[str, list[str]]]:
    """dns_qps.py's zone: a TXT value on every 4th label, two on every 20th; the labels of each
    kind, for the queries."""
    names = [f"{i:016x}" for i in range(labels)]
    rows: list[tuple[str, str]] = []
    kinds: dict[str, list[str]] = {"one": [], "two": [], "idle": []}
    for i, label in enumerate(names):
        if i % 20 == 0:
            rows += [(label, f"{label}-apex-" + "a" * 26), (label, f"{label}-wild-" + "w" * 26)]
            kinds["two"].append(label)
        elif i % 4 == 0:
            rows.append((label, f"{label}-" + "v" * 32))
            kinds["one"].append(label)
        else:
            kinds["idle"].append(label)
    return ZoneRecords.build(names, rows, serial=20260101), kinds


def query(qname: str, qtype: int, rng: random.Random) -> bytes:
    """A common-shape query in random 0x20 case, half of them with EDNS (a third of those DO)."""
    wire = b""
    for label in qname.split("."):
        cased = "".join(c.upper() if rng.random() < 0.5 else c for c in label)
        wire += bytes((len(cased),)) + cased.encode()
    edns = rng.random() < 0.5
    header = struct.pack("!HHHHHH", rng.randrange(65536), 0x0100, 1, 0, 0, 1 if edns else 0)
    message = header + wire + b"\x00" + struct.pack("!HH", qtype, 1)
    if edns:
        do_bit = 0x8000 if rng.random() < 0.33 else 0
        message += b"\x00" + struct.pack("!HHIH", 41, 1232, do_bit, 0)
    return message


def workloads(
    kinds: dict[str, list[str]], count: int, rng: random.Random
) -> dict[str, list[bytes]]:
    def at_labels(labels: list[str]) -> list[bytes]:
        return [query(f"{rng.choice(labels)}.{ZONE}", TXT, rng) for _ in range(count)]

    return {
        "TXT, 1 value": at_labels(kinds["one"]),
        "TXT, 2 values": at_labels(kinds["two"]),
        "NODATA (idle label)": at_labels(kinds["idle"]),
        "NXDOMAIN": [query(f"{rng.randrange(16**15):015x}.{ZONE}", TXT, rng) for _ in range(count)],
        "apex SOA": [query(ZONE, SOA, rng) for _ in range(count)],
        "apex NS + glue": [query(ZONE, NS, rng) for _ in range(count)],
    }


Timed = tuple[float, list[bytes | None]]  # seconds, replies


def time_misses(records: ZoneRecords, queries: list[bytes]) -> Timed:
    """Seconds to answer every query as a cache miss (both caches emptied before each)."""
    index = zoneindex.index_for(CONFIG, records)
    replies, shapes = index.replies, index.shapes
    out: list[bytes | None] = []
    started = time.perf_counter()
    for message in queries:
        replies.clear()
        shapes.clear()  # NXDOMAIN replies are shared per question length: empty those too
        out.append(fast_answer(message, CONFIG, records, max_udp=ADVERTISED_UDP_PAYLOAD))
    return time.perf_counter() - started, out


def time_hits(records: ZoneRecords, queries: list[bytes]) -> float:
    for message in queries:  # warm the cache
        fast_answer(message, CONFIG, records, max_udp=ADVERTISED_UDP_PAYLOAD)
    started = time.perf_counter()
    for message in queries:
        fast_answer(message, CONFIG, records, max_udp=ADVERTISED_UDP_PAYLOAD)
    return time.perf_counter() - started


def without_builder(run: Callable[[], Timed]) -> Timed:
    """``run`` with the builder switched off: every miss falls back to dnspython."""
    build_reply = replybuild.build_reply
    replybuild.build_reply = lambda index, key: None  # type: ignore[assignment]
    try:
        return run()
    finally:
        replybuild.build_reply = build_reply  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=3000, help="per kind and round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    records, kinds = build_records(args.labels)
    zoneindex.index_for(CONFIG, records)  # built up front, as the server's snapshot hook does
    loads = workloads(kinds, args.queries, random.Random(args.seed))
    print(
        f"dns_miss: {args.labels} labels, {args.queries} queries per kind, best of "
        f"{args.repeat} rounds (builder and dnspython alternate), python {sys.version.split()[0]}"
    )
    header = f"{'kind':<22}{'builder miss/s':>16}{'dnspython miss/s':>18}{'ratio':>8}{'hit/s':>11}"
    print(header)
    print("-" * len(header))
    totals = {"builder": 0.0, "dnspython": 0.0}
    for kind, queries in loads.items():
        best = {"builder": float("inf"), "dnspython": float("inf"), "hit": float("inf")}
        for _ in range(args.repeat):
            built_seconds, built = time_misses(records, queries)
            plain_seconds, plain = without_builder(lambda q=queries: time_misses(records, q))
            if built != plain:
                sys.exit(f"{kind}: the builder's replies differ from dnspython's")
            best["builder"] = min(best["builder"], built_seconds)
            best["dnspython"] = min(best["dnspython"], plain_seconds)
            best["hit"] = min(best["hit"], time_hits(records, queries))
        totals["builder"] += best["builder"]
        totals["dnspython"] += best["dnspython"]
        count = len(queries)
        print(
            f"{kind:<22}{count / best['builder']:>16,.0f}{count / best['dnspython']:>18,.0f}"
            f"{best['dnspython'] / best['builder']:>7.1f}x{count / best['hit']:>11,.0f}"
        )
    count = sum(len(q) for q in loads.values())
    print("-" * len(header))
    print(
        f"{'all kinds':<22}{count / totals['builder']:>16,.0f}"
        f"{count / totals['dnspython']:>18,.0f}{totals['dnspython'] / totals['builder']:>7.1f}x"
    )
    print(
        f"per miss: builder {1e6 * totals['builder'] / count:.1f} µs, "
        f"dnspython {1e6 * totals['dnspython'] / count:.1f} µs; replies identical: yes"
    )


if __name__ == "__main__":
    main()
