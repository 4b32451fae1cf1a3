"""DNS conformance of the real server on loopback: one test per rule, over UDP and over TCP.

The rules come from RFC 8906 (what an authoritative server must answer to odd queries),
RFC 6891 (EDNS), RFC 8482 (ANY), RFC 2308 (negative answers) and the field notes in
REFERENCE.md. ``tests/unit/test_dns_answer.py`` checks the same rules on ``answer()`` alone;
here every query goes through ``start_dns_server``'s sockets and framing, and every rule is
asked once per transport, because a resolver may use either and must get the same answer.

Queries are sent as raw bytes on plain sockets (not dnspython's clients), so a reply the
server should not send shows up as silence and exact bytes can be compared.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from certok.dnszone.answer import ZoneConfig
from certok.dnszone.server import DnsServer, start_dns_server
from certok.dnszone.wire import truncate_reply
from certok.dnszone.zone_cache import ZoneCache
from certok.dnszone.zone_records import ZoneRecords
from tests.kit.dns import CERTOK_ZONE

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")

HOST = "127.0.0.1"
TTL = 30
MAX_TXT_VALUES = 8  # the default of settings.dns_max_txt_values
CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    nameservers=(f"ns1.{CERTOK_ZONE}",),
    nameserver_addresses=("127.0.0.1",),
    ttl=TTL,
    max_txt_values=MAX_TXT_VALUES,
)
# A reply we expect arrives within milliseconds on loopback; silence is judged after this.
REPLY_TIMEOUT = 2.0
SILENCE_TIMEOUT = 0.3


def digest(seed: str) -> str:
    """A dns-01 TXT value as a CA computes it: base64url(SHA-256), 43 characters."""
    raw = hashlib.sha256(seed.encode()).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


APEX_AND_WILDCARD = "0123456789abcdef"  # two values: the apex and its wildcard in one order
MAX_VALUES = "1111111111111111"  # as many digests as the server presents at one label
BIG_VALUES = "2222222222222222"  # 8 values of 200 bytes: too big for 512 bytes of UDP
IDLE = "3333333333333333"  # allocated, nothing presented: NODATA
VALUES = {
    APEX_AND_WILDCARD: [digest("apex"), digest("wildcard")],
    MAX_VALUES: [digest(f"max-{i}") for i in range(MAX_TXT_VALUES)],
    BIG_VALUES: [f"{i}" * 200 for i in range(8)],
}
RECORDS = ZoneRecords.build(
    [APEX_AND_WILDCARD, MAX_VALUES, BIG_VALUES, IDLE, "leaf.branch"],
    [(label, value) for label, values in VALUES.items() for value in values],
    serial=2026010101,
)


def name(relative: str) -> str:
    return f"{relative}.{CERTOK_ZONE}."


# --- the server and the two transports -----------------------------------------------------------


class LoopThread:
    """An asyncio loop in a daemon thread, so blocking sockets can talk to the server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def serve(config: ZoneConfig) -> Iterator[DnsServer]:
    """The real server for ``config`` and RECORDS on a loopback port, for a fixture's life."""
    loop = LoopThread()
    cache = ZoneCache(None)
    cache.replace(RECORDS)
    # Response rate limiting is off: these tests send bursts from one address on purpose,
    # and RRL has its own test in test_dns_server.py.
    dns_server = loop.run(start_dns_server(HOST, 0, config, cache, rate_limit_per_second=None))
    yield dns_server
    loop.run(dns_server.close())
    loop.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    yield from serve(CONFIG)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", read_exactly(sock, 2))
    return read_exactly(sock, length)


def frame(query: bytes) -> bytes:
    return struct.pack("!H", len(query)) + query


@dataclass(frozen=True)
class Transport:
    name: str
    port: int

    def exchange(self, query: bytes, timeout: float = REPLY_TIMEOUT) -> bytes | None:
        """The server's reply to one query, or None when it stays silent for ``timeout``."""
        if self.name == "udp":
            return udp_exchange(self.port, query, timeout)
        return tcp_exchange(self.port, query, timeout)

    def ask(self, query: bytes) -> dns.message.Message:
        reply = self.exchange(query)
        assert reply is not None, f"no reply over {self.name}"
        parsed = dns.message.from_wire(reply)
        assert parsed.id == struct.unpack_from("!H", query)[0]
        assert parsed.flags & dns.flags.QR
        return parsed


def udp_exchange(port: int, query: bytes, timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (HOST, port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def tcp_exchange(port: int, query: bytes, timeout: float) -> bytes | None:
    with socket.create_connection((HOST, port), timeout=REPLY_TIMEOUT) as sock:
        sock.settimeout(timeout)
        sock.sendall(frame(query))
        try:
            return read_frame(sock)
        except TimeoutError:
            return None


@pytest.fixture(params=["udp", "tcp"])
def transport(request: pytest.FixtureRequest, server: DnsServer) -> Transport:
    return Transport(request.param, server.port)


def query_wire(
    qname: str, qtype: str | int = "TXT", *, query_id: int = 0x5A5A, **options: Any
) -> bytes:
    query = dns.message.make_query(qname, qtype, **options)
    query.id = query_id
    return query.to_wire()


def raw_query(*, flags: int = 0x0100, qdcount: int = 1, query_id: int = 0xBEEF) -> bytes:
    """A hand-built query whose header may say things dnspython would not let us say."""
    question = dns.name.from_text(name(APEX_AND_WILDCARD)).to_wire() + struct.pack("!HH", 16, 1)
    return struct.pack("!HHHHHH", query_id, flags, qdcount, 0, 0, 0) + question * qdcount


def txt_values(reply: dns.message.Message) -> list[str]:
    return sorted(b"".join(r.strings).decode() for rrset in reply.answer for r in rrset)


def assert_soa_in_authority(reply: dns.message.Message) -> None:
    assert reply.flags & dns.flags.AA, "negative answers are authoritative"
    assert reply.answer == []
    assert len(reply.authority) == 1
    (soa,) = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name == dns.name.from_text(CERTOK_ZONE)
    # RFC 2308 §5: negative TTL = min(SOA TTL, MINIMUM); both short so a new TXT shows at once.
    assert soa.ttl == TTL <= 60
    assert soa[0].minimum == TTL


# --- EDNS (RFC 6891) -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 255])
def test_unknown_edns_version_is_badvers_with_opt_version_0(
    transport: Transport, version: int
) -> None:
    reply = transport.ask(query_wire(name(APEX_AND_WILDCARD), use_edns=version))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0, "the OPT in a BADVERS reply names the version we speak"
    assert reply.answer == reply.authority == []


def test_unknown_edns_options_are_ignored_and_not_echoed(transport: Transport) -> None:
    unknown = [
        dns.edns.GenericOption(65001, b"local use"),
        dns.edns.GenericOption(20292, b"\x00" * 40),  # unassigned
        dns.edns.GenericOption(65535, b""),  # reserved
    ]
    plain = query_wire(name(APEX_AND_WILDCARD), use_edns=0)
    with_options = query_wire(name(APEX_AND_WILDCARD), use_edns=0, options=unknown)
    reply = transport.ask(with_options)
    assert reply.rcode() == dns.rcode.NOERROR
    assert txt_values(reply) == sorted(VALUES[APEX_AND_WILDCARD])
    assert reply.edns == 0 and reply.options == ()
    # Ignored means ignored: the same bytes as the same query without the options.
    assert transport.exchange(with_options) == transport.exchange(plain)


def test_an_answer_larger_than_the_requesters_size_is_truncated_over_udp_only(
    transport: Transport,
) -> None:
    query = query_wire(name(BIG_VALUES), use_edns=0, payload=512)
    reply_wire = transport.exchange(query)
    assert reply_wire is not None
    reply = dns.message.from_wire(reply_wire)
    if transport.name == "udp":
        assert reply.flags & dns.flags.TC
        assert len(reply_wire) <= 512
        assert reply.answer == reply.authority == []
        assert reply.edns == 0, "a truncated reply keeps its OPT"
    else:
        assert not reply.flags & dns.flags.TC
        assert len(reply_wire) > 1232
        assert txt_values(reply) == sorted(VALUES[BIG_VALUES])


# --- RFC 8906: odd queries get defined answers ---------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "qtype"),
    [
        (APEX_AND_WILDCARD, 65280),  # private use
        (APEX_AND_WILDCARD, 4242),  # unassigned
        (IDLE, 65534),
        ("", 4242),  # at the apex
    ],
)
def test_unknown_query_type_is_nodata_with_soa(
    transport: Transport, owner: str, qtype: int
) -> None:
    qname = name(owner) if owner else f"{CERTOK_ZONE}."
    reply = transport.ask(query_wire(qname, qtype))
    assert reply.rcode() == dns.rcode.NOERROR
    assert_soa_in_authority(reply)


@pytest.mark.parametrize(
    "opcode",
    [
        dns.opcode.IQUERY,
        dns.opcode.STATUS,
        3,  # unassigned
        dns.opcode.NOTIFY,
        dns.opcode.UPDATE,
        6,  # DSO (RFC 8490)
        15,
    ],
)
def test_opcode_other_than_query_is_notimp(transport: Transport, opcode: int) -> None:
    reply = transport.ask(raw_query(flags=opcode << 11))
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == opcode
    assert reply.answer == reply.authority == []


# Every header flag a query can carry: AA, TC, RD, RA, Z, AD, CD.
EVERY_QUERY_FLAG = 0x0400 | 0x0200 | 0x0100 | 0x0080 | 0x0040 | 0x0020 | 0x0010


@pytest.mark.parametrize("opcode", [15, 3, dns.opcode.NOTIFY, dns.opcode.UPDATE, 6])
def test_unknown_opcode_with_every_flag_set_gets_notimp_and_no_query_flags(
    transport: Transport, opcode: int
) -> None:
    """ISC's genreport `opcodeflg`: opcode 15 with every flag set. RD, AA, RA, AD and CD are
    defined for QUERY only, so the NOTIMP reply copies none of them: QR, the opcode and the
    rcode are its whole flags word."""
    reply_wire = transport.exchange(raw_query(flags=opcode << 11 | EVERY_QUERY_FLAG))
    assert reply_wire is not None, f"no reply over {transport.name}"
    query_id, flags = struct.unpack_from("!HH", reply_wire)
    assert query_id == 0xBEEF
    assert flags == 0x8000 | opcode << 11 | dns.rcode.NOTIMP, f"{flags:#06x}"
    reply = dns.message.from_wire(reply_wire)
    assert reply.opcode() == opcode and reply.rcode() == dns.rcode.NOTIMP
    assert reply.answer == reply.authority == reply.additional == []


def test_a_query_with_every_flag_set_still_gets_rd_back(transport: Transport) -> None:
    """Only other opcodes lose RD: a QUERY refused as malformed (FORMERR) keeps it."""
    for qdcount in (0, 2):
        reply = transport.ask(raw_query(flags=EVERY_QUERY_FLAG, qdcount=qdcount))
        assert reply.opcode() == dns.opcode.QUERY and reply.rcode() == dns.rcode.FORMERR
        assert reply.flags & dns.flags.RD


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(transport: Transport, qdcount: int) -> None:
    reply = transport.ask(raw_query(qdcount=qdcount))
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.answer == reply.authority == []


def test_a_message_with_qr_set_gets_no_reply(server: DnsServer, transport: Transport) -> None:
    """UDP: silence. TCP: silence too, and the connection stays open and usable (documented
    behaviour: the server skips the message and reads the next one)."""
    response = raw_query(flags=0x8000 | 0x0100, query_id=0x1111)
    if transport.name == "udp":
        assert transport.exchange(response, timeout=SILENCE_TIMEOUT) is None
        return
    follow_up = query_wire(name(APEX_AND_WILDCARD), query_id=0x2222)
    with socket.create_connection((HOST, server.port), timeout=REPLY_TIMEOUT) as sock:
        sock.sendall(frame(response))
        sock.settimeout(SILENCE_TIMEOUT)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing for the response, and the connection is not closed
        sock.settimeout(REPLY_TIMEOUT)
        sock.sendall(frame(follow_up))
        reply = dns.message.from_wire(read_frame(sock))
    assert reply.id == 0x2222
    assert txt_values(reply) == sorted(VALUES[APEX_AND_WILDCARD])


# --- ANY, zone transfers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qname", "only_type"),
    [
        (name(MAX_VALUES), dns.rdatatype.TXT),
        (name(APEX_AND_WILDCARD), dns.rdatatype.TXT),
        (f"{CERTOK_ZONE}.", dns.rdatatype.SOA),  # the apex has SOA and NS: one of them
        (name("ns1"), dns.rdatatype.A),
    ],
)
def test_any_gets_a_minimal_answer(transport: Transport, qname: str, only_type: int) -> None:
    reply = transport.ask(query_wire(qname, "ANY", use_edns=False))
    assert reply.rcode() == dns.rcode.NOERROR
    if transport.name == "udp" and reply.flags & dns.flags.TC:
        # Eight TXT values are over 4x the query: truncated over UDP (amplification cap).
        assert qname == name(MAX_VALUES) and reply.answer == []
        return
    assert [rrset.rdtype for rrset in reply.answer] == [only_type], "one RRset (RFC 8482 §4.1)"
    assert reply.authority == [] and reply.additional == []


def ixfr_query() -> bytes:
    """An IXFR as a secondary sends it: the serial it has, as an SOA in AUTHORITY (RFC 1995)."""
    query = dns.message.make_query(f"{CERTOK_ZONE}.", "IXFR", use_edns=False)
    query.authority.append(
        dns.rrset.from_text(
            f"{CERTOK_ZONE}.",
            0,
            "IN",
            "SOA",
            f"ns1.{CERTOK_ZONE}. hostmaster.{CERTOK_ZONE}. 1 3600 600 1209600 30",
        )
    )
    query.id = 0x7777
    return query.to_wire()


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(query_wire(f"{CERTOK_ZONE}.", "AXFR", use_edns=False), id="axfr"),
        pytest.param(query_wire(f"{CERTOK_ZONE}.", "IXFR", use_edns=False), id="ixfr-bare"),
        pytest.param(ixfr_query(), id="ixfr-with-soa"),
        pytest.param(query_wire(name(APEX_AND_WILDCARD), "AXFR"), id="axfr-below-apex"),
    ],
)
def test_zone_transfers_are_refused(transport: Transport, query: bytes) -> None:
    reply = transport.ask(query)
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == [] and reply.authority == []


# --- case, negative answers ----------------------------------------------------------------------


def random_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


CASE_OWNERS = [
    name(APEX_AND_WILDCARD),  # data
    name(IDLE),  # NODATA
    name("branch"),  # empty non-terminal
    name("abcdef0123456789"),  # NXDOMAIN
    f"x.ns1.{CERTOK_ZONE}.",  # NXDOMAIN below an SOA name
    f"{CERTOK_ZONE}.",
    "www.example.com.",  # REFUSED: the question is copied there too
]


def test_query_name_case_is_kept_byte_for_byte(transport: Transport) -> None:
    rng = random.Random(0x20)
    for round_number in range(60):
        qname = random_case(CASE_OWNERS[round_number % len(CASE_OWNERS)], rng)
        query = query_wire(qname, rng.choice(["TXT", "A", "SOA"]), use_edns=rng.choice([0, False]))
        reply_wire = transport.exchange(query)
        assert reply_wire is not None
        question_length = len(dns.name.from_text(qname).to_wire()) + 4
        assert reply_wire[12 : 12 + question_length] == query[12 : 12 + question_length], qname
        reply = dns.message.from_wire(reply_wire)
        for rrset in reply.answer:
            assert rrset.name.to_text() == qname  # the owner keeps the requester's case too


@pytest.mark.parametrize(
    ("qname", "qtype", "rcode"),
    [
        (name("abcdef0123456789"), "TXT", dns.rcode.NXDOMAIN),  # no such label
        (name(f"sub.{APEX_AND_WILDCARD}"), "TXT", dns.rcode.NXDOMAIN),  # below a label
        (name("leaf.other"), "A", dns.rcode.NXDOMAIN),
        (name(APEX_AND_WILDCARD), "A", dns.rcode.NOERROR),  # label with TXT, other type
        (name(IDLE), "TXT", dns.rcode.NOERROR),  # allocated, nothing presented
        (name("branch"), "TXT", dns.rcode.NOERROR),  # empty non-terminal (RFC 8020)
        (f"{CERTOK_ZONE}.", "TXT", dns.rcode.NOERROR),  # apex without TXT
    ],
)
@pytest.mark.parametrize("use_edns", [False, 0])
def test_negative_answers_carry_the_soa_in_authority_with_aa(
    transport: Transport, qname: str, qtype: str, rcode: dns.rcode.Rcode, use_edns: int | bool
) -> None:
    reply = transport.ask(query_wire(qname, qtype, use_edns=use_edns))
    assert reply.rcode() == rcode
    assert_soa_in_authority(reply)


# Nameservers inside the zone two and three labels below the apex (dns_nameservers with glue
# from dns_nameserver_addresses): the names between them and the apex exist without data.
NESTED_NS_CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    nameservers=(f"ns1.{CERTOK_ZONE}", f"a.b.{CERTOK_ZONE}", f"ns.x.y.{CERTOK_ZONE}"),
    nameserver_addresses=("127.0.0.1",),
    ttl=TTL,
    max_txt_values=MAX_TXT_VALUES,
)
NAMES_AROUND_NESTED_NAMESERVERS = [
    ("b", dns.rcode.NOERROR),  # empty non-terminal above a.b (RFC 8020: NODATA)
    ("y", dns.rcode.NOERROR),  # above ns.x.y, two levels up
    ("x.y", dns.rcode.NOERROR),
    ("c.b", dns.rcode.NXDOMAIN),  # beside a nameserver: nothing there
    ("sub.a.b", dns.rcode.NXDOMAIN),  # below one
]


@pytest.fixture(scope="module")
def nested_ns_server() -> Iterator[DnsServer]:
    yield from serve(NESTED_NS_CONFIG)


@pytest.mark.parametrize(("relative", "rcode"), NAMES_AROUND_NESTED_NAMESERVERS)
@pytest.mark.parametrize("qtype", ["A", "TXT"])
@pytest.mark.parametrize("transport_name", ["udp", "tcp"])
def test_names_above_an_in_zone_nameserver_are_empty_non_terminals(
    nested_ns_server: DnsServer,
    transport_name: str,
    relative: str,
    rcode: dns.rcode.Rcode,
    qtype: str,
) -> None:
    transport = Transport(transport_name, nested_ns_server.port)
    reply = transport.ask(query_wire(name(relative), qtype))
    assert reply.rcode() == rcode
    assert_soa_in_authority(reply)


def test_names_around_nested_nameservers_get_the_same_bytes_over_udp_and_tcp(
    nested_ns_server: DnsServer,
) -> None:
    for relative, _ in [*NAMES_AROUND_NESTED_NAMESERVERS, ("a.b", None), ("ns.x.y", None)]:
        query = query_wire(name(relative).upper(), "A")
        over_udp = udp_exchange(nested_ns_server.port, query, REPLY_TIMEOUT)
        over_tcp = tcp_exchange(nested_ns_server.port, query, REPLY_TIMEOUT)
        assert over_udp is not None and over_udp == over_tcp, relative


# --- amplification -------------------------------------------------------------------------------


def amplification(port: int, qname: str, qtype: str) -> tuple[int, int]:
    """(query bytes, reply bytes) over UDP for the smallest query that asks: no EDNS."""
    query = query_wire(qname, qtype, use_edns=False)
    reply = udp_exchange(port, query, REPLY_TIMEOUT)
    assert reply is not None
    return len(query), len(reply)


@pytest.mark.parametrize(
    "label",
    [
        pytest.param(APEX_AND_WILDCARD, id="2-values"),
        pytest.param(MAX_VALUES, id="max-values"),
    ],
)
def test_a_udp_answer_is_at_most_four_times_its_query(server: DnsServer, label: str) -> None:
    """UDP only: over TCP the handshake proves the source address, so nothing is amplified."""
    ratios = {}
    for qname, qtype in [
        (name(label), "TXT"),
        (name(label), "ANY"),
        (f"{CERTOK_ZONE}.", "NS"),
        (f"{CERTOK_ZONE}.", "SOA"),
        (f"{CERTOK_ZONE}.", "ANY"),
        (name("abcdef0123456789"), "TXT"),
    ]:
        query_size, reply_size = amplification(server.port, qname, qtype)
        ratios[f"{qname} {qtype}"] = (query_size, reply_size, round(reply_size / query_size, 2))
    worst = max(ratios.values(), key=lambda measured: measured[2])
    assert worst[2] <= 4.0, ratios


def test_an_answer_over_four_times_its_query_is_truncated_then_whole_over_tcp(
    server: DnsServer,
) -> None:
    query = query_wire(name(MAX_VALUES), "TXT", use_edns=False)
    udp = udp_exchange(server.port, query, REPLY_TIMEOUT)
    assert udp is not None
    assert dns.message.from_wire(udp).flags & dns.flags.TC
    tcp = dns.query.tcp(dns.message.from_wire(query), "127.0.0.1", port=server.port, timeout=2)
    assert not tcp.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in tcp.answer) == 8


def test_the_reference_measurement_holds(server: DnsServer) -> None:
    """REFERENCE.md: a 41-byte query with 2 TXT values gets 153 bytes (3.7x). Our zone name
    is 7 bytes longer, so the same shape is 48 -> 160 bytes: exactly 112 bytes of two TXT RRs
    (2 pointer + 10 fixed + 1 length + 43 digest each) on top of the echoed query."""
    query_size, reply_size = amplification(server.port, name(APEX_AND_WILDCARD), "TXT")
    assert (query_size, reply_size) == (48, 48 + 2 * (2 + 10 + 1 + 43))


# --- both transports give the same bytes ---------------------------------------------------------


def shapes() -> list[tuple[str, bytes]]:
    return [
        ("txt", query_wire(name(APEX_AND_WILDCARD))),
        ("txt-no-edns", query_wire(name(APEX_AND_WILDCARD), use_edns=False)),
        ("txt-do", query_wire(name(MAX_VALUES), use_edns=0, want_dnssec=True)),
        ("txt-big-512", query_wire(name(BIG_VALUES), use_edns=0, payload=512)),
        ("txt-big-no-edns", query_wire(name(BIG_VALUES), use_edns=False)),
        ("txt-big-4096", query_wire(name(BIG_VALUES), use_edns=0, payload=4096)),
        ("mixed-case", query_wire(name(APEX_AND_WILDCARD).upper())),
        ("nodata", query_wire(name(IDLE))),
        ("nxdomain", query_wire(name("abcdef0123456789"))),
        ("ent", query_wire(name("branch"), "A")),
        ("soa", query_wire(f"{CERTOK_ZONE}.", "SOA")),
        ("ns-with-glue", query_wire(f"{CERTOK_ZONE}.", "NS")),
        ("any", query_wire(name(MAX_VALUES), "ANY")),
        ("unknown-type", query_wire(name(APEX_AND_WILDCARD), 65280)),
        ("refused", query_wire("www.example.com.")),
        ("class-ch", query_wire(name(APEX_AND_WILDCARD), rdclass="CH")),
        ("axfr", query_wire(f"{CERTOK_ZONE}.", "AXFR")),
        ("ixfr", ixfr_query()),
        ("badvers", query_wire(name(APEX_AND_WILDCARD), use_edns=1)),
        (
            "options",
            query_wire(
                name(APEX_AND_WILDCARD),
                use_edns=0,
                options=[
                    dns.edns.GenericOption(65001, b"x"),
                    dns.edns.CookieOption(b"12345678", b""),
                ],
            ),
        ),
        ("notify", raw_query(flags=dns.opcode.NOTIFY << 11)),
        ("qdcount-0", raw_query(qdcount=0)),
        ("qdcount-2", raw_query(qdcount=2)),
        ("garbage", raw_query() + b"\x00\x01"),
        ("cd-rd", query_wire(name(APEX_AND_WILDCARD), flags=dns.flags.RD | dns.flags.CD)),
    ]


def test_udp_and_tcp_answers_are_byte_identical(server: DnsServer) -> None:
    truncated = []
    for shape, query in shapes():
        over_udp = udp_exchange(server.port, query, REPLY_TIMEOUT)
        over_tcp = tcp_exchange(server.port, query, REPLY_TIMEOUT)
        assert over_udp is not None and over_tcp is not None, shape
        if dns.message.from_wire(over_udp).flags & dns.flags.TC:
            # The one allowed difference: UDP drops the records that did not fit and sets TC.
            truncated.append(shape)
            assert over_udp == truncate_reply(over_tcp), shape
        else:
            assert over_udp == over_tcp, shape
    # txt-do and any ask for eight values: over 4x the query, so UDP truncates (the cap)
    assert truncated == ["txt-do", "txt-big-512", "txt-big-no-edns", "txt-big-4096", "any"]
