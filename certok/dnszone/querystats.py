"""Counts of the DNS server's answers by query type and rcode, for `/metrics`.

The UDP thread answers tens of thousands of queries a second: it counts with one increment
of a plain dict entry per query (no lock, no prometheus_client call), keyed by three bytes
of the reply (its question's type and its rcode) that the packet cache keeps with each
reply. The metric family is built from these counts only when /metrics is scraped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import cast

import dns.rcode
import dns.rdatatype
from prometheus_client.core import Metric

from certok.metrics import counter_family

_HEADER = 12
# Query types named in the label; any other is "other", so clients cannot grow the series.
_NAMED_TYPES = frozenset(
    dns.rdatatype.from_text(name)
    for name in (
        *("A", "AAAA", "CNAME", "TXT", "NS", "SOA", "CAA", "MX", "DS", "DNSKEY", "ANY"),
        *("HTTPS", "SVCB", "PTR", "SRV", "AXFR", "IXFR"),
    )
)
NO_QUESTION = b"\xff\xff\xff"


def stat_key(reply: bytes) -> bytes:
    """Three bytes: the reply's question type (2) and rcode (1); NO_QUESTION if unreadable."""
    if len(reply) < _HEADER + 5 or reply[4:6] == b"\x00\x00":
        return NO_QUESTION[:2] + bytes([reply[3] & 0x0F]) if len(reply) >= 4 else NO_QUESTION
    offset = _HEADER
    end = len(reply)
    while offset < end:
        length = reply[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0:  # a pointer in a question (never written by certok): stop here
            offset += 2
            break
        offset += 1 + length
    if offset + 2 > end:
        return NO_QUESTION
    return reply[offset : offset + 2] + bytes([reply[3] & 0x0F])


class QueryCounts:
    """Answers given, per transport; each dict is written by one thread (or the loop)."""

    def __init__(self) -> None:
        self.udp: defaultdict[bytes, int] = defaultdict(int)
        self.tcp: defaultdict[bytes, int] = defaultdict(int)

    def families(self) -> Iterable[Metric]:
        totals: dict[tuple[str, ...], int] = defaultdict(int)
        for transport, counts in (("udp", self.udp), ("tcp", self.tcp)):
            for key, count in dict(counts).items():  # a copy: the thread keeps counting
                totals[(_qtype(key), _rcode(key), transport)] += count
        yield counter_family(
            "certok_dns_queries",
            "DNS queries answered by certok's authoritative server, by query type, rcode "
            "and transport (queries dropped by rate limits or unparsable are not answered).",
            ("qtype", "rcode", "transport"),
            totals,
        )


def _qtype(key: bytes) -> str:
    if key[:2] == NO_QUESTION[:2]:
        return "none"
    value = int.from_bytes(key[:2], "big")
    if value not in _NAMED_TYPES:
        return "other"
    return dns.rdatatype.to_text(cast(dns.rdatatype.RdataType, value))


def _rcode(key: bytes) -> str:
    return dns.rcode.to_text(dns.rcode.Rcode(key[2])) if key[2] <= 15 else "other"
