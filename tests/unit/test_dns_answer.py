"""answer(): every rule of certok's authoritative zone, queried and parsed with dnspython."""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certok.dnszone import answer as answer_module
from certok.dnszone import wire
from certok.dnszone.answer import (
    ADVERTISED_UDP_PAYLOAD,
    ZoneConfig,
    answer,
    fast_answer,
    general_answer,
)
from certok.dnszone.udp import RateDecision, ResponseRateLimiter
from certok.dnszone.zone_records import ZoneRecords
from certok.settings import Settings
from tests.kit.dns import CERTOK_ZONE

LABEL = "0123456789abcdef"
IDLE_LABEL = "fedcba9876543210"  # allocated, nothing presented
TTL = 7
CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    nameservers=(f"ns1.{CERTOK_ZONE}", "ns.elsewhere.test"),
    nameserver_addresses=("127.0.0.53", "fd00::53"),
    ttl=TTL,
)
VALUES = ("value-one-" + "a" * 33, "value-two-" + "b" * 33)
RECORDS = ZoneRecords.build(
    [LABEL, IDLE_LABEL],
    [(LABEL, VALUES[0]), (LABEL, VALUES[1]), ("leaf.branch", "deep")],
    serial=20260101,
)
SOA = dns.rdatatype.SOA


def ask(
    qname: str,
    qtype: str | int = "TXT",
    *,
    config: ZoneConfig = CONFIG,
    records: ZoneRecords = RECORDS,
    max_udp: int | None = ADVERTISED_UDP_PAYLOAD,
    **query_options: object,
) -> tuple[bytes, dns.message.Message]:
    query = dns.message.make_query(qname, qtype, **query_options)  # type: ignore[arg-type]
    query_wire = query.to_wire()
    reply = answer(query_wire, config, records, max_udp=max_udp)
    assert reply is not None
    return reply, dns.message.from_wire(reply)


def name(relative: str) -> str:
    return f"{relative}.{CERTOK_ZONE}"


def assert_negative(reply: dns.message.Message, rcode: dns.rcode.Rcode) -> None:
    assert reply.rcode() == rcode
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    assert len(reply.authority) == 1
    soa_rrset = reply.authority[0]
    assert soa_rrset.rdtype == SOA
    assert soa_rrset.name == dns.name.from_text(CERTOK_ZONE)
    assert soa_rrset.ttl == TTL
    assert soa_rrset[0].minimum == TTL


# --- positive answers ---------------------------------------------------------------------------


def test_txt_at_a_label_returns_every_presented_value() -> None:
    _, reply = ask(name(LABEL), "TXT")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.RA
    (rrset,) = reply.answer
    assert rrset.ttl == TTL
    assert sorted(b"".join(r.strings).decode() for r in rrset) == sorted(VALUES)
    assert all(len(r.strings) == 1 for r in rrset)
    assert reply.authority == []


def test_txt_values_are_capped_to_bound_amplification() -> None:
    values = [f"value-{i:02d}" for i in range(12)]
    records = ZoneRecords.build([LABEL], [(LABEL, v) for v in values])
    config = ZoneConfig(CERTOK_ZONE, (f"ns1.{CERTOK_ZONE}",), ("127.0.0.1",), TTL, max_txt_values=3)
    _, reply = ask(name(LABEL), "TXT", config=config, records=records)
    served = [b"".join(r.strings).decode() for r in reply.answer[0]]
    assert served == values[:3]  # the order given (newest first from the database)


def test_a_value_longer_than_one_txt_string_is_split_into_several_strings() -> None:
    records = ZoneRecords.build([LABEL], [(LABEL, "x" * 300)])
    _, reply = ask(name(LABEL), "TXT", records=records, max_udp=None)
    (rdata,) = reply.answer[0]
    assert [len(s) for s in rdata.strings] == [255, 45]


def test_two_txt_values_keep_the_reply_within_four_times_the_query() -> None:
    query = dns.message.make_query(name(LABEL), "TXT", use_edns=False)
    query_wire = query.to_wire()
    reply = answer(query_wire, CONFIG, RECORDS, max_udp=ADVERTISED_UDP_PAYLOAD)
    assert reply is not None
    assert len(reply) <= 4 * len(query_wire)


def test_case_of_the_question_is_copied_byte_for_byte() -> None:
    mixed = "0123456789AbCdEf.AcMe.sVc.TeSt."
    query = dns.message.make_query(mixed, "TXT")
    query_wire = query.to_wire()
    reply_wire = answer(query_wire, CONFIG, RECORDS, max_udp=ADVERTISED_UDP_PAYLOAD)
    assert reply_wire is not None
    question_length = len(dns.name.from_text(mixed).to_wire()) + 4
    assert reply_wire[12 : 12 + question_length] == query_wire[12 : 12 + question_length]
    reply = dns.message.from_wire(reply_wire)
    assert reply.answer[0].name.to_text() == mixed  # owner keeps the case too


def test_apex_soa() -> None:
    _, reply = ask(CERTOK_ZONE, "SOA")
    (rrset,) = reply.answer
    soa = rrset[0]
    assert soa.mname == dns.name.from_text(f"ns1.{CERTOK_ZONE}")
    assert soa.rname == dns.name.from_text(f"hostmaster.{CERTOK_ZONE}")
    assert soa.serial == 20260101
    assert soa.minimum == TTL
    assert rrset.ttl == TTL
    assert soa.refresh > soa.retry > 0
    assert soa.expire > soa.refresh


def test_apex_ns_with_glue_only_for_names_inside_the_zone() -> None:
    _, reply = ask(CERTOK_ZONE, "NS")
    assert reply.rcode() == dns.rcode.NOERROR
    (rrset,) = reply.answer
    assert {r.target.to_text() for r in rrset} == {f"ns1.{CERTOK_ZONE}.", "ns.elsewhere.test."}
    glue = {(r.name.to_text(), r.rdtype): [x.address for x in r] for r in reply.additional}
    assert glue == {
        (f"ns1.{CERTOK_ZONE}.", dns.rdatatype.A): ["127.0.0.53"],
        (f"ns1.{CERTOK_ZONE}.", dns.rdatatype.AAAA): ["fd00::53"],
    }


@pytest.mark.parametrize(("qtype", "address"), [("A", "127.0.0.53"), ("AAAA", "fd00::53")])
def test_address_of_a_nameserver_inside_the_zone(qtype: str, address: str) -> None:
    _, reply = ask(f"NS1.{CERTOK_ZONE}", qtype)
    assert reply.flags & dns.flags.AA
    assert [r.address for r in reply.answer[0]] == [address]


def test_nameserver_without_an_address_of_that_family_is_nodata() -> None:
    config = ZoneConfig(CERTOK_ZONE, (f"ns1.{CERTOK_ZONE}",), ("127.0.0.53",), TTL)
    _, reply = ask(f"ns1.{CERTOK_ZONE}", "AAAA", config=config)
    assert_negative(reply, dns.rcode.NOERROR)


# --- negative answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "qtype"),
    [
        (LABEL, "A"),  # a label with TXT, asked for another type
        (LABEL, "AAAA"),
        (IDLE_LABEL, "TXT"),  # allocated, nothing presented right now
        (IDLE_LABEL, "A"),
        ("branch", "A"),  # empty non-terminal (QNAME minimisation asks these)
        ("branch", "TXT"),
        (LABEL, 65280),  # unknown (private-use) type
        (LABEL, "RRSIG"),
    ],
)
def test_known_names_without_that_data_are_nodata_with_soa(relative: str, qtype: str) -> None:
    _, reply = ask(name(relative), qtype)
    assert_negative(reply, dns.rcode.NOERROR)


def test_unknown_type_at_the_apex_is_nodata() -> None:
    _, reply = ask(CERTOK_ZONE, 65280)
    assert_negative(reply, dns.rcode.NOERROR)


@pytest.mark.parametrize(
    "relative", ["0000000000000000", f"sub.{LABEL}", "leaf.other", "x.ns1", "branchx"]
)
def test_names_that_do_not_exist_are_nxdomain_with_soa(relative: str) -> None:
    _, reply = ask(name(relative), "TXT")
    assert_negative(reply, dns.rcode.NXDOMAIN)


@pytest.mark.parametrize("qname", ["example.com", "svc.test", "xacme.svc.test", "."])
def test_names_outside_the_zone_are_refused(qname: str) -> None:
    _, reply = ask(qname, "TXT")
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA
    assert reply.answer == reply.authority == []


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(qtype: str) -> None:
    _, reply = ask(CERTOK_ZONE, qtype, max_udp=None)
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == []


@pytest.mark.parametrize("rdclass", ["CH", "HS", "ANY"])
def test_classes_other_than_in_are_refused(rdclass: str) -> None:
    _, reply = ask(name(LABEL), "TXT", rdclass=rdclass)
    assert reply.rcode() == dns.rcode.REFUSED


def test_a_new_snapshot_is_answered_at_once() -> None:
    before = ZoneRecords.build([LABEL], [])
    after = ZoneRecords.build([LABEL], [(LABEL, "fresh")])
    _, reply = ask(name(LABEL), records=before)
    assert_negative(reply, dns.rcode.NOERROR)
    _, reply = ask(name(LABEL), records=after)
    assert [r.strings for r in reply.answer[0]] == [(b"fresh",)]
    _, reply = ask(name(LABEL), records=before)
    assert_negative(reply, dns.rcode.NOERROR)


def test_names_that_are_not_plain_relative_names_are_ignored() -> None:
    records = ZoneRecords.build(["bad label", "", LABEL], [("..", "x"), (LABEL, "ok")])
    _, reply = ask(name(LABEL), records=records)
    assert [r.strings for r in reply.answer[0]] == [(b"ok",)]


# --- ANY (RFC 8482) -----------------------------------------------------------------------------


def test_any_at_the_apex_gets_one_rrset() -> None:
    _, reply = ask(CERTOK_ZONE, "ANY")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.rdtype for r in reply.answer] == [SOA]


def test_any_at_a_label_gets_its_txt_only() -> None:
    _, reply = ask(name(LABEL), "ANY")
    assert [r.rdtype for r in reply.answer] == [dns.rdatatype.TXT]


def test_any_at_an_idle_label_is_nodata() -> None:
    _, reply = ask(name(IDLE_LABEL), "ANY")
    assert_negative(reply, dns.rcode.NOERROR)


# --- header and EDNS ----------------------------------------------------------------------------


def test_rd_and_cd_are_copied_and_ra_never_set() -> None:
    for flags in (0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD):
        query = dns.message.make_query(name(LABEL), "TXT", flags=flags)
        query.id = 4242
        reply_wire = answer(query.to_wire(), CONFIG, RECORDS, max_udp=512)
        assert reply_wire is not None
        reply = dns.message.from_wire(reply_wire)
        assert reply.id == 4242
        assert reply.flags & (dns.flags.RD | dns.flags.CD) == flags
        assert not reply.flags & (dns.flags.RA | dns.flags.AD | dns.flags.TC)


def test_no_opt_in_the_reply_without_edns_in_the_query() -> None:
    _, reply = ask(name(LABEL), use_edns=False)
    assert reply.edns == -1


def test_edns_advertises_1232_and_echoes_do() -> None:
    _, reply = ask(name(LABEL), use_edns=0, payload=4096)
    assert reply.edns == 0
    assert reply.payload == 1232
    assert not reply.ednsflags & dns.flags.DO
    _, reply = ask(name(LABEL), use_edns=0, want_dnssec=True)
    assert reply.ednsflags & dns.flags.DO


def test_edns_options_are_ignored_and_not_echoed() -> None:
    options = [
        dns.edns.GenericOption(65001, b"unknown"),
        dns.edns.CookieOption(b"12345678", b""),
        dns.edns.NSIDOption(b""),
        dns.edns.ECSOption("192.0.2.0", 24),
    ]
    _, reply = ask(name(LABEL), use_edns=0, options=options)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.options == ()
    assert len(reply.answer[0]) == 2


def test_unknown_edns_version_is_badvers_with_version_0() -> None:
    _, reply = ask(name(LABEL), use_edns=1)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert reply.answer == []


def big_records(values: int = 8, size: int = 200) -> ZoneRecords:
    return ZoneRecords.build([LABEL], [(LABEL, f"{i}" * size) for i in range(values)])


def test_too_big_for_plain_udp_is_truncated_to_the_question() -> None:
    query = dns.message.make_query(name(LABEL.upper()), "TXT", use_edns=False)
    reply_wire = answer(query.to_wire(), CONFIG, big_records(), max_udp=ADVERTISED_UDP_PAYLOAD)
    assert reply_wire is not None
    assert len(reply_wire) <= 512
    reply = dns.message.from_wire(reply_wire)
    assert reply.flags & dns.flags.TC
    assert reply.flags & dns.flags.AA
    assert reply.question == query.question
    assert reply.question[0].name.to_text() == name(LABEL.upper()) + "."
    assert reply.answer == reply.authority == reply.additional == []


def test_the_requesters_edns_size_governs_truncation() -> None:
    records = big_records(values=4, size=150)  # about 700 bytes
    _, reply = ask(name(LABEL), use_edns=0, payload=600, records=records)
    assert reply.flags & dns.flags.TC
    assert reply.edns == 0  # the OPT stays in a truncated reply
    _, reply = ask(name(LABEL), use_edns=0, payload=1000, records=records)
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 4


def test_our_own_udp_limit_caps_the_requesters_size() -> None:
    _, reply = ask(name(LABEL), use_edns=0, payload=65000, records=big_records())
    assert reply.flags & dns.flags.TC


def test_tcp_is_never_truncated() -> None:
    wire_reply, reply = ask(name(LABEL), use_edns=False, records=big_records(), max_udp=None)
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 8
    assert len(wire_reply) > 1232


# --- malformed and unusual queries --------------------------------------------------------------


def raw_query(
    *, flags: int = 0x0100, qdcount: int = 1, question: bytes | None = None, tail: bytes = b""
) -> bytes:
    if question is None:
        question = dns.name.from_text(name(LABEL)).to_wire() + struct.pack("!HH", 16, 1)
    return struct.pack("!HHHHHH", 0xBEEF, flags, qdcount, 0, 0, 0) + question * qdcount + tail


def parse(reply: bytes | None) -> dns.message.Message:
    assert reply is not None
    return dns.message.from_wire(reply)


def test_responses_are_never_answered() -> None:
    assert answer(raw_query(flags=0x8100), CONFIG, RECORDS, max_udp=512) is None


def test_no_reply_without_a_header() -> None:
    for short in (b"", b"\x00", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00"):
        assert answer(short, CONFIG, RECORDS, max_udp=512) is None


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.IQUERY, 3])
def test_other_opcodes_are_notimp(opcode: int) -> None:
    reply = parse(answer(raw_query(flags=opcode << 11), CONFIG, RECORDS, max_udp=512))
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == opcode
    assert reply.id == 0xBEEF


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(qdcount: int) -> None:
    reply = parse(answer(raw_query(qdcount=qdcount), CONFIG, RECORDS, max_udp=512))
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.id == 0xBEEF


@pytest.mark.parametrize(
    "query",
    [
        raw_query(tail=b"\x00"),  # trailing junk
        raw_query(question=b"\x05abc"),  # name runs off the end
        raw_query(question=b"\x40" + b"a" * 64 + b"\x00\x00\x10\x00\x01"),  # bad label type
        struct.pack("!HHHHHH", 0xBEEF, 0, 1, 0, 0, 0),  # question missing
        struct.pack("!HHHHHH", 0xBEEF, 0, 1, 0, 0, 1) + raw_query()[12:],  # additional missing
    ],
)
def test_garbage_with_a_header_is_formerr(query: bytes) -> None:
    reply = parse(answer(query, CONFIG, RECORDS, max_udp=512))
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.id == 0xBEEF
    assert reply.flags & dns.flags.QR


def test_an_unexpected_error_becomes_servfail(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    # Both ways a reply is made: dnspython's, and the wire builder's on a cache miss.
    monkeypatch.setattr(answer_module, "_respond", explode)
    monkeypatch.setattr(answer_module.replybuild, "build_reply", explode)
    records = ZoneRecords.build([LABEL], [])  # a fresh snapshot: nothing cached yet
    reply = parse(answer(raw_query(), CONFIG, records, max_udp=512))
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.id == 0xBEEF


# --- config -------------------------------------------------------------------------------------


def test_config_from_settings() -> None:
    settings = Settings(
        dns_zone="Acme.Example.NET.",
        dns_nameserver_addresses=["192.0.2.1", "2001:db8::1"],
        dns_ttl=30,
        dns_max_txt_values=4,
    )
    config = ZoneConfig.from_settings(settings)
    assert config == ZoneConfig(
        zone="acme.example.net",
        nameservers=("ns1.acme.example.net",),
        nameserver_addresses=("192.0.2.1", "2001:db8::1"),
        ttl=30,
        max_txt_values=4,
    )


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ZoneConfig(CERTOK_ZONE, (), ("127.0.0.1",), TTL)
    with pytest.raises(ValueError):
        ZoneConfig(CERTOK_ZONE, (f"ns1.{CERTOK_ZONE}",), ("not-an-address",), TTL)
    with pytest.raises(ValueError):
        ZoneConfig("", (f"ns1.{CERTOK_ZONE}",), (), TTL)


def test_records_build_normalises_names_and_drops_duplicate_values() -> None:
    records = ZoneRecords.build(["ABC."], [("ABC", "v"), ("abc.", "v"), ("abc", "w")], serial=1)
    assert records.labels == frozenset({"abc"})
    assert dict(records.txt) == {"abc": ("v", "w")}
    assert records == ZoneRecords.build(["abc"], [("abc", "v"), ("abc", "w")], serial=2)


# --- wire helpers -------------------------------------------------------------------------------


def test_truncate_reply_keeps_header_question_and_opt() -> None:
    query = dns.message.make_query(name(LABEL), "TXT", use_edns=0, want_dnssec=True)
    full = answer(query.to_wire(), CONFIG, RECORDS, max_udp=None)
    assert full is not None
    truncated = dns.message.from_wire(wire.truncate_reply(full))
    original = dns.message.from_wire(full)
    assert truncated.id == original.id
    assert truncated.flags == original.flags | dns.flags.TC
    assert truncated.question == original.question
    assert truncated.edns == 0 and truncated.ednsflags & dns.flags.DO
    assert truncated.answer == []


# --- the fast path gives the general path's bytes -----------------------------------------------

QTYPES = ["TXT", "A", "AAAA", "NS", "SOA", "ANY", "MX", "CAA", "RRSIG", 65280, 0, "TKEY"]
OWNERS = [LABEL, IDLE_LABEL, "branch", "leaf.branch", "ns1", "hostmaster", "x.ns1", ""]


def random_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def random_label(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789abcdefxyz-") for _ in range(rng.randint(1, 20)))


def random_owner(rng: random.Random) -> str:
    """A name inside or outside the zone: existing, empty non-terminal, missing, tricky."""
    pick = rng.random()
    if pick < 0.5:
        owner = rng.choice(OWNERS)
        return f"{owner}.{CERTOK_ZONE}." if owner else f"{CERTOK_ZONE}."
    if pick < 0.8:  # missing names of many lengths, sometimes below existing ones
        below = rng.choice(["", "", f"{LABEL}.", "branch.", "ns1.", "hostmaster."])
        return f"{random_label(rng)}.{below}{CERTOK_ZONE}."
    if pick < 0.9:
        return f"{random_label(rng)}.example.{rng.choice(['com', 'test'])}."
    # Outside the zone, though some end with the zone's wire bytes ("\\004" is a length octet).
    return rng.choice(
        [
            "svc.test.",
            "test.",
            ".",
            f"x{CERTOK_ZONE}.",
            f"{CERTOK_ZONE}.evil.test.",
            "a\\004acme.svc.test.",
        ]
    )


def random_common_query(rng: random.Random) -> bytes:
    qname = random_case(random_owner(rng), rng)
    use_edns: int | bool = rng.choice([False, 0])
    options: list[dns.edns.Option] = []
    if use_edns is not False and rng.random() < 0.5:
        options.append(dns.edns.CookieOption(rng.randbytes(8), rng.randbytes(rng.choice([0, 16]))))
    if use_edns is not False and rng.random() < 0.3:
        options.append(
            dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(rng.randrange(20)))
        )
    query = dns.message.make_query(
        qname,
        rng.choice(QTYPES),
        use_edns=use_edns,
        want_dnssec=use_edns is not False and rng.random() < 0.5,
        payload=rng.choice([512, 1232, 4096, 400, 700]),
        options=options or None,
        flags=rng.choice([0, dns.flags.RD, dns.flags.CD | dns.flags.RD, dns.flags.AD]),
    )
    query.id = rng.randrange(65536)
    return query.to_wire()


def test_fast_and_general_paths_give_identical_bytes() -> None:
    rng = random.Random(20260101)
    records_variants = [RECORDS, big_records(values=3, size=150)]
    handled = 0
    for _ in range(3000):
        query_wire = random_common_query(rng)
        records = rng.choice(records_variants)
        max_udp = rng.choice([ADVERTISED_UDP_PAYLOAD, None, 512])
        fast = fast_answer(query_wire, CONFIG, records, max_udp=max_udp)
        general = general_answer(query_wire, CONFIG, records, max_udp=max_udp)
        assert fast is not None, dns.message.from_wire(query_wire)
        assert fast == general, dns.message.from_wire(query_wire)
        handled += 1
    assert handled == 3000


def test_random_names_share_cached_replies_instead_of_growing_the_cache() -> None:
    records = ZoneRecords.build([LABEL], [(LABEL, "v")])
    rng = random.Random(7)
    for _ in range(500):
        for qname in (f"{random_label(rng)}.{CERTOK_ZONE}", f"{random_label(rng)}.example.com"):
            query = dns.message.make_query(qname, "TXT")
            assert fast_answer(query.to_wire(), CONFIG, records, max_udp=512) is not None
    index = answer_module._index_for(CONFIG, records)
    assert len(index.replies) == 0
    assert len(index.shapes) <= 2 * 40  # one per question length and kind


@pytest.mark.parametrize(
    "names",
    [
        # same wire length: one outside the zone but ending in its bytes, one missing inside
        ("a\\004acme.svc.test.", f"a.{CERTOK_ZONE}."),
        (f"a.{CERTOK_ZONE}.", "a\\004acme.svc.test."),
        # below the SOA's own names the SOA compresses differently than below other names
        (f"abcde.{CERTOK_ZONE}.", f"x.ns1.{CERTOK_ZONE}."),
        (f"x.ns1.{CERTOK_ZONE}.", f"abcde.{CERTOK_ZONE}."),
    ],
)
def test_look_alike_names_do_not_share_replies(names: tuple[str, str]) -> None:
    first, second = (dns.name.from_text(n) for n in names)
    assert len(first.to_wire()) == len(second.to_wire())
    records = ZoneRecords.build([LABEL], [])  # a fresh snapshot: nothing cached yet
    for qname in names:
        query_wire = dns.message.make_query(qname, "TXT").to_wire()
        fast = fast_answer(query_wire, CONFIG, records, max_udp=512)
        assert fast == general_answer(query_wire, CONFIG, records, max_udp=512)


def test_the_fast_path_leaves_uncommon_queries_to_the_general_path() -> None:
    uncommon = [
        dns.message.make_query(name(LABEL), "TXT", use_edns=1).to_wire(),
        dns.message.make_query(name(LABEL), "TXT", rdclass="CH").to_wire(),
        dns.message.make_query(
            name(LABEL), "TXT", use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24)]
        ).to_wire(),
        raw_query(qdcount=2),
        raw_query(tail=b"\x00"),
        raw_query(flags=0x8100),
    ]
    for query_wire in uncommon:
        assert fast_answer(query_wire, CONFIG, RECORDS, max_udp=512) is None


# --- fuzzing ------------------------------------------------------------------------------------


def check_reply(query_wire: bytes, reply: bytes | None) -> None:
    if reply is None:
        return
    parsed = dns.message.from_wire(reply)
    assert parsed.flags & dns.flags.QR
    assert parsed.id == int.from_bytes(query_wire[:2], "big")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    reply = answer(data, CONFIG, RECORDS, max_udp=ADVERTISED_UDP_PAYLOAD)
    check_reply(data, reply)
    if reply is not None:
        assert len(data) >= 12


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 400),
    max_udp=st.sampled_from([512, ADVERTISED_UDP_PAYLOAD, None]),
)
def test_mutated_queries_never_raise(
    seed: int, edits: list[tuple[int, int]], cut: int, max_udp: int | None
) -> None:
    query = bytearray(random_common_query(random.Random(seed)))
    for position, value in edits:
        if position < len(query):
            query[position] = value
    mutated = bytes(query[: max(cut, 12)])
    reply = answer(mutated, CONFIG, RECORDS, max_udp=max_udp)
    check_reply(mutated, reply)
    if reply is not None and max_udp is not None:
        assert len(reply) <= max(max_udp, 512)
    fast = fast_answer(mutated, CONFIG, RECORDS, max_udp=max_udp)
    if fast is not None:
        assert fast == general_answer(mutated, CONFIG, RECORDS, max_udp=max_udp)


# --- UDP response rate limiting (pure logic; the server applies it) -----------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_per_network_with_slip() -> None:
    clock = FakeClock()
    limiter = ResponseRateLimiter(per_second=5, slip=2, clock=clock)
    decisions = [limiter.decide("192.0.2.1") for _ in range(5)]
    assert decisions == [RateDecision.SEND] * 5
    # The same /24 shares the budget; over it, every second response slips out truncated.
    over = [limiter.decide(f"192.0.2.{i}") for i in range(10, 16)]
    assert over == [RateDecision.DROP, RateDecision.TRUNCATE] * 3
    # Another network has its own budget.
    assert limiter.decide("192.0.3.1") is RateDecision.SEND
    # IPv6 is grouped by /64.
    for _ in range(5):
        assert limiter.decide("2001:db8::1") is RateDecision.SEND
    assert limiter.decide("2001:db8::ffff:1") is RateDecision.DROP
    assert limiter.decide("2001:db8:0:1::1") is RateDecision.SEND
    # A new second refills the budget.
    clock.now += 1
    assert limiter.decide("192.0.2.1") is RateDecision.SEND


def test_fixed_host_addresses_are_served() -> None:
    import dns.message
    import dns.rcode
    import dns.rdatatype

    from certok.dnszone.answer import ZoneConfig, answer
    from certok.dnszone.zone_records import ZoneRecords

    config = ZoneConfig(
        zone="acme.svc.test",
        nameservers=("ns1.acme.svc.test",),
        nameserver_addresses=("127.0.0.1",),
        ttl=0,
        host_addresses=(("svc443", ("127.0.0.2", "::2")), ("api.eu", ("127.0.0.3",))),
    )
    records = ZoneRecords.build([], [])

    def ask(name: str, rdtype: str) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        reply = answer(query.to_wire(), config, records, max_udp=1232)
        assert reply is not None
        return dns.message.from_wire(reply)

    a = ask("SVC443.acme.svc.test", "A")
    assert a.rcode() == dns.rcode.NOERROR
    assert [r.address for r in a.answer[0]] == ["127.0.0.2"]
    assert str(a.answer[0].name) == "SVC443.acme.svc.test."
    assert [r.address for r in ask("svc443.acme.svc.test", "AAAA").answer[0]] == ["::2"]
    # the empty non-terminal above api.eu is NODATA, not NXDOMAIN
    eu = ask("eu.acme.svc.test", "A")
    assert eu.rcode() == dns.rcode.NOERROR and not eu.answer
    assert ask("nothere.acme.svc.test", "A").rcode() == dns.rcode.NXDOMAIN


# Nameservers inside the zone two and three labels below the apex, with glue: the names
# between them and the apex exist without data, like those above dns_hosts names.
NESTED_NS_CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    nameservers=(f"a.b.{CERTOK_ZONE}", f"ns.x.y.{CERTOK_ZONE}", "ns.elsewhere.test"),
    nameserver_addresses=("127.0.0.53", "fd00::53"),
    ttl=TTL,
)


@pytest.mark.parametrize(
    ("relative", "rcode"),
    [
        ("b", dns.rcode.NOERROR),  # empty non-terminal above a.b (RFC 8020: NODATA)
        ("y", dns.rcode.NOERROR),  # above ns.x.y, two levels up
        ("x.y", dns.rcode.NOERROR),
        ("c.b", dns.rcode.NXDOMAIN),  # beside the nameserver: nothing there
        ("sub.a.b", dns.rcode.NXDOMAIN),  # below it
        ("z.x.y", dns.rcode.NXDOMAIN),
    ],
)
@pytest.mark.parametrize("qtype", ["A", "TXT", "NS"])
@pytest.mark.parametrize("max_udp", [512, None])
def test_names_above_an_in_zone_nameserver_are_empty_non_terminals_on_both_paths(
    relative: str, rcode: dns.rcode.Rcode, qtype: str, max_udp: int | None
) -> None:
    query_wire = dns.message.make_query(name(relative).upper(), qtype).to_wire()
    records = ZoneRecords.build([LABEL], [])  # a fresh snapshot: the fast path misses first
    general = general_answer(query_wire, NESTED_NS_CONFIG, records, max_udp=max_udp)
    assert general is not None
    assert_negative(dns.message.from_wire(general), rcode)
    for _ in ("miss", "hit"):
        fast = fast_answer(query_wire, NESTED_NS_CONFIG, records, max_udp=max_udp)
        assert fast == general


def test_a_zero_octet_inside_a_label_does_not_fool_the_fast_path() -> None:
    """The fast path takes the first zero octet as the name's end only to look up its cache."""
    zone_wire = dns.name.from_text(CERTOK_ZONE).to_wire()
    for label in (b"\x01a\x00", b"A\x00", b"\x00", b"0123456789ABCDE\x00"):
        answer(raw_query(), CONFIG, RECORDS, max_udp=512)  # something cached meanwhile
        question = bytes([len(label)]) + label + zone_wire + struct.pack("!HH", 16, 1)
        query = raw_query(question=question)
        reply = answer(query, CONFIG, RECORDS, max_udp=512)
        assert reply == general_answer(query, CONFIG, RECORDS, max_udp=512)
        assert parse(reply).rcode() == dns.rcode.NXDOMAIN
        fast = fast_answer(query, CONFIG, RECORDS, max_udp=512)
        assert fast is None or fast == reply
