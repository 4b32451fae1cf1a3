"""One CNAME question over UDP, asked and read without dnspython objects.

Every dv and every order's ownership re-check asks the resolver for ``_acme-challenge.<name>``
CNAME (delegation.py). Through ``dns.resolver`` most of the CPU per question goes to building
and parsing ``dns.message.Message`` objects, far more than the datagram exchange itself
(``python bench/cname_check.py`` measures both). This module covers the common answer only:
one UDP exchange with the first configured resolver, an answer with rcode NOERROR or
NXDOMAIN, not truncated, whose owner and target names are plain host names. For anything
else, whether a refused port, TC, SERVFAIL, an odd name or a malformed packet, it returns
None (silence until the timeout: ResolverSilent), and the caller asks dnspython's resolver,
which retries every server, falls back to TCP and reports errors in its own words.

An answer is taken only from the resolver's address and port (a connected socket), with the
query's random ID and the question echoed back (as dnspython checks), from a fresh random
source port.
"""

from __future__ import annotations

import re
import secrets
import socket
import struct
import time

from certok.dns_wire import (
    CLASS_IN,
    FLAG_QR,
    FLAG_RD,
    FLAG_TC,
    HEADER,
    HEADER_SIZE,
    OPCODE_MASK,
    RCODE_NXDOMAIN,
    TYPE_CNAME,
    TYPE_OPT,
    skip_name,
)
from certok.prechecks.resolver import EDNS_PAYLOAD  # what dnspython's resolver advertises too

_MAX_NAME_OCTETS = 255
_POINTER = 0xC0
# What a label of a name certok compares or shows may hold; anything else (escapes, spaces,
# control bytes) is left to dnspython, whose text form escapes it.
_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_*-]{1,63}")
_RECORD = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_OPT_RECORD = b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, 0, 0)
_QUESTION_TAIL = struct.pack("!HH", TYPE_CNAME, CLASS_IN)

Aliases = dict[str, str]  # owner → CNAME target, lowercase, no trailing dot


class _Unusable(Exception):
    """The reply is not one the lean reader takes; dnspython reads it instead."""


def cname_query(owner: str, query_id: int) -> bytes:
    """The query: RD set, one question (``owner`` CNAME IN), an EDNS0 OPT record."""
    header = HEADER.pack(query_id, FLAG_RD, 1, 0, 0, 1)
    return header + _name_wire(owner) + _QUESTION_TAIL + _OPT_RECORD


def read_aliases(reply: bytes, query: bytes) -> Aliases | None:
    """The CNAME records in the answer section of ``reply`` to ``query``, or None when the
    reply is not a plain NOERROR / NXDOMAIN answer to it."""
    try:
        return _read_aliases(reply, query)
    except (_Unusable, IndexError, struct.error):
        return None


class ResolverSilent(TimeoutError):
    """No answer to the query came back within the timeout."""


def lookup_aliases(owner: str, server: tuple[str, int], timeout: float) -> Aliases | None:
    """Ask ``server`` for ``owner`` CNAME once; its aliases, or None (see the module's doc).

    Raises ResolverSilent when nothing answered in time: the caller asks the next server first.
    """
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    deadline = time.monotonic() + timeout
    try:
        query = cname_query(owner, secrets.randbits(16))
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(server)
            sock.send(query)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:  # stray datagrams only, until the deadline
                    raise TimeoutError
                sock.settimeout(remaining)
                reply = sock.recv(65535)
                # A late answer to an earlier query that used the same port is skipped.
                if reply[:2] == query[:2]:
                    return read_aliases(reply, query)
    except TimeoutError as error:
        raise ResolverSilent(f"no answer from {server[0]} port {server[1]}") from error
    except (OSError, ValueError):  # refused, unreachable, a bad address or name
        return None


def _read_aliases(reply: bytes, query: bytes) -> Aliases:
    query_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(reply)
    if query_id != HEADER.unpack_from(query)[0] or not flags & FLAG_QR:
        raise _Unusable("not the answer to this query")
    if flags & OPCODE_MASK or flags & FLAG_TC or (flags & 0xF) not in (0, RCODE_NXDOMAIN):
        raise _Unusable("truncated, not a query answer, or an error rcode")
    if qdcount != 1:
        raise _Unusable("not one question")
    asked = query[HEADER_SIZE : -len(_OPT_RECORD)]
    question_end = HEADER_SIZE + len(asked)
    if reply[HEADER_SIZE:question_end].lower() != asked.lower():
        raise _Unusable("another question")
    aliases: Aliases = {}
    position = question_end
    for _ in range(ancount):
        owner, position = _read_name(reply, position)
        rtype, rclass, _, rdlength = _RECORD.unpack_from(reply, position)
        position += _RECORD.size
        end = position + rdlength
        if end > len(reply):
            raise _Unusable("a record runs past the end")
        if rtype == TYPE_CNAME and rclass == CLASS_IN:
            target, target_end = _read_name(reply, position)
            if target_end != end:
                raise _Unusable("CNAME data is not one name")
            # Two CNAMEs at one owner break RFC 1034; like dnspython, keep the last.
            aliases[owner] = target
        position = end
    _check_extended_rcode(reply, position, nscount + arcount)
    return aliases


def _check_extended_rcode(reply: bytes, position: int, records: int) -> None:
    """Refuse a reply whose OPT record carries an extended rcode (BADVERS and the like):
    its header's four rcode bits alone would read as NOERROR."""
    for _ in range(records):
        position = skip_name(reply, position)
        rtype, _, ttl, rdlength = _RECORD.unpack_from(reply, position)
        if rtype == TYPE_OPT and ttl >> 24:
            raise _Unusable("an extended rcode")
        position += _RECORD.size + rdlength
    if position > len(reply):
        raise _Unusable("a record runs past the end")


def _read_name(wire: bytes, position: int) -> tuple[str, int]:
    """The name at ``position`` as lowercase text without the trailing dot (compression
    followed), and the position after it."""
    labels: list[str] = []
    octets = 0
    after: int | None = None
    while True:
        length = wire[position]
        if length & _POINTER == _POINTER:
            target = ((length & 0x3F) << 8) | wire[position + 1]
            if after is None:
                after = position + 2
            # Only backwards; a cycle through labels ends at the 255-octet limit below.
            if target >= position:
                raise _Unusable("a forward compression pointer")
            position = target
            continue
        if length & _POINTER:
            raise _Unusable("an extended label type")
        if length == 0:
            return ".".join(labels), after if after is not None else position + 1
        label = wire[position + 1 : position + 1 + length]
        octets += length + 1
        if len(label) != length or octets >= _MAX_NAME_OCTETS or not _PLAIN_LABEL.fullmatch(label):
            raise _Unusable("not a plain host name")
        labels.append(label.decode("ascii").lower())
        position += length + 1


def _name_wire(name: str) -> bytes:
    labels = [label.encode("ascii") for label in name.strip().rstrip(".").split(".")]
    if any(not _PLAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a plain host name: {name!r}")
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    if len(wire) > _MAX_NAME_OCTETS:
        raise ValueError(f"name too long: {name!r}")
    return wire
