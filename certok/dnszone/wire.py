"""Byte-level DNS helpers for the hot path: no dnspython objects per query.

``parse_common_query`` recognises the common query shape (one question, class IN, no
compression, at most one plain EDNS0 OPT) and returns None for anything else, which then takes
the dnspython path. The other helpers build replies without parsing them into objects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE = 12

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800
# The query flags a reply copies; every other query flag leaves the reply unchanged.
COPIED_QUERY_FLAGS = FLAG_RD | FLAG_CD

EDNS_DO = 0x8000
TYPE_OPT = 41
CLASS_IN = 1

RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NOTIMP = 4

OPTION_NSID = 3
OPTION_COOKIE = 10
OPTION_TCP_KEEPALIVE = 11
OPTION_PADDING = 12

# Options the fast path may skip. Others go to the dnspython path, which validates the ones
# it knows (a malformed client-subnet option is a FORMERR there) so both paths agree.
_SKIPPABLE_OPTIONS = frozenset({OPTION_NSID, OPTION_TCP_KEEPALIVE, OPTION_PADDING})


class EdnsState:
    """How the query used EDNS, as far as the reply depends on it."""

    NONE = 0
    PLAIN = 1
    DNSSEC_OK = 2


@dataclass(frozen=True, slots=True)
class CommonQuery:
    query_id: int
    copied_flags: int  # RD and CD as sent
    question: bytes  # qname + qtype + qclass exactly as sent (0x20 case preserved)
    qname_lower: bytes  # wire-format qname, ASCII-lowercased
    qtype: int
    edns: int  # an EdnsState value
    payload: int  # requester's UDP payload size (512 without EDNS)

    @property
    def cache_key(self) -> tuple[bytes, int, int, int]:
        return (self.qname_lower, self.qtype, self.edns, self.copied_flags)


def parse_common_query(wire: bytes) -> CommonQuery | None:
    """Parse the common query shape by hand; None means "use the general path"."""
    size = len(wire)
    if size < HEADER_SIZE + 5:
        return None
    query_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    if flags & (FLAG_QR | OPCODE_MASK) or qdcount != 1 or ancount or nscount or arcount > 1:
        return None
    # The question name: plain labels only (no compression, no extended label types).
    position = HEADER_SIZE
    while True:
        if position >= size:
            return None
        length = wire[position]
        if length == 0:
            break
        if length > 63:
            return None
        position += length + 1
    name_end = position + 1
    if name_end - HEADER_SIZE > 255 or name_end + 4 > size:
        return None
    qtype, qclass = struct.unpack_from("!HH", wire, name_end)
    if qclass != CLASS_IN:
        return None
    question_end = name_end + 4
    edns = EdnsState.NONE
    payload = 512
    if arcount:
        opt = _parse_plain_opt(wire, question_end)
        if opt is None:
            return None
        edns, payload = opt
    elif question_end != size:
        return None
    # Length octets are at most 63 (below "A"), so lowering the whole wire name is safe.
    return CommonQuery(
        query_id=query_id,
        copied_flags=flags & COPIED_QUERY_FLAGS,
        question=wire[HEADER_SIZE:question_end],
        qname_lower=wire[HEADER_SIZE:name_end].lower(),
        qtype=qtype,
        edns=edns,
        payload=max(payload, 512),
    )


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


def canonical_query(key: tuple[bytes, int, int, int], payload: int) -> bytes:
    """The query every query with this cache key is answered like (ID 0, lowercase name)."""
    qname_lower, qtype, edns, copied_flags = key
    arcount = 0 if edns == EdnsState.NONE else 1
    wire = HEADER.pack(0, copied_flags, 1, 0, 0, arcount) + qname_lower
    wire += struct.pack("!HH", qtype, CLASS_IN)
    if arcount:
        do_bit = EDNS_DO if edns == EdnsState.DNSSEC_OK else 0
        wire += b"\x00" + struct.pack("!HHBBHH", TYPE_OPT, payload, 0, 0, do_bit, 0)
    return wire


def splice_reply(cached: bytes, query: CommonQuery) -> bytes:
    """A cached canonical reply with the query's ID and question bytes (case) put back."""
    question_end = HEADER_SIZE + len(query.question)
    return (
        query.query_id.to_bytes(2, "big")
        + cached[2:HEADER_SIZE]
        + query.question
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
    reply_flags = FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD)) | (rcode & 0xF)
    return HEADER.pack(query_id, reply_flags, 0, 0, 0, 0)


def truncate_reply(reply: bytes) -> bytes:
    """The same reply with TC=1, its question and OPT kept and every other record dropped."""
    _, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(reply)
    position = HEADER_SIZE
    for _ in range(qdcount):
        position = _skip_name(reply, position) + 4
    question_end = position
    for _ in range(ancount + nscount):
        position = _skip_record(reply, position)
    opt = b""
    for _ in range(arcount):
        start = position
        position = _skip_record(reply, position)
        rtype = struct.unpack_from("!H", reply, _skip_name(reply, start))[0]
        if rtype == TYPE_OPT:
            opt = reply[start:position]
    header = HEADER.pack(
        int.from_bytes(reply[:2], "big"), flags | FLAG_TC, qdcount, 0, 0, 1 if opt else 0
    )
    return header + reply[HEADER_SIZE:question_end] + opt


def _skip_name(wire: bytes, position: int) -> int:
    while True:
        length = wire[position]
        if length == 0:
            return position + 1
        if length & 0xC0 == 0xC0:
            return position + 2
        position += length + 1


def _skip_record(wire: bytes, position: int) -> int:
    position = _skip_name(wire, position)
    rdlength = struct.unpack_from("!H", wire, position + 8)[0]
    return position + 10 + rdlength
