"""Answers for certok's zone: one pure function from query bytes to reply bytes.

Two paths give the same bytes. The general path parses with dnspython and applies every rule
below. The fast path recognises the common query shape by hand (``wire.common_query_key``)
and serves a reply cached per (lowercased name, type, EDNS state, RD/CD); a cache miss builds
the canonical reply (ID 0, lowercase name) once, and the hit puts the query's ID and question
bytes back. Both steps are exact because compression points owner names into the question,
whose length does not depend on case. The canonical reply is written straight into wire format
by replybuild.py, to the byte what the general path renders for the canonical query (misses
are frequent while the zone changes every few milliseconds under issuance load); what it does
not cover goes through the general path.
NXDOMAIN and REFUSED replies are shared by every question of the same length
(``_shape_key``), so floods of random names stay on the fast path too.

The cache outlives snapshots: an entry holds as long as its name's index node is the one it
was built from, and a new serial is patched into cached negative replies (replycache.py), so
a change in the zone costs new replies for the changed names only. The serial still moves on
every change, as secondaries and monitoring tools expect of a zone that changed, though no
secondary can transfer this zone (AXFR/IXFR are refused) and resolvers read only the SOA's
TTL and MINIMUM for negative caching.

Rules (RFC 8906; docs/dns-server.md says why each one is there):
- QR=1 or no readable header → no reply; opcode other than QUERY → NOTIMP with the opcode
  and no flag but QR (RD, AA, RA, AD and CD belong to QUERY); unparseable or QDCOUNT ≠ 1 →
  FORMERR; EDNS version > 0 → BADVERS with an OPT of version 0.
- Class other than IN, names outside the zone, AXFR/IXFR → REFUSED (RA is never set).
- In the zone, AA=1: the data when it exists; NODATA (SOA in AUTHORITY) for a known name
  without that type, for empty non-terminals and for unknown types; NXDOMAIN with SOA for
  names that do not exist. ANY gets one RRset (RFC 8482).
- The question is copied byte for byte (resolvers randomise case, 0x20).
- EDNS: advertise 1232, echo only DO, never echo options. Over UDP a reply larger than the
  requester's size (512 without EDNS) goes out truncated: TC=1, question and OPT only.
- Anything unexpected → SERVFAIL and a log line; ``answer`` never raises.
"""

from __future__ import annotations

import logging
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from certok import dns_wire
from certok.dnszone import replybuild, wire, zoneindex
from certok.dnszone.config import SOA_EXPIRE, SOA_REFRESH, SOA_RETRY, ZoneConfig
from certok.dnszone.replycache import (
    FULL,
    MAX_CACHED_REPLIES,
    SERIAL,
    SERIAL_AT,
    STAMP,
    TRUNCATED,
    Entry,
)
from certok.dnszone.static_zone import wire_key
from certok.dnszone.wire import ADVERTISED_UDP_PAYLOAD, MAX_TCP_MESSAGE, ReplyKey
from certok.dnszone.zone_records import ZoneRecords
from certok.dnszone.zoneindex import TXT_STRING_MAX, ShapeKey, ZoneIndex

__all__ = [
    "ADVERTISED_UDP_PAYLOAD",
    "MAX_CACHED_REPLIES",
    "MAX_TCP_MESSAGE",
    "SOA_EXPIRE",
    "SOA_REFRESH",
    "SOA_RETRY",
    "TXT_STRING_MAX",
    "ZoneConfig",
    "answer",
    "fast_answer",
    "general_answer",
]

log = logging.getLogger(__name__)

# RFC 6891: no UDP limit is below 512, so a reply this small never needs its TC=1 form.
MIN_UDP_LIMIT = 512

IN = dns.rdataclass.IN

_SHAPE_REFUSED = 0
_SHAPE_NXDOMAIN = 1

# The index answered from last: one snapshot is live at a time, found by identity per query.
_last_index: tuple[ZoneConfig, ZoneRecords, ZoneIndex] | None = None


def _index_for(config: ZoneConfig, records: ZoneRecords) -> ZoneIndex:
    global _last_index
    last = _last_index
    if last is not None and last[0] is config and last[1] is records:
        return last[2]
    # Ready when the snapshot came through a ZoneCache the server hooked (built in the
    # refresher's thread); built here only for snapshots nobody prepared.
    index = zoneindex.index_for(config, records)
    _last_index = (config, records, index)
    return index


# --- the entry point ----------------------------------------------------------------------------


def answer(
    query_wire: bytes, config: ZoneConfig, records: ZoneRecords, *, max_udp: int | None
) -> bytes | None:
    """Reply bytes for one query, or None to send nothing. ``max_udp`` is None over TCP.

    Never raises: anything unexpected becomes SERVFAIL and a log line.
    """
    try:
        reply = fast_answer(query_wire, config, records, max_udp=max_udp)
        if reply is None:
            reply = general_answer(query_wire, config, records, max_udp=max_udp)
        return reply
    except Exception:
        log.exception("DNS query failed; answering SERVFAIL")
        try:
            return wire.header_only_reply(query_wire, dns_wire.RCODE_SERVFAIL)
        except Exception:
            return None


def fast_answer(
    query_wire: bytes, config: ZoneConfig, records: ZoneRecords, *, max_udp: int | None
) -> bytes | None:
    """The reply from the reply cache, or None when the query is not the common shape.

    Every UDP query comes through here, so the usual case (a cached reply that fits) is
    written out inline: the index check of ``_index_for``, the limit of ``_udp_limit`` and
    ``wire.splice_reply`` each cost a call per query otherwise.
    """
    peeked = wire.common_query_key(query_wire)
    if peeked is None:
        return None
    key, question_end, payload = peeked
    last = _last_index
    if last is not None and last[0] is config and last[1] is records:
        index = last[2]
    else:
        index = _index_for(config, records)
    entry = index.replies.get(key)
    if entry is None or entry[STAMP] is not index.nodes.get(key[0]):
        # Not cached, or cached from a node this snapshot replaced (the name changed).
        if not wire.is_plain_name(key[0]):
            return None
        entry = _entry_on_miss(index, key)
    elif entry[SERIAL_AT] and entry[SERIAL] != index.serial:
        entry = _with_serial(entry, index.serial)
        index.replies.put(key, entry)
    full = entry[FULL]
    # common_query_key's payload is already _udp_limit's requested size (512 without EDNS,
    # never below 512 with it), so the UDP limit is the smaller of it and max_udp.
    if max_udp is not None and len(full) > (payload if payload < max_udp else max_udp):
        full = entry[TRUNCATED] or wire.truncate_reply(full)
    return (
        query_wire[:2]
        + full[2 : dns_wire.HEADER_SIZE]
        + query_wire[dns_wire.HEADER_SIZE : question_end]
        + full[question_end:]
    )


def _entry_on_miss(index: ZoneIndex, key: ReplyKey) -> Entry:
    shape = _shape_key(index, key)
    if shape is not None:
        # Random names (a flood of NXDOMAIN or out-of-zone queries) share one cached reply per
        # question length, so they neither reach dnspython nor grow the cache.
        entry = index.shapes.get(shape)
        if entry is None:
            entry = index.shapes[shape] = _canonical_entry(index, key, None)
        elif entry[SERIAL_AT] and entry[SERIAL] != index.serial:
            entry = index.shapes[shape] = _with_serial(entry, index.serial)
        return entry
    entry = _canonical_entry(index, key, index.nodes.get(key[0]))
    index.replies.put(key, entry)
    return entry


def _shape_key(index: ZoneIndex, key: ReplyKey) -> ShapeKey | None:
    """A key shared by every query whose reply is the same bytes once the question is put back.

    A REFUSED reply carries nothing but the question. An NXDOMAIN reply adds the SOA, whose
    names compress into the question's zone suffix, at an offset set by the question's length,
    unless the question ends in one of the SOA's own names below the apex. Neither depends on
    the snapshot's names, so shape replies stay valid across snapshots (the serial aside).
    """
    qname, qtype, edns, copied_flags = key
    if qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        return None
    if not wire.in_zone(qname, index.zone_wire):
        return (_SHAPE_REFUSED, len(qname), edns, copied_flags)
    if qname in index.nodes or qname.endswith(index.soa_name_suffixes):
        return None
    return (_SHAPE_NXDOMAIN, len(qname), edns, copied_flags)


def _canonical_entry(index: ZoneIndex, key: ReplyKey, stamp: object) -> Entry:
    """The reply every query with this key gets (ID and question case aside), as an entry."""
    full = replybuild.build_reply(index, key)
    if full is None:
        # What the builder does not cover (an RRset type the zone does not hold today, or a
        # reply too big for a TCP frame, which dnspython refuses): dnspython's reply to the
        # canonical query.
        canonical = wire.canonical_query(key, ADVERTISED_UDP_PAYLOAD)
        full = _render(_respond(dns.message.from_wire(canonical), canonical, index))
    truncated = wire.truncate_reply(full) if len(full) > MIN_UDP_LIMIT else None
    return (full, truncated, stamp, wire.negative_serial_offset(full), index.serial)


def _with_serial(entry: Entry, serial: int) -> Entry:
    """A negative reply with the SOA serial of a newer snapshot: the only byte change a new
    serial makes to it (the SOA's other fields come from the config)."""
    full, truncated, stamp, serial_at, _ = entry
    return (wire.with_serial(full, serial_at, serial), truncated, stamp, serial_at, serial)


def general_answer(
    query_wire: bytes, config: ZoneConfig, records: ZoneRecords, *, max_udp: int | None
) -> bytes | None:
    """The reply built with dnspython; handles every query shape."""
    if len(query_wire) < dns_wire.HEADER_SIZE:
        return None  # not even a header to answer to
    flags = struct.unpack_from("!H", query_wire, 2)[0]
    if flags & dns_wire.FLAG_QR:
        return None
    if flags & dns_wire.OPCODE_MASK:
        # Other opcodes (NOTIFY, UPDATE, ...) have their own section rules: do not parse.
        return wire.header_only_reply(query_wire, dns_wire.RCODE_NOTIMP)
    try:
        query = dns.message.from_wire(query_wire)
    except Exception:
        # dnspython signals malformed input with several exception types.
        return wire.header_only_reply(query_wire, dns_wire.RCODE_FORMERR)
    index = _index_for(config, records)
    full = _render(_respond(query, query_wire, index))
    if max_udp is not None and len(full) > _udp_limit(query.edns >= 0, query.payload, max_udp):
        return wire.truncate_reply(full)
    return full


def _udp_limit(has_edns: bool, payload: int, max_udp: int) -> int:
    # RFC 6891: sizes below 512 are treated as 512; without EDNS the limit is 512.
    requested = max(512, payload) if has_edns else 512
    return min(requested, max_udp)


def _render(response: dns.message.Message) -> bytes:
    # No shuffling: the same query always gets the same bytes (and the fast path relies on it).
    return response.to_wire(max_size=MAX_TCP_MESSAGE, want_shuffle=False)


# --- the rules ----------------------------------------------------------------------------------


def _respond(
    query: dns.message.Message, query_wire: bytes, index: ZoneIndex
) -> dns.message.Message:
    response = dns.message.Message(id=query.id)
    response.flags = dns.flags.QR | (query.flags & (dns.flags.RD | dns.flags.CD))
    if query.edns >= 0:
        # Echo DO only; the requester's options are not echoed (RFC 6891 §6.1.2).
        response.use_edns(0, query.ednsflags & dns.flags.DO, ADVERTISED_UDP_PAYLOAD)
    if query.edns > 0:
        # RFC 6891 §6.1.3: unknown version → BADVERS, with the version we do speak.
        response.set_rcode(dns.rcode.BADVERS)
        return response
    # QDCOUNT from the header: dnspython merges identical questions into one entry.
    qdcount = struct.unpack_from("!H", query_wire, 4)[0]
    if qdcount != 1 or len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    response.question = [question]
    qname, qtype = question.name, question.rdtype
    if (
        question.rdclass != IN
        or not qname.is_subdomain(index.zone)
        or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR)
    ):
        response.set_rcode(dns.rcode.REFUSED)
        return response

    response.flags |= dns.flags.AA
    node = index.nodes.get(wire_key(qname))
    if node is None:
        # RFC 8020: nothing exists at or below this name (empty non-terminals have a node).
        response.set_rcode(dns.rcode.NXDOMAIN)
        _add_soa(response, index)
        return response
    rdtype = next(iter(node), None) if qtype == dns.rdatatype.ANY else qtype
    stored = node.get(rdtype) if rdtype is not None else None
    if stored is None:
        _add_soa(response, index)  # NODATA
        return response
    # Owned by the question's own name object, so the owner renders as a pointer to the
    # question and keeps the requester's case. The copy shares the (immutable) rdatas.
    rrset = stored.copy()
    rrset.name = qname
    response.answer.append(rrset)
    if rdtype == dns.rdatatype.NS:
        response.additional.extend(index.glue)
    return response


def _add_soa(response: dns.message.Message, index: ZoneIndex) -> None:
    # RFC 2308: the SOA in AUTHORITY makes the negative answer cacheable, for min(TTL, MINIMUM).
    response.authority.append(index.soa)
