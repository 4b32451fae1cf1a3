"""Fuzzing ``answer()``, the one function every DNS packet from the internet goes through.

Three kinds of input: random bytes, well-formed queries with random contents (names, types,
classes, header flags, EDNS versions, sizes and options, known and unknown, well-formed or
not), and well-formed queries mutated the way broken or hostile senders mutate packets (bit
flips, truncation, splices of two packets, forged section counts, inserted and deleted bytes).

For every input:
- ``answer`` returns (it is documented never to raise) and never reaches its SERVFAIL
  fallback, which exists only for unexpected exceptions: a SERVFAIL here is a hidden crash;
- it stays silent exactly when there is no readable header or the message is a response;
- every reply parses with dnspython, is a response (QR=1), carries the query's ID, fits the
  transport (the UDP size, or a TCP frame), and answers other opcodes with NOTIMP;
- when the hand-written fast path takes a query, its bytes equal the dnspython path's.

The full run (``-m slow``) tries over 100,000 inputs; the default run a few thousand; the
deep run (``CERTOK_TEST_DEPTH=deep``, tests/depth.py) 1,000,000.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from certok.dnszone.answer import (
    ADVERTISED_UDP_PAYLOAD,
    MAX_TCP_MESSAGE,
    ZoneConfig,
    answer,
    fast_answer,
    general_answer,
)
from certok.dnszone.zone_records import ZoneRecords
from tests.depth import DEEP
from tests.kit.dns import CERTOK_ZONE

LABEL = "0123456789abcdef"
CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    nameservers=(f"ns1.{CERTOK_ZONE}", "ns.elsewhere.test"),
    nameserver_addresses=("127.0.0.53", "fd00::53"),
    ttl=30,
    host_addresses=(("api", ("127.0.0.2", "::2")),),
)
RECORDS = ZoneRecords.build(
    [LABEL, "fedcba9876543210", "leaf.branch"],
    [(LABEL, "a" * 43), (LABEL, "b" * 43), ("big", "c" * 600), ("leaf.branch", "deep")],
    serial=1,
)
MAX_UDP_CHOICES = [512, ADVERTISED_UDP_PAYLOAD, None]  # None: the query came over TCP
HEADER_SIZE = 12

# Examples per property: the slow run adds up to 100,000 and more, the default run to 4,000,
# the deep run to 1,000,000.
SLOW_EXAMPLES = {"random_bytes": 35_000, "queries": 20_000, "mutated": 45_000}
QUICK_EXAMPLES = {"random_bytes": 1_000, "queries": 1_000, "mutated": 2_000}
DEEP_EXAMPLES = {kind: 10 * examples for kind, examples in SLOW_EXAMPLES.items()}
LENGTH_EXAMPLES = DEEP_EXAMPLES if DEEP else SLOW_EXAMPLES
# One Hypothesis run keeps a record of every example it tried: longer runs go in chunks of
# this many examples, each a fresh run with its own random seed, so memory stays flat.
CHUNK_EXAMPLES = 50_000


# --- the properties ------------------------------------------------------------------------------


def check_answer(query: bytes, max_udp: int | None) -> None:
    reply = answer(query, CONFIG, RECORDS, max_udp=max_udp)
    readable = len(query) >= HEADER_SIZE
    query_id, flags = struct.unpack_from("!HH", query) if readable else (0, 0)
    if not readable or flags & 0x8000:
        assert reply is None, "no header, or a response: nothing to answer"
        return
    assert reply is not None, "every query with a header gets a reply"
    assert len(reply) <= (max_udp if max_udp is not None else MAX_TCP_MESSAGE)
    parsed = dns.message.from_wire(reply)
    assert parsed.id == query_id
    assert parsed.flags & dns.flags.QR
    assert parsed.rcode() != dns.rcode.SERVFAIL, "SERVFAIL only comes from an unexpected error"
    opcode = (flags >> 11) & 0xF
    if opcode:
        assert parsed.rcode() == dns.rcode.NOTIMP
        assert parsed.opcode() == opcode
        # No QUERY-only flag (RD, AA, RA, AD, CD) and nothing else but QR in a NOTIMP reply.
        assert struct.unpack_from("!H", reply, 2)[0] == 0x8000 | opcode << 11 | 4
    fast = fast_answer(query, CONFIG, RECORDS, max_udp=max_udp)
    if fast is not None:
        assert fast == general_answer(query, CONFIG, RECORDS, max_udp=max_udp)


def run_property(kind: str, examples: int) -> int:
    """Check one property on ``examples`` Hypothesis examples; returns how many ran."""
    ran = 0
    while ran < examples:
        ran += run_chunk(kind, min(CHUNK_EXAMPLES, examples - ran))
        if examples > CHUNK_EXAMPLES:  # a long run says how far it got
            print(f"DNS fuzz: {kind}: {ran} of {examples} examples, no failure", flush=True)
    return ran


def run_chunk(kind: str, examples: int) -> int:
    strategy, check = PROPERTIES[kind]
    ran = 0

    # database=None: a fuzz run explores afresh each time; a failure prints its reproducer.
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(value=strategy, max_udp=st.sampled_from(MAX_UDP_CHOICES))
    def property_holds(value: Any, max_udp: int | None) -> None:
        nonlocal ran
        ran += 1
        check(value, max_udp)

    property_holds()
    return ran


# --- inputs ---------------------------------------------------------------------------------------
# Hypothesis spends about 0.6 ms of its own per example here, so each example draws one
# seeded ``random.Random`` (or one byte string) and builds its packet from that in plain
# Python: 100,000 examples then fit in about a minute and a half. A failure prints the seed
# and, through ``note``, the packet's bytes.

# Names the zone knows in several ways, names it does not know, and names outside it.
OWNERS = [
    f"{LABEL}.{CERTOK_ZONE}",
    f"fedcba9876543210.{CERTOK_ZONE}",
    f"branch.{CERTOK_ZONE}",
    f"leaf.branch.{CERTOK_ZONE}",
    f"big.{CERTOK_ZONE}",
    f"ns1.{CERTOK_ZONE}",
    f"x.ns1.{CERTOK_ZONE}",
    f"hostmaster.{CERTOK_ZONE}",
    f"api.{CERTOK_ZONE}",
    f"nothere.{CERTOK_ZONE}",
    CERTOK_ZONE,
    "svc.test",
    "example.com",
    "a\\004acme.svc.test",
    "",
]
OWNER_WIRE = [dns.name.from_text(owner or ".").to_wire() for owner in OWNERS]
OWNER_LABELS = [list(dns.name.from_text(owner or ".").labels[:-1]) for owner in OWNERS]
LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
LABEL_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*. \\\x00\xff"
QTYPES = [1, 2, 5, 6, 16, 28, 41, 46, 250, 251, 252, 255, 257, 65280]
QCLASSES = [1, 1, 1, 3, 4, 254, 255]
KNOWN_OPTION_CODES = [3, 8, 9, 10, 11, 12, 13, 14, 15]  # NSID, ECS, …, COOKIE, PADDING, EDE


def random_name(rng: random.Random) -> bytes:
    """A known, unknown or outside name in wire form, sometimes with odd labels, in random
    (0x20) case."""
    labels = [
        bytes(rng.choice(LABEL_BYTES) for _ in range(rng.randint(1, rng.choice([12, 12, 63]))))
        for _ in range(rng.choice([0, 0, 0, 1, 2, 3]))
    ]
    labels += OWNER_LABELS[rng.randrange(len(OWNER_LABELS))]
    wire = b"".join(
        bytes([len(label)])
        + bytes(c ^ 0x20 if c in LETTERS and rng.random() < 0.5 else c for c in label)
        for label in labels
    )
    return wire + b"\x00" if len(wire) <= 254 else OWNER_WIRE[0]  # at most 255 octets


def random_opt(rng: random.Random) -> bytes:
    """An OPT record: mostly version 0, random flags and sizes, known and unknown options."""
    options = b""
    for _ in range(rng.choice([0, 0, 1, 1, 2, 4])):
        kind = rng.random()
        if kind < 0.2:
            server = rng.choice([b"", b"s" * 8, b"s" * 16, b"s" * 32])
            option: dns.edns.Option = dns.edns.CookieOption(rng.randbytes(8), server)
        elif kind < 0.35:
            address = rng.choice(["192.0.2.0", "2001:db8::"])
            option = dns.edns.ECSOption(address, rng.randint(0, 32))
        else:
            code = rng.choice(KNOWN_OPTION_CODES) if kind < 0.6 else rng.randrange(0x10000)
            option = dns.edns.GenericOption(code, rng.randbytes(rng.randint(0, 48)))
        data = option.to_wire()
        assert data is not None
        options += struct.pack("!HH", option.otype, len(data)) + data
    version = 0 if rng.random() < 0.8 else rng.randrange(256)
    ext_rcode = 0 if rng.random() < 0.95 else rng.randrange(256)
    ednsflags = rng.randrange(0x10000) if rng.random() < 0.3 else rng.choice([0, 0x8000])
    payload = rng.choice([0, 512, 1232, 4096, rng.randrange(0x10000)])
    return (
        b"\x00"
        + struct.pack("!HHBBHH", 41, payload, ext_rcode, version, ednsflags, len(options))
        + options
    )


def random_query(rng: random.Random) -> bytes:
    """A well-formed message with random header bits, question and EDNS, built by hand."""
    # Random flags and reserved bits; QR stays 0 and the opcode is mostly QUERY, so most
    # of them are queries whose question gets looked at.
    flags = rng.randrange(0x10000) & 0x7FF0
    if rng.random() < 0.9:
        flags &= ~0x7800
    qtype = rng.choice(QTYPES) if rng.random() < 0.7 else rng.randrange(0x10000)
    qclass = rng.choice(QCLASSES) if rng.random() < 0.9 else rng.randrange(0x10000)
    opt = random_opt(rng) if rng.random() < 0.6 else b""
    header = struct.pack("!HHHHHH", rng.randrange(0x10000), flags, 1, 0, 0, 1 if opt else 0)
    return header + random_name(rng) + struct.pack("!HH", qtype, qclass) + opt


def mutate(packet: bytes, rng: random.Random) -> bytes:
    """One mutation a broken or hostile sender makes."""
    size = len(packet)
    position = rng.randrange(size + 1)
    kind = rng.randrange(7)
    if kind == 0 and size:  # flip one bit
        position %= size
        return (
            packet[:position]
            + bytes([packet[position] ^ (1 << rng.randrange(8))])
            + packet[position + 1 :]
        )
    if kind == 1:  # truncate
        return packet[:position]
    if kind == 2 and size >= 12:  # forge QDCOUNT / ANCOUNT / NSCOUNT / ARCOUNT
        offset = 4 + 2 * rng.randrange(4)
        count = rng.randrange(4) if rng.random() < 0.7 else rng.randrange(0x10000)
        return packet[:offset] + struct.pack("!H", count) + packet[offset + 2 :]
    if kind == 3:  # insert bytes
        return packet[:position] + rng.randbytes(rng.randint(1, 16)) + packet[position:]
    if kind == 4:  # delete bytes
        return packet[:position] + packet[position + rng.randint(1, 16) :]
    if kind == 5:  # splice: the head of this packet and the tail of another
        other = random_query(rng)
        return packet[:position] + other[rng.randrange(len(other) + 1) :]
    if size:  # a length octet or pointer start: 0xC0 points, 0x40 and 0x80 are bad label types
        position %= size
        value = rng.choice([0, 1, 63, 64, 0x80, 0xC0, 0xC0 | 12, 255])
        return packet[:position] + bytes([value]) + packet[position + 1 :]
    return packet


def check_random_bytes(data: bytes, max_udp: int | None) -> None:
    check_answer(data, max_udp)
    if len(data) >= HEADER_SIZE:
        # The same bytes behind a plain query header (QR=0, opcode QUERY), so the parser and
        # not the header check has to deal with them.
        flags = struct.unpack_from("!H", data, 2)[0] & 0x07FF
        check_answer(data[:2] + struct.pack("!H", flags) + data[4:], max_udp)


def check_query(rng: random.Random, max_udp: int | None) -> None:
    packet = random_query(rng)
    note(f"query: {packet.hex()}")
    check_answer(packet, max_udp)


def check_mutated(rng: random.Random, max_udp: int | None) -> None:
    packet = random_query(rng)
    for _ in range(rng.randint(1, 4)):
        packet = mutate(packet, rng)
    note(f"mutated query: {packet.hex()}")
    check_answer(packet, max_udp)


RANDOMS = st.randoms(use_true_random=True)
PROPERTIES: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any, int | None], None]]] = {
    "random_bytes": (st.binary(max_size=600), check_random_bytes),
    "queries": (RANDOMS, check_query),
    "mutated": (RANDOMS, check_mutated),
}


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(QUICK_EXAMPLES))
def test_answer_survives_hostile_input(kind: str) -> None:
    examples = QUICK_EXAMPLES[kind]
    assert run_property(kind, examples) >= examples


@pytest.mark.slow
@pytest.mark.deep
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", list(LENGTH_EXAMPLES))
def test_answer_survives_hostile_input_at_length(kind: str) -> None:
    examples = LENGTH_EXAMPLES[kind]
    ran = run_property(kind, examples)
    print(f"DNS fuzz: {kind}: {ran} examples")
    assert ran >= examples


def test_the_full_run_tries_over_100k_inputs_and_the_deep_run_a_million() -> None:
    assert sum(SLOW_EXAMPLES.values()) >= 100_000
    assert sum(DEEP_EXAMPLES.values()) >= 1_000_000


def test_the_checks_catch_a_wrong_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property can fail: a reply with another ID, or a SERVFAIL, is caught."""
    import certok.dnszone.answer as answer_module

    message = dns.message.make_query(f"{LABEL}.{CERTOK_ZONE}", "TXT")
    message.id = 0x1234
    query = message.to_wire()
    check_answer(query, 512)

    def wrong_id(*args: object, **kwargs: object) -> bytes:
        return b"\x00\x00" + dns.message.make_query("x.", "A").to_wire()[2:]

    monkeypatch.setattr(answer_module, "fast_answer", wrong_id)
    with pytest.raises(AssertionError):
        check_answer(query, 512)
    monkeypatch.undo()

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(answer_module, "fast_answer", explode)
    with pytest.raises(AssertionError, match="SERVFAIL"):
        check_answer(query, 512)


def test_long_runs_go_in_chunks_and_run_every_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHUNK_EXAMPLES", 150)
    assert run_property("queries", 400) == 400
