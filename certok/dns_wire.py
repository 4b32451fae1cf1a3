"""The DNS message wire format (RFC 1035 section 4, RFC 6891): header layout, flags, codes,
and walking past a name. Shared by the authoritative server's fast path (certok/dnszone) and the
resolver client's CNAME question (certok/prechecks), which read and build raw messages
without dnspython objects; a leaf module, so neither package imports the other.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE = 12

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800

EDNS_DO = 0x8000
TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_ANY = 255
CLASS_IN = 1

RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

# Compression pointers reach offsets up to here (14 bits).
MAX_POINTER_OFFSET = 0x3FFF

OPTION_NSID = 3
OPTION_COOKIE = 10
OPTION_TCP_KEEPALIVE = 11
OPTION_PADDING = 12


def skip_name(wire: bytes, position: int) -> int:
    """The position after the name at ``position`` (a compression pointer ends it).

    IndexError when the name runs past the end of ``wire``."""
    while True:
        length = wire[position]
        if length == 0:
            return position + 1
        if length & 0xC0 == 0xC0:
            return position + 2
        position += length + 1
