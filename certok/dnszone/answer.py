"""Answers for certok's zone: one pure function from query bytes to reply bytes.

Two paths give the same bytes. The general path parses with dnspython and applies every rule
below. The fast path recognises the common query shape by hand (``wire.parse_common_query``)
and serves a reply cached per (lowercased name, type, EDNS state, RD/CD) for the current
records snapshot; a cache miss asks the general path once, with a canonical query (ID 0,
lowercase name), and the hit puts the query's ID and question bytes back. Both steps are exact
because the general path's compression points owner names into the question, whose length
does not depend on case. NXDOMAIN and REFUSED replies are shared by every question of the same
length (``_shape_key``), so floods of random names stay on the fast path too.

Rules (RFC 8906 and the field notes in REFERENCE.md):
- QR=1 or no readable header → no reply; opcode other than QUERY → NOTIMP; unparseable or
  QDCOUNT ≠ 1 → FORMERR; EDNS version > 0 → BADVERS with an OPT of version 0.
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

import ipaddress
import logging
import re
import struct
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from certok.dnszone import wire
from certok.dnszone.records import ZoneRecords
from certok.settings import Settings

log = logging.getLogger(__name__)

ADVERTISED_UDP_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation
MAX_TCP_MESSAGE = 65535
# SOA timers matter only to secondaries, which certok does not have; common values.
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 1209600
# Bound on cached fast-path replies per snapshot; random names must not grow memory forever.
MAX_CACHED_REPLIES = 10_000
TXT_STRING_MAX = 255

IN = dns.rdataclass.IN
# Names the database may hold: relative to the zone, hostname-ish labels.
_RELATIVE_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
_ANY_ORDER = (
    dns.rdatatype.SOA,
    dns.rdatatype.TXT,
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.NS,
)


@dataclass(frozen=True)
class ZoneConfig:
    """The static part of the zone: its name, nameservers and TTL."""

    zone: str  # e.g. "acme.svc.test" (no trailing dot, lowercase)
    nameservers: tuple[str, ...]  # NS names, e.g. ("ns1.acme.svc.test",)
    nameserver_addresses: tuple[str, ...]  # glue A/AAAA for NS names inside the zone
    ttl: int  # TTL for all answers; SOA MINIMUM = ttl too (negative caching stays short)
    max_txt_values: int = 8
    # Fixed A/AAAA records inside the zone, e.g. certok's own API host name:
    # (("svc", ("127.0.0.1",)),) — relative names; a tuple of pairs keeps the config hashable.
    host_addresses: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        zone = self.zone.strip().rstrip(".").lower()
        nameservers = tuple(n.strip().rstrip(".").lower() for n in self.nameservers)
        if not zone:
            raise ValueError("the DNS zone must be a name such as acme.example.com")
        if not nameservers or not all(nameservers):
            raise ValueError("the DNS zone needs at least one nameserver name")
        for address in self.nameserver_addresses:
            ipaddress.ip_address(address)  # raises ValueError with the bad address
        if not 0 <= self.ttl <= 0x7FFFFFFF:
            raise ValueError("the DNS TTL must be between 0 and 2147483647 seconds")
        if self.max_txt_values < 1:
            raise ValueError("max_txt_values must be at least 1")
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "nameservers", nameservers)
        object.__setattr__(self, "nameserver_addresses", tuple(self.nameserver_addresses))
        hosts = []
        for name, addresses in self.host_addresses:
            relative = name.strip().rstrip(".").lower().removesuffix("." + zone)
            if not _RELATIVE_NAME.fullmatch(relative):
                raise ValueError(f"host name {name!r} must be a name inside the zone {zone}")
            for address in addresses:
                ipaddress.ip_address(address)
            hosts.append((relative, tuple(addresses)))
        object.__setattr__(self, "host_addresses", tuple(hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> ZoneConfig:
        return cls(
            zone=settings.dns_zone,
            nameservers=tuple(settings.nameserver_names),
            nameserver_addresses=tuple(settings.dns_nameserver_addresses),
            ttl=settings.dns_ttl,
            max_txt_values=settings.dns_max_txt_values,
            host_addresses=tuple(
                (name, tuple(addresses)) for name, addresses in settings.dns_hosts.items()
            ),
        )


# --- the zone as lookup tables ----------------------------------------------------------------


ReplyKey = tuple[bytes, int, int, int]
# A reply that depends on the query only through the question's length (see _shape_key).
ShapeKey = tuple[int, int, int, int]
Replies = tuple[bytes, bytes]  # (full, truncated)

_SHAPE_REFUSED = 0
_SHAPE_NXDOMAIN = 1


@dataclass
class _ZoneIndex:
    """Everything answers need, built once per (config, records) snapshot."""

    zone: dns.name.Name
    zone_wire: bytes
    # lowercase wire-format owner name → {type: RRset owned by that name}, in ANY's order
    nodes: dict[bytes, dict[int, dns.rrset.RRset]]
    empty_non_terminals: set[bytes]
    soa: dns.rrset.RRset  # owned by the apex, for AUTHORITY in negative answers
    glue: list[dns.rrset.RRset]  # A/AAAA of NS names inside the zone
    # Names in the SOA rdata below the apex: a question ending in one of them changes how the
    # SOA compresses, so its NXDOMAIN reply is not the one shared by its length.
    soa_name_suffixes: tuple[bytes, ...]
    # fast path: canonical replies per exact key, and per shape for NXDOMAIN / REFUSED
    replies: dict[ReplyKey, Replies] = field(default_factory=dict)
    shapes: dict[ShapeKey, Replies] = field(default_factory=dict)


def _build_index(config: ZoneConfig, records: ZoneRecords) -> _ZoneIndex:
    zone = dns.name.from_text(config.zone)
    ttl = config.ttl
    nameservers = [dns.name.from_text(ns) for ns in config.nameservers]
    hostmaster = dns.name.Name((b"hostmaster", *zone.labels))
    soa = dns.rdtypes.ANY.SOA.SOA(
        IN,
        dns.rdatatype.SOA,
        nameservers[0],
        hostmaster,
        records.serial & 0xFFFFFFFF,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        ttl,
    )
    nodes: dict[bytes, dict[int, dns.rrset.RRset]] = {}
    apex = nodes.setdefault(_key(zone), {})
    apex[dns.rdatatype.SOA] = dns.rrset.from_rdata_list(zone, ttl, [soa])
    apex[dns.rdatatype.NS] = dns.rrset.from_rdata_list(
        zone, ttl, [dns.rdtypes.ANY.NS.NS(IN, dns.rdatatype.NS, name) for name in nameservers]
    )

    addresses = _address_rdatas(config.nameserver_addresses)
    glue: list[dns.rrset.RRset] = []
    for name in nameservers:
        if not name.is_subdomain(zone):
            continue  # no glue for nameservers in other zones
        node = nodes.setdefault(_key(name), {})
        for rdtype, rdatas in addresses.items():
            node[rdtype] = dns.rrset.from_rdata_list(name, ttl, rdatas)
            glue.append(node[rdtype])

    empty_non_terminals: set[bytes] = set()
    for relative, host_addresses in config.host_addresses:
        owner = dns.name.from_text(relative, origin=zone)
        node = nodes.setdefault(_key(owner), {})
        for rdtype, rdatas in _address_rdatas(host_addresses).items():
            node[rdtype] = dns.rrset.from_rdata_list(owner, ttl, rdatas)
        empty_non_terminals.update(_key(parent) for parent in _ancestors_below(owner, zone))
    for relative in sorted(records.labels | set(records.txt)):
        if not _RELATIVE_NAME.fullmatch(relative):
            log.warning("ignoring a zone name that is not a plain relative name: %r", relative)
            continue
        try:
            owner = dns.name.from_text(relative, origin=zone)
        except dns.exception.DNSException:
            log.warning("ignoring a zone name that is too long: %r", relative)
            continue
        node = nodes.setdefault(_key(owner), {})
        values = records.txt.get(relative, ())[: config.max_txt_values]
        if values:
            rdatas = [_txt_rdata(value) for value in values]
            node[dns.rdatatype.TXT] = dns.rrset.from_rdata_list(owner, ttl, rdatas)
        empty_non_terminals.update(_key(parent) for parent in _ancestors_below(owner, zone))
    for node in nodes.values():
        _reorder_for_any(node)
    soa_name_suffixes = {
        _key(name)
        for soa_name in (nameservers[0], hostmaster)
        if soa_name.is_subdomain(zone)
        for name in (soa_name, *_ancestors_below(soa_name, zone))
        if name != zone
    }
    return _ZoneIndex(
        zone=zone,
        zone_wire=_key(zone),
        nodes=nodes,
        empty_non_terminals=empty_non_terminals - nodes.keys(),
        soa=apex[dns.rdatatype.SOA],
        glue=glue,
        soa_name_suffixes=tuple(sorted(soa_name_suffixes)),
    )


def _ancestors_below(name: dns.name.Name, zone: dns.name.Name) -> list[dns.name.Name]:
    """The names strictly between ``name`` and ``zone``."""
    result = []
    parent = name.parent()
    while parent != zone and len(parent) > len(zone):
        result.append(parent)
        parent = parent.parent()
    return result


def _key(name: dns.name.Name) -> bytes:
    return name.canonicalize().to_wire()


def _address_rdatas(addresses: tuple[str, ...]) -> dict[int, list[dns.rdata.Rdata]]:
    result: dict[int, list[dns.rdata.Rdata]] = {}
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.version == 4:
            rdata: dns.rdata.Rdata = dns.rdtypes.IN.A.A(IN, dns.rdatatype.A, str(address))
        else:
            rdata = dns.rdtypes.IN.AAAA.AAAA(IN, dns.rdatatype.AAAA, str(address))
        result.setdefault(rdata.rdtype, []).append(rdata)
    return result


def _txt_rdata(value: str) -> dns.rdata.Rdata:
    # A TXT string holds at most 255 octets; longer values become several strings of one RR.
    data = value.encode("utf-8")
    chunks = [data[i : i + TXT_STRING_MAX] for i in range(0, len(data), TXT_STRING_MAX)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, chunks)


def _reorder_for_any(node: dict[int, dns.rrset.RRset]) -> None:
    ordered = {t: node[t] for t in _ANY_ORDER if t in node}
    node.clear()
    node.update(ordered)


# One snapshot is live at a time; rebuild only when the config or records object changes.
_last_index: tuple[ZoneConfig, ZoneRecords, _ZoneIndex] | None = None


def _index_for(config: ZoneConfig, records: ZoneRecords) -> _ZoneIndex:
    global _last_index
    last = _last_index
    if last is not None and last[0] is config and last[1] is records:
        return last[2]
    index = _build_index(config, records)
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
            return wire.header_only_reply(query_wire, wire.RCODE_SERVFAIL)
        except Exception:
            return None


def fast_answer(
    query_wire: bytes, config: ZoneConfig, records: ZoneRecords, *, max_udp: int | None
) -> bytes | None:
    """The reply from the per-snapshot cache, or None when the query is not the common shape."""
    query = wire.parse_common_query(query_wire)
    if query is None:
        return None
    index = _index_for(config, records)
    cached = index.replies.get(query.cache_key)
    if cached is None:
        cached = _replies_on_miss(index, query)
    full, truncated = cached
    has_edns = query.edns != wire.EdnsState.NONE
    if max_udp is not None and len(full) > _udp_limit(has_edns, query.payload, max_udp):
        return wire.splice_reply(truncated, query)
    return wire.splice_reply(full, query)


def _replies_on_miss(index: _ZoneIndex, query: wire.CommonQuery) -> Replies:
    shape = _shape_key(index, query)
    if shape is not None:
        # Random names (a flood of NXDOMAIN or out-of-zone queries) share one cached reply per
        # question length, so they neither reach dnspython nor grow the cache.
        cached = index.shapes.get(shape)
        if cached is None:
            cached = index.shapes[shape] = _canonical_replies(index, query.cache_key)
        return cached
    cached = _canonical_replies(index, query.cache_key)
    if len(index.replies) >= MAX_CACHED_REPLIES:
        index.replies.clear()
    index.replies[query.cache_key] = cached
    return cached


def _shape_key(index: _ZoneIndex, query: wire.CommonQuery) -> ShapeKey | None:
    """A key shared by every query whose reply is the same bytes once the question is put back.

    A REFUSED reply carries nothing but the question. An NXDOMAIN reply adds the SOA, whose
    names compress into the question's zone suffix, at an offset set by the question's length,
    unless the question ends in one of the SOA's own names below the apex.
    """
    qname = query.qname_lower
    if query.qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        return None
    if not _in_zone(qname, index.zone_wire):
        return (_SHAPE_REFUSED, len(qname), query.edns, query.copied_flags)
    if (
        qname in index.nodes
        or qname in index.empty_non_terminals
        or qname.endswith(index.soa_name_suffixes)
    ):
        return None
    return (_SHAPE_NXDOMAIN, len(qname), query.edns, query.copied_flags)


def _in_zone(qname: bytes, zone_wire: bytes) -> bool:
    if not qname.endswith(zone_wire):
        return False
    # The suffix must start at a label boundary ("xacme.svc.test" is not in "acme.svc.test").
    suffix_start = len(qname) - len(zone_wire)
    position = 0
    while position < suffix_start:
        position += qname[position] + 1
    return position == suffix_start


def _canonical_replies(index: _ZoneIndex, key: ReplyKey) -> Replies:
    canonical = wire.canonical_query(key, ADVERTISED_UDP_PAYLOAD)
    full = _render(_respond(dns.message.from_wire(canonical), canonical, index))
    return full, wire.truncate_reply(full)


def general_answer(
    query_wire: bytes, config: ZoneConfig, records: ZoneRecords, *, max_udp: int | None
) -> bytes | None:
    """The reply built with dnspython; handles every query shape."""
    if len(query_wire) < wire.HEADER_SIZE:
        return None  # not even a header to answer to
    flags = struct.unpack_from("!H", query_wire, 2)[0]
    if flags & wire.FLAG_QR:
        return None
    if flags & wire.OPCODE_MASK:
        # Other opcodes (NOTIFY, UPDATE, ...) have their own section rules: do not parse.
        return wire.header_only_reply(query_wire, wire.RCODE_NOTIMP)
    try:
        query = dns.message.from_wire(query_wire)
    except Exception:
        # dnspython signals malformed input with several exception types.
        return wire.header_only_reply(query_wire, wire.RCODE_FORMERR)
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
    query: dns.message.Message, query_wire: bytes, index: _ZoneIndex
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
    key = _key(qname)
    node = index.nodes.get(key)
    if node is None:
        if key not in index.empty_non_terminals:
            # RFC 8020: nothing exists at or below this name.
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


def _add_soa(response: dns.message.Message, index: _ZoneIndex) -> None:
    # RFC 2308: the SOA in AUTHORITY makes the negative answer cacheable, for min(TTL, MINIMUM).
    response.authority.append(index.soa)
