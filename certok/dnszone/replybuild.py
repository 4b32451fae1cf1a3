"""Canonical replies for the common query shapes, written straight into wire format.

A reply-cache miss needs the reply every query with that key gets (ID 0, lowercase question,
see ``answer._canonical_entry``). Parsing a canonical query and rendering a reply with
dnspython costs a few hundred microseconds, and under issuance load (a TXT value added or
removed every few milliseconds) misses are frequent. This module writes the same bytes from the
index's RRsets directly: no dnspython object is built per query, only attributes of the ones the
index already holds are read.

"The same bytes" means exactly what dnspython's renderer writes for ``answer._respond``'s
message: sections in order, RRsets in their stored order (no shuffling), the OPT record last,
and names compressed like ``dns.name.Name.to_wire``: each suffix of a name, longest first, is
looked up (ignoring ASCII case) among the suffixes written before; the first one found becomes
a pointer, and every suffix written out in full is remembered if a pointer can reach it
(offset ≤ 0x3FFF). The root name is never compressed. The property test in
tests/unit/test_dns_replybuild.py holds this module to dnspython's bytes.

``build_reply`` returns None for what it does not cover (an RRset of a type it cannot write,
an empty RRset, a reply too big for a TCP frame); the caller then asks dnspython.
"""

from __future__ import annotations

import functools
import socket
import struct

import dns.name
import dns.rrset

from certok.dns_wire import (
    CLASS_IN,
    EDNS_DO,
    FLAG_AA,
    FLAG_QR,
    HEADER_SIZE,
    MAX_POINTER_OFFSET,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_AXFR,
    TYPE_IXFR,
    TYPE_NS,
    TYPE_OPT,
    TYPE_SOA,
    TYPE_TXT,
)
from certok.dnszone import wire
from certok.dnszone.wire import (
    ADVERTISED_UDP_PAYLOAD,
    MAX_TCP_MESSAGE,
    EdnsState,
    ReplyKey,
)
from certok.dnszone.zoneindex import ZoneIndex

# The types the zone serves (static_zone.ANY_ORDER); an RRset of another type goes to dnspython.
_WRITABLE_TYPES = frozenset({TYPE_TXT, TYPE_A, TYPE_AAAA, TYPE_NS, TYPE_SOA})
_RECORD_FIELDS = struct.Struct("!HHI")  # type, class, TTL
_SOA_NUMBERS = struct.Struct("!IIIII")
_HEADER = struct.Struct("!HHHHHH")
_RDLENGTH = struct.Struct("!H")


def _opt_record(do_bit: int) -> bytes:
    # Root owner, type OPT, class = our UDP payload, TTL = extended rcode 0, version 0, flags.
    return b"\x00" + _RECORD_FIELDS.pack(TYPE_OPT, ADVERTISED_UDP_PAYLOAD, do_bit) + b"\x00\x00"


# The OPT record per EDNS state: only DO is echoed (RFC 6891 §6.1.2: no options echoed).
_OPT_RECORDS = {
    EdnsState.NONE: b"",
    EdnsState.PLAIN: _opt_record(0),
    EdnsState.DNSSEC_OK: _opt_record(EDNS_DO),
}


def build_reply(index: ZoneIndex, key: ReplyKey) -> bytes | None:
    """The canonical reply for ``key`` (ID 0, the question as the lowercase name), or None.

    The same rules as ``answer._respond`` for a query of the common shape (one question of
    class IN, opcode QUERY, no OPT or a plain version-0 one): REFUSED outside the zone and for
    zone transfers; inside it AA=1 and the RRset, NODATA or NXDOMAIN with the SOA.
    """
    qname, qtype, edns, copied_flags = key
    reply = _ReplyWriter()
    reply.name(qname)
    reply.out += struct.pack("!HH", qtype, CLASS_IN)
    flags = FLAG_QR | copied_flags
    if qtype in (TYPE_AXFR, TYPE_IXFR) or not wire.in_zone(qname, index.zone_wire):
        return reply.finish(flags | RCODE_REFUSED, 0, 0, 0, edns)

    flags |= FLAG_AA
    node = index.nodes.get(qname)
    if node is None:
        return _negative(reply, flags | RCODE_NXDOMAIN, index.soa, edns)
    rdtype = next(iter(node), None) if qtype == TYPE_ANY else qtype
    stored = node.get(rdtype) if rdtype is not None else None
    if stored is None:
        return _negative(reply, flags, index.soa, edns)  # NODATA
    # The answer's owner is the question's name, so it always becomes a pointer to it.
    answers = reply.rrset(qname, stored)
    if answers is None:
        return None
    additional = 0
    if rdtype == TYPE_NS:
        for glue in index.glue:
            written = reply.rrset(name_wire(glue.name), glue)
            if written is None:
                return None
            additional += written
    return reply.finish(flags, answers, 0, additional, edns)


def _negative(reply: _ReplyWriter, flags: int, soa: dns.rrset.RRset, edns: int) -> bytes | None:
    # RFC 2308: the SOA in AUTHORITY makes the negative answer cacheable.
    written = reply.rrset(name_wire(soa.name), soa)
    if written is None:
        return None
    return reply.finish(flags, 0, written, 0, edns)


@functools.lru_cache(maxsize=1024)
def _labels_wire(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels)


def name_wire(name: dns.name.Name) -> bytes:
    """The uncompressed wire form of an absolute name, as written (case kept).

    Memoised by labels (case-sensitive, unlike ``Name`` equality): the names that reach here
    are the zone's few fixed ones (apex, nameservers, hostmaster).
    """
    return _labels_wire(name.labels)


class _ReplyWriter:
    """A message being written: its bytes and the compression table of the names in it."""

    __slots__ = ("out", "pointers")

    def __init__(self) -> None:
        self.out = bytearray(HEADER_SIZE)  # the header is written last, by finish()
        # lowercase wire suffix → the offset it was first written at
        self.pointers: dict[bytes, int] = {}

    def name(self, name: bytes) -> None:
        """Write an uncompressed wire name, compressed against the names written so far."""
        out = self.out
        pointers = self.pointers
        lowered = name.lower()
        start = len(out)
        position = 0
        root = len(name) - 1
        while position < root:
            suffix = lowered[position:]
            offset = pointers.get(suffix)
            if offset is not None:
                out += name[:position]
                out += (0xC000 | offset).to_bytes(2, "big")
                return
            if start + position <= MAX_POINTER_OFFSET:
                pointers[suffix] = start + position
            position += name[position] + 1
        out += name

    def rrset(self, owner: bytes, rrset: dns.rrset.RRset) -> int | None:
        """Write every record of ``rrset`` under ``owner``; how many, or None if unsupported."""
        rdtype = rrset.rdtype
        if not rrset or rdtype not in _WRITABLE_TYPES:
            return None  # dnspython writes an empty RRset as one bodiless record
        fixed = _RECORD_FIELDS.pack(rdtype, rrset.rdclass, rrset.ttl)
        out = self.out
        count = 0
        for rdata in rrset:
            self.name(owner)
            out += fixed
            length_at = len(out)
            out += b"\x00\x00"
            if rdtype == TYPE_TXT:
                for string in rdata.strings:
                    out.append(len(string))
                    out += string
            elif rdtype == TYPE_A:
                out += socket.inet_pton(socket.AF_INET, rdata.address)
            elif rdtype == TYPE_AAAA:
                out += socket.inet_pton(socket.AF_INET6, rdata.address)
            elif rdtype == TYPE_NS:
                self.name(name_wire(rdata.target))
            else:  # SOA
                self.name(name_wire(rdata.mname))
                self.name(name_wire(rdata.rname))
                out += _SOA_NUMBERS.pack(
                    rdata.serial, rdata.refresh, rdata.retry, rdata.expire, rdata.minimum
                )
            _RDLENGTH.pack_into(out, length_at, len(out) - length_at - 2)
            count += 1
        return count

    def finish(
        self, flags: int, answers: int, authority: int, additional: int, edns: int
    ) -> bytes | None:
        """The message with its header and OPT record; None if it exceeds a TCP frame (dnspython
        raises there, and the caller's fallback keeps that behaviour)."""
        out = self.out
        opt = _OPT_RECORDS[edns]
        if opt:
            out += opt
            additional += 1
        if len(out) > MAX_TCP_MESSAGE:
            return None
        _HEADER.pack_into(out, 0, 0, flags, 1, answers, authority, additional)
        return bytes(out)
