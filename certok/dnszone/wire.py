"""Byte-level DNS helpers for the hot path: no dnspython objects per query.

``common_query_key`` recognises the common query shape (one question, class IN, no
compression, at most one plain EDNS0 OPT) and returns None for anything else, which then takes
the dnspython path. The other helpers build replies without parsing them into objects.
"""

from __future__ import annotations

import struct

from certok.dns_wire import (
    CLASS_IN,
    EDNS_DO,
    FLAG_QR,
    FLAG_RD,
    FLAG_TC,
    HEADER,
    HEADER_SIZE,
    OPCODE_MASK,
    OPTION_COOKIE,
    OPTION_NSID,
    OPTION_PADDING,
    OPTION_TCP_KEEPALIVE,
    TYPE_OPT,
    TYPE_SOA,
    skip_name,
)

# (lowercase wire qname, qtype, EdnsState, RD|CD as sent): what a reply depends on
ReplyKey = tuple[bytes, int, int, int]

ADVERTISED_UDP_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation
MAX_TCP_MESSAGE = 65535

# QDCOUNT 1, ANCOUNT 0, NSCOUNT 0: the counts every common query has.
_COMMON_COUNTS = b"\x00\x01\x00\x00\x00\x00"

# Options the fast path may skip. Others go to the dnspython path, which validates the ones
# it knows (a malformed client-subnet option is a FORMERR there) so both paths agree.
_SKIPPABLE_OPTIONS = frozenset({OPTION_NSID, OPTION_TCP_KEEPALIVE, OPTION_PADDING})


class EdnsState:
    """How the query used EDNS, as far as the reply depends on it."""

    NONE = 0
    PLAIN = 1
    DNSSEC_OK = 2


def common_query_key(wire: bytes) -> tuple[ReplyKey, int, int] | None:
    """(cache key, end of the question, requester's payload) of a common query, or None.

    The common shape: QR=0, opcode QUERY, one question of class IN and no other records but
    at most one plain EDNS0 OPT (``_parse_plain_opt``). The name is taken to end at the first
    zero octet after the header, without walking its labels: that makes the key a candidate,
    good for a cache lookup. A key found in the cache is the true one, because keys enter the
    cache only after ``is_plain_name`` accepted them, and lowercasing never changes a length
    octet (all are below "A"). On a miss, check ``is_plain_name`` before using the key.
    """
    # Octet by octet rather than struct: this runs for every query, and allocates little.
    size = len(wire)
    if size < HEADER_SIZE + 5 or wire[2] & 0xF8 or not wire.startswith(_COMMON_COUNTS, 4):
        return None  # QR=1 or another opcode (the flags' high bits), or other counts
    name_end = wire.find(0, HEADER_SIZE) + 1
    question_end = name_end + 4
    # Class IN, and ARCOUNT 0 or 1.
    if not name_end or question_end > size or wire[name_end + 2] or wire[name_end + 3] != 1:
        return None
    if wire[10] or wire[11] > 1:
        return None
    if wire[11]:
        opt = _parse_plain_opt(wire, question_end)
        if opt is None:
            return None
        edns, payload = opt
        if payload < 512:
            payload = 512  # RFC 6891: values below 512 are treated as 512
    elif question_end == size:
        edns, payload = EdnsState.NONE, 512
    else:
        return None
    key = (
        wire[HEADER_SIZE:name_end].lower(),
        wire[name_end] << 8 | wire[name_end + 1],  # QTYPE
        edns,
        # RD (0x0100) and CD (0x0010), the query flags a reply copies; no other query flag
        # changes the reply.
        (wire[2] & 0x01) << 8 | wire[3] & 0x10,
    )
    return key, question_end, payload


def is_plain_name(name: bytes) -> bool:
    """Whether a candidate name from ``common_query_key`` is one well-formed name.

    Plain labels of 1..63 octets ending at its last octet (its first zero), 255 octets at most;
    a compression pointer, an extended label type, or a zero octet inside a label (which cut
    the candidate short) all fail.
    """
    end = len(name) - 1
    if end > 254:
        return False
    position = 0
    while position < end:
        length = name[position]
        if length > 63:
            return False
        position += length + 1
    return position == end


def in_zone(qname: bytes, zone_wire: bytes) -> bool:
    """Whether a lowercase wire name is ``zone_wire`` or below it."""
    if not qname.endswith(zone_wire):
        return False
    # The suffix must start at a label boundary ("xacme.svc.test" is not in "acme.svc.test").
    suffix_start = len(qname) - len(zone_wire)
    position = 0
    while position < suffix_start:
        position += qname[position] + 1
    return position == suffix_start


def _parse_plain_opt(wire: bytes, position: int) -> tuple[int, int] | None:
    """An OPT RR with root owner, EDNS version 0, no extended rcode, skippable options."""
    size = len(wire)
    if position + 11 > size or wire[position] != 0:
        return None
    rtype, payload, ext_rcode, version, ednsflags, rdlength = struct.unpack_from(
        "!HHBBHH", wire, position + 1
    )
    if rtype != TYPE_OPT or ext_rcode or version:
        return None
    option = position + 11
    end = option + rdlength
    if end != size:
        return None
    while option < end:
        if option + 4 > end:
            return None
        code, length = struct.unpack_from("!HH", wire, option)
        option += 4 + length
        if option > end:
            return None
        if code == OPTION_COOKIE:
            # RFC 7873: an 8-byte client cookie, optionally an 8..32-byte server cookie.
            if length != 8 and not 16 <= length <= 40:
                return None
        elif code not in _SKIPPABLE_OPTIONS:
            return None
    state = EdnsState.DNSSEC_OK if ednsflags & EDNS_DO else EdnsState.PLAIN
    return state, payload


def canonical_query(key: ReplyKey, payload: int) -> bytes:
    """The query every query with this cache key is answered like (ID 0, lowercase name)."""
    qname_lower, qtype, edns, copied_flags = key
    arcount = 0 if edns == EdnsState.NONE else 1
    wire = HEADER.pack(0, copied_flags, 1, 0, 0, arcount) + qname_lower
    wire += struct.pack("!HH", qtype, CLASS_IN)
    if arcount:
        do_bit = EDNS_DO if edns == EdnsState.DNSSEC_OK else 0
        wire += b"\x00" + struct.pack("!HHBBHH", TYPE_OPT, payload, 0, 0, do_bit, 0)
    return wire


def splice_reply(cached: bytes, query_wire: bytes, question_end: int) -> bytes:
    """A cached canonical reply with the query's ID and question bytes (case) put back."""
    return (
        query_wire[:2]
        + cached[2:HEADER_SIZE]
        + query_wire[HEADER_SIZE:question_end]
        + cached[question_end:]
    )


def header_only_reply(query: bytes, rcode: int) -> bytes | None:
    """A reply with no sections, for queries we cannot (or will not) parse further.

    None when there is no readable header, or when the message is itself a response (QR=1):
    answering responses invites reflection loops.
    """
    if len(query) < HEADER_SIZE:
        return None
    query_id, flags = struct.unpack_from("!HH", query)
    if flags & FLAG_QR:
        return None
    opcode = flags & OPCODE_MASK
    reply_flags = FLAG_QR | opcode | (rcode & 0xF)
    if not opcode:
        # RD (like AA, RA, AD and CD) is defined for QUERY only: a reply to another opcode
        # (NOTIMP) carries no flag but QR (RFC 8906 on unknown opcodes; genreport's opcodeflg).
        reply_flags |= flags & FLAG_RD
    return HEADER.pack(query_id, reply_flags, 0, 0, 0, 0)


def truncate_reply(reply: bytes) -> bytes:
    """The same reply with TC=1, its question and OPT kept and every other record dropped."""
    _, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(reply)
    position = HEADER_SIZE
    for _ in range(qdcount):
        position = skip_name(reply, position) + 4
    question_end = position
    for _ in range(ancount + nscount):
        position = _skip_record(reply, position)
    opt = b""
    for _ in range(arcount):
        start = position
        position = _skip_record(reply, position)
        rtype = struct.unpack_from("!H", reply, skip_name(reply, start))[0]
        if rtype == TYPE_OPT:
            opt = reply[start:position]
    header = HEADER.pack(
        int.from_bytes(reply[:2], "big"), flags | FLAG_TC, qdcount, 0, 0, 1 if opt else 0
    )
    return header + reply[HEADER_SIZE:question_end] + opt


def negative_serial_offset(reply: bytes) -> int:
    """Where the SOA serial sits in a negative reply (no answers, the SOA in AUTHORITY); 0 if
    the reply is not one, or is truncated."""
    _, flags, qdcount, ancount, nscount, _ = HEADER.unpack_from(reply)
    if flags & FLAG_TC or ancount or nscount != 1:
        return 0
    position = HEADER_SIZE
    for _ in range(qdcount):
        position = skip_name(reply, position) + 4
    position = skip_name(reply, position)
    rtype = struct.unpack_from("!H", reply, position)[0]
    if rtype != TYPE_SOA:
        return 0
    rdata = position + 10
    return skip_name(reply, skip_name(reply, rdata))  # past MNAME and RNAME


def with_serial(reply: bytes, serial_at: int, serial: int) -> bytes:
    """The same reply with another SOA serial at ``serial_at``."""
    return reply[:serial_at] + serial.to_bytes(4, "big") + reply[serial_at + 4 :]


def _skip_record(wire: bytes, position: int) -> int:
    position = skip_name(wire, position)
    rdlength: int = struct.unpack_from("!H", wire, position + 8)[0]
    return position + 10 + rdlength
