"""The lean CNAME reader (certok/prechecks/cname_wire.py) against dnspython's reading.

Replies are built with dnspython, as a resolver would send them (name compression included);
what the lean reader returns must be what delegation.py gets from dnspython for the same
bytes, and every reply it cannot read the same way must come back as None (dnspython's turn).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rrset
import pytest

from certok.prechecks.cname_wire import (
    ResolverSilent,
    cname_query,
    lookup_aliases,
    read_aliases,
)
from tests.kit.ports import free_port

OWNER = "_acme-challenge.www.customer.test"
QUERY_ID = 0x4A7B
ANSWERED = [(OWNER, "t.acme.test")]


def query() -> bytes:
    return cname_query(OWNER, QUERY_ID)


def reply_to(
    wire: bytes,
    cnames: Sequence[tuple[str, str]] = (),
    *,
    rcode: int = dns.rcode.NOERROR,
    edit: Callable[[dns.message.Message], None] | None = None,
) -> bytes:
    """A resolver's reply to ``wire`` with these CNAME records in its answer section."""
    message = dns.message.make_response(dns.message.from_wire(wire))
    message.flags |= dns.flags.RA
    message.set_rcode(rcode)
    for owner, target in cnames:
        message.answer.append(dns.rrset.from_text(owner + ".", 60, "IN", "CNAME", target + "."))
    if edit is not None:
        edit(message)
    return message.to_wire()


def dnspython_aliases(reply: bytes) -> dict[str, str]:
    """What delegation.py's dnspython path makes of the same reply."""
    aliases: dict[str, str] = {}
    for rrset in dns.message.from_wire(reply).answer:
        if rrset.rdtype == dns.rdatatype.CNAME and len(rrset) > 0:
            aliases[rrset.name.to_text().rstrip(".").lower()] = (
                rrset[0].target.to_text().rstrip(".").lower()
            )
    return aliases


def test_the_query_is_what_dnspythons_resolver_would_send() -> None:
    parsed = dns.message.from_wire(query())
    assert parsed.id == QUERY_ID
    assert parsed.flags & dns.flags.RD and not parsed.flags & dns.flags.QR
    assert [(q.name.to_text(), q.rdtype) for q in parsed.question] == [
        (OWNER + ".", dns.rdatatype.CNAME)
    ]
    assert parsed.edns == 0 and parsed.payload == 1232


@pytest.mark.parametrize(
    "cnames",
    [
        [],
        [(OWNER, "0123456789abcdef.acme.certok.test")],
        [(OWNER.upper(), "0123456789ABCDEF.Acme.Certok.Test")],
        [(OWNER, "hop.elsewhere.test"), ("hop.elsewhere.test", "x1.acme.certok.test")],
        [(OWNER, "a.test"), ("a.test", "b.test"), ("b.test", OWNER)],
        [(OWNER, "first.test"), (OWNER, "second.test")],  # two at one owner: the last counts
        [("unrelated.test", "other.test")],
    ],
)
@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.NXDOMAIN])
def test_answers_read_as_dnspython_reads_them(cnames: list[tuple[str, str]], rcode: int) -> None:
    reply = reply_to(query(), cnames, rcode=rcode)
    found = read_aliases(reply, query())
    assert found is not None
    assert found == dnspython_aliases(reply)
    assert found == {owner.lower(): target.lower() for owner, target in cnames}


def test_records_after_the_answer_are_skipped() -> None:
    def authority_and_extra(message: dns.message.Message) -> None:
        message.authority.append(
            dns.rrset.from_text("customer.test.", 60, "IN", "SOA", "ns. host. 1 2 3 4 5")
        )
        message.additional.append(
            dns.rrset.from_text("ns.customer.test.", 60, "IN", "A", "192.0.2.1")
        )

    reply = reply_to(query(), [(OWNER, "t.acme.test")], edit=authority_and_extra)
    assert read_aliases(reply, query()) == {OWNER: "t.acme.test"}


def _with_header(reply: bytes, *, flags: int | None = None, query_id: int | None = None) -> bytes:
    old_id, old_flags = struct.unpack_from("!HH", reply)
    head = struct.pack(
        "!HH", old_id if query_id is None else query_id, old_flags if flags is None else flags
    )
    return head + reply[4:]


def _flags(reply: bytes) -> int:
    return int(struct.unpack_from("!H", reply, 2)[0])


def _with_flag(flag: int) -> bytes:
    reply = reply_to(query())
    return _with_header(reply, flags=_flags(reply) | flag)


def _to_another_question() -> bytes:
    return reply_to(cname_query("_acme-challenge.other.test", QUERY_ID), ANSWERED)


@pytest.mark.parametrize(
    ("why", "make"),
    [
        ("SERVFAIL", lambda: reply_to(query(), rcode=dns.rcode.SERVFAIL)),
        ("REFUSED", lambda: reply_to(query(), rcode=dns.rcode.REFUSED)),
        ("truncated", lambda: _with_flag(0x0200)),
        ("not a response", lambda: _with_header(reply_to(query(), ANSWERED), flags=0x0100)),
        ("another id", lambda: _with_header(reply_to(query(), ANSWERED), query_id=QUERY_ID ^ 1)),
        ("another question", _to_another_question),
        ("another opcode", lambda: _with_flag(0x2000)),
        ("BADVERS", lambda: reply_to(query(), rcode=dns.rcode.BADVERS)),
        ("cut short", lambda: reply_to(query(), ANSWERED)[:-5]),
        ("header only", lambda: reply_to(query(), ANSWERED)[:12]),
        ("empty", lambda: b""),
    ],
)  # fmt: skip
def test_replies_it_cannot_read_the_same_way_go_to_dnspython(
    why: str, make: Callable[[], bytes]
) -> None:
    assert read_aliases(make(), query()) is None, why


def test_a_name_dnspython_would_escape_goes_to_dnspython() -> None:
    odd = dns.name.Name([b"_acme-challenge", b"we ird", b"test", b""])
    reply = reply_to(query(), edit=lambda m: m.answer.append(
        dns.rrset.from_text(odd, 60, "IN", "CNAME", "t.acme.test.")))  # fmt: skip
    assert read_aliases(reply, query()) is None
    control = dns.rdtypes.ANY.CNAME.CNAME(
        dns.rdataclass.IN, dns.rdatatype.CNAME, dns.name.Name([b"t\x07", b"test", b""])
    )
    reply = reply_to(query(), edit=lambda m: m.answer.append(
        dns.rrset.from_rdata(OWNER + ".", 60, control)))  # fmt: skip
    assert read_aliases(reply, query()) is None


def _answer_with_name_at(reply_head: bytes, name_wire: bytes) -> bytes:
    """``reply_head`` (header with ANCOUNT 1 + question) and one CNAME whose target is
    ``name_wire``."""
    rdata = name_wire
    return reply_head + b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, len(rdata)) + rdata


def _head() -> bytes:
    q = query()
    question = q[12:-11]
    return struct.pack("!HHHHHH", QUERY_ID, 0x8180, 1, 1, 0, 0) + question


@pytest.mark.parametrize(
    "target",
    [
        b"\xc0\x30",  # a pointer to itself or further on
        b"\xc0\xff",  # past the end
        b"\x01a\xc0\x0c\x00",  # a pointer followed by junk inside the rdata
        b"\x41" + b"a" * 65 + b"\x00",  # a label of 65 octets (0x41 is not a length form)
        b"\x80\x00",  # an extended label type
        b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00",  # 256 octets in all
    ],
)
def test_malformed_names_go_to_dnspython(target: bytes) -> None:
    assert read_aliases(_answer_with_name_at(_head(), target), query()) is None


def test_a_pointer_loop_through_labels_ends() -> None:
    head = _head()
    # The target is the label "a" followed by a pointer back to that label: a -> a -> a ...
    at = len(head) + 2 + 10
    target = b"\x01a" + struct.pack("!H", 0xC000 | at)
    assert read_aliases(_answer_with_name_at(head, target), query()) is None


def test_compressed_targets_are_followed() -> None:
    head = _head()
    # Target "x.<the question's name>": the label x, then a pointer to the question (offset 12).
    reply = _answer_with_name_at(head, b"\x01x\xc0\x0c")
    assert read_aliases(reply, query()) == {OWNER: "x." + OWNER}
    assert read_aliases(reply, query()) == dnspython_aliases(reply)


def test_mutated_replies_never_raise() -> None:
    rng = random.Random(5)
    base = reply_to(query(), [(OWNER, "hop.test"), ("hop.test", "t.acme.test")])
    for _ in range(5000):
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        cut = bytes(mutated[: rng.randint(0, len(mutated))] if rng.random() < 0.2 else mutated)
        found = read_aliases(cut, query())
        assert found is None or isinstance(found, dict)


# --- over a socket ------------------------------------------------------------------------------


@contextmanager
def udp_server(
    answer: Callable[[bytes], list[bytes]], host: str = "127.0.0.1"
) -> Iterator[tuple[str, int]]:
    """A loopback UDP server sending ``answer(query)``'s datagrams back for each query."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            for datagram in answer(data):
                sock.sendto(datagram, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[:2]
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_lookup_skips_a_stray_datagram_and_takes_the_answer() -> None:
    def answer(wire: bytes) -> list[bytes]:
        real = reply_to(wire, [(OWNER, "t.acme.test")])
        stray = _with_header(real, query_id=(real[0] << 8 | real[1]) ^ 0xFFFF)
        return [stray, real]

    with udp_server(answer) as server:
        assert lookup_aliases(OWNER, server, timeout=2.0) == {OWNER: "t.acme.test"}


def test_lookup_over_ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with udp_server(lambda wire: [reply_to(wire, ANSWERED)], host="::1") as server:
        assert lookup_aliases(OWNER, server, timeout=2.0) == {OWNER: "t.acme.test"}


def test_lookup_gives_up_on_a_silent_server_within_its_timeout() -> None:
    asked: list[bytes] = []

    def silence(wire: bytes) -> list[bytes]:
        asked.append(wire)
        return []

    with udp_server(silence) as server:
        started = time.monotonic()
        with pytest.raises(ResolverSilent):
            lookup_aliases(OWNER, server, timeout=0.3)
        # Waited out the timeout once: one query, and not for much longer (a busy machine's
        # delays aside).
        assert 0.25 <= time.monotonic() - started < 5
    assert len(asked) == 1


def test_stray_datagrams_alone_count_as_silence() -> None:
    def strays(wire: bytes) -> list[bytes]:
        real = reply_to(wire, ANSWERED)
        return [_with_header(real, query_id=(real[0] << 8 | real[1]) ^ 0xFFFF)] * 3

    with udp_server(strays) as server, pytest.raises(ResolverSilent):
        lookup_aliases(OWNER, server, timeout=0.3)


def test_lookup_of_a_closed_port_is_none() -> None:
    closed = ("127.0.0.1", free_port())
    assert lookup_aliases(OWNER, closed, timeout=2.0) is None


def test_lookup_of_a_name_that_is_not_a_host_name_is_none() -> None:
    with udp_server(lambda wire: [reply_to(wire)]) as server:
        assert lookup_aliases("_acme-challenge.wé.test", server, timeout=1.0) is None
        assert lookup_aliases("a..test", server, timeout=1.0) is None
