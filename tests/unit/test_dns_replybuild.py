"""replybuild: cache-miss replies written in wire format are dnspython's, byte for byte.

The reference is always ``general_answer`` (dnspython parses the query and renders the reply).
Zones are generated: apex, nameservers inside and outside the zone (with glue of both families),
fixed host names (``dns_hosts``), labels with 0..n TXT values of varied lengths (longer than a
255-byte TXT string too); queries ask names that exist, do not exist, are empty non-terminals,
lie below the SOA's own names or outside the zone, in random 0x20 case, for many types, with
and without EDNS, with the DO, RD, CD and AD bits, over TCP and UDP of several sizes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from certok.dnszone import replybuild, static_zone, wire, zoneindex
from certok.dnszone.answer import (
    ADVERTISED_UDP_PAYLOAD,
    ZoneConfig,
    answer,
    fast_answer,
    general_answer,
)
from certok.dnszone.zone_records import ZoneRecords
from tests.kit.dns import CERTOK_ZONE

RD, CD, AD = int(dns.flags.RD), int(dns.flags.CD), int(dns.flags.AD)
# What the zone holds (static_zone.ANY_ORDER) and ANY, asked more often than other types.
SERVED_TYPES = [
    dns.rdatatype.TXT,
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.NS,
    dns.rdatatype.SOA,
    dns.rdatatype.ANY,
]
QTYPES = [
    dns.rdatatype.TXT,
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.NS,
    dns.rdatatype.SOA,
    dns.rdatatype.CNAME,
    dns.rdatatype.MX,
    dns.rdatatype.ANY,
    dns.rdatatype.AXFR,
    dns.rdatatype.IXFR,
    dns.rdatatype.RRSIG,
    dns.rdatatype.OPT,
    65280,  # private use
    0,
]

# --- queries as raw bytes ------------------------------------------------------------------------


def to_wire_name(text: str) -> bytes:
    return dns.name.from_text(text).to_wire()


def common_query(
    qname: bytes,
    qtype: int,
    *,
    query_id: int = 0x4242,
    flags: int = RD,
    edns: bool = True,
    payload: int = 1232,
    do: bool = False,
    cookie: bytes = b"",
) -> bytes:
    """A query of the common shape: one IN question, at most a plain version-0 OPT."""
    query = struct.pack("!HHHHHH", query_id, flags, 1, 0, 0, 1 if edns else 0)
    query += qname + struct.pack("!HH", qtype, 1)
    if edns:
        options = struct.pack("!HH", 10, len(cookie)) + cookie if cookie else b""
        ttl = 0x8000 if do else 0
        query += b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options
    return query


def built_reply(query: bytes, config: ZoneConfig, records: ZoneRecords) -> bytes | None:
    """The builder's canonical reply, with the query's ID and question put back."""
    peeked = wire.common_query_key(query)
    assert peeked is not None, "the generated query must have the common shape"
    key, question_end, _ = peeked
    assert wire.is_plain_name(key[0])
    built = replybuild.build_reply(zoneindex.index_for(config, records), key)
    return None if built is None else wire.splice_reply(built, query, question_end)


@contextmanager
def dnspython_messages_forbidden() -> Iterator[None]:
    """Any dnspython message parsed or rendered in this block fails the test."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dnspython message was parsed or rendered")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dns.message, "from_wire", forbidden)
        patch.setattr(dns.message.Message, "to_wire", forbidden)
        yield


def fresh(records: ZoneRecords) -> ZoneRecords:
    """The same data as a new snapshot: a new index with an empty reply cache (every query
    misses once)."""
    return ZoneRecords(labels=records.labels, txt=records.txt, serial=records.serial)


# --- generated zones -----------------------------------------------------------------------------

LABEL_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_"
labels = st.text(LABEL_ALPHABET, min_size=1, max_size=12)
relative_names = st.lists(labels, min_size=1, max_size=3).map(".".join)
addresses = st.ip_addresses().map(str)
# Mostly ASCII like ACME values, sometimes multi-byte UTF-8; up to 700 characters so values
# cross the 255-byte TXT string limit (and some land exactly on it).
txt_values = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", max_size=60),
    st.sampled_from(["", "x" * 255, "y" * 256, "z" * 510, "w" * 511]),
    st.text(max_size=700),
)


@st.composite
def zones(draw: st.DrawFn) -> tuple[ZoneConfig, ZoneRecords]:
    zone = draw(st.one_of(st.sampled_from(["acme.svc.test", "z", "a.b.c.example"]), relative_names))
    inside = relative_names.map(lambda relative: f"{relative}.{zone}")
    outside = st.sampled_from(["ns.elsewhere.test", f"ns.x{zone}", "ns.test", "hostmaster.test"])
    nameservers = draw(
        st.lists(st.one_of(inside, outside, st.just(f"hostmaster.{zone}")), min_size=1, max_size=3)
    )
    hosts = draw(
        st.lists(st.tuples(relative_names, st.lists(addresses, max_size=3).map(tuple)), max_size=3)
    )
    config = ZoneConfig(
        zone=zone,
        nameservers=tuple(nameservers),
        nameserver_addresses=tuple(draw(st.lists(addresses, max_size=3))),
        ttl=draw(st.one_of(st.sampled_from([0, 7, 300]), st.integers(0, 0x7FFFFFFF))),
        max_txt_values=draw(st.integers(1, 12)),
        host_addresses=tuple(hosts),
    )
    # Labels and TXT names overlap sometimes (a label with values), and may collide with the
    # nameservers' and hosts' names.
    label_names = draw(st.lists(relative_names, max_size=6))
    txt_names = draw(
        st.lists(st.one_of(relative_names, st.sampled_from(label_names or ["lone"])), max_size=5)
    )
    rows = [
        (name, value)
        for name in txt_names
        for value in draw(st.lists(txt_values, min_size=1, max_size=12))
    ]
    records = ZoneRecords.build(label_names, rows, serial=draw(st.integers(0, 0xFFFFFFFF)))
    return config, records


def names_to_ask(config: ZoneConfig, records: ZoneRecords) -> tuple[list[str], list[str]]:
    """(existing names, other names): empty non-terminals, missing ones (below existing ones
    and below the SOA's names too) and names outside the zone, some ending in the zone's bytes."""
    zone = config.zone
    relatives = sorted(records.labels | records.txt.keys())
    relatives += [host for host, _ in config.host_addresses]
    existing = [zone, *config.nameservers, *(f"{relative}.{zone}" for relative in relatives)]
    empty_non_terminals = [
        ancestor.to_text() for ancestor in ancestors_in_zone(existing, config.zone)
    ]
    missing = [f"nothere.{zone}", f"hostmaster.{zone}", f"x.hostmaster.{zone}"]
    missing += [f"sub.{name}" for name in existing]
    parent = zone.split(".", 1)[1] if "." in zone else "."
    first_label_length = len(zone.split(".")[0])
    outside = [".", parent, f"x{zone}", f"{zone}.evil.test", f"a\\{first_label_length:03d}{zone}"]
    return existing, empty_non_terminals + missing + outside


def ancestors_in_zone(names: list[str], zone_text: str) -> list[dns.name.Name]:
    """Every name strictly between the apex and one of ``names`` inside the zone (names the
    index would ignore, such as ones over 255 octets, are skipped)."""
    zone = dns.name.from_text(zone_text)
    found: set[dns.name.Name] = set()
    for text in names:
        try:
            owner = dns.name.from_text(text)
        except dns.name.NameTooLong:
            continue
        if owner.is_subdomain(zone):
            found.update(static_zone.ancestors_below(owner, zone))
    return sorted(found)


@st.composite
def cases(draw: st.DrawFn) -> tuple[ZoneConfig, ZoneRecords, bytes, int | None]:
    config, records = draw(zones())
    existing, others = names_to_ask(config, records)
    # The apex on its own: the only name with SOA, NS and glue.
    text = draw(
        st.one_of(
            st.just(config.zone),
            st.sampled_from(existing),
            st.sampled_from(others),
            relative_names,
        )
    )
    try:
        qname = bytearray(to_wire_name(text))
    except dns.name.NameTooLong:
        qname = bytearray(to_wire_name(config.zone))
    # 0x20: flip the case of random letters.
    for position in draw(st.sets(st.integers(0, len(qname) - 1), max_size=len(qname))):
        if chr(qname[position]).isalpha():
            qname[position] ^= 0x20
    edns = draw(st.booleans())
    query = common_query(
        bytes(qname),
        draw(
            st.one_of(st.sampled_from(SERVED_TYPES), st.sampled_from(QTYPES), st.integers(0, 65535))
        ),
        query_id=draw(st.integers(0, 65535)),
        flags=draw(st.sampled_from([0, RD, CD, RD | CD, AD, RD | AD | CD])),
        edns=edns,
        payload=draw(st.sampled_from([0, 100, 511, 512, 600, 1232, 1400, 4096, 65535])),
        do=draw(st.booleans()),
        cookie=draw(st.sampled_from([b"", b"c" * 8, b"s" * 24])) if edns else b"",
    )
    # None: TCP. Otherwise a UDP limit: the server's (1232, capped at 4x the query) or another.
    max_udp = draw(
        st.one_of(
            st.sampled_from([None, 512, ADVERTISED_UDP_PAYLOAD]),
            st.just(min(ADVERTISED_UDP_PAYLOAD, 4 * len(query))),
            st.integers(512, ADVERTISED_UDP_PAYLOAD),
        )
    )
    return config, records, query, max_udp


# --- the property --------------------------------------------------------------------------------


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_the_builder_writes_dnspythons_bytes(
    case: tuple[ZoneConfig, ZoneRecords, bytes, int | None],
) -> None:
    config, records, query, max_udp = case
    note(f"config={config!r}\nrecords={records!r}\nquery={dns.message.from_wire(query)}")
    reference = general_answer(query, config, records, max_udp=None)
    assert built_reply(query, config, records) == reference

    # The whole miss path, UDP size and TC rules included, builds no dnspython message.
    expected = general_answer(query, config, records, max_udp=max_udp)
    snapshot = fresh(records)
    zoneindex.index_for(config, snapshot)  # built ahead, like the server's snapshot hook
    with dnspython_messages_forbidden():
        assert fast_answer(query, config, snapshot, max_udp=max_udp) == expected
        assert fast_answer(query, config, snapshot, max_udp=max_udp) == expected  # the hit


# --- every kind of reply, whatever hypothesis draws -----------------------------------------------

CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    nameservers=(f"ns1.{CERTOK_ZONE}", "ns.elsewhere.test", f"a.b.{CERTOK_ZONE}"),
    nameserver_addresses=("127.0.0.53", "fd00::53", "127.0.0.54"),
    ttl=30,
    max_txt_values=20,
    host_addresses=(("api.eu", ("127.0.0.2", "::2")),),
)
LABEL = "0123456789abcdef"
RECORDS = ZoneRecords.build(
    [LABEL, "idle", "leaf.branch"],
    [(LABEL, "a" * 43), (LABEL, "b" * 43), ("long", "x" * 600), ("leaf.branch", "deep")]
    + [("many", f"value-{i:02d}-" + "m" * 40) for i in range(20)],
    serial=20260101,
)
KINDS = [
    (f"{LABEL}.{CERTOK_ZONE}", "TXT", dns.rcode.NOERROR, 2),  # two values
    (f"long.{CERTOK_ZONE}", "TXT", dns.rcode.NOERROR, 1),  # one value in three strings
    (f"many.{CERTOK_ZONE}", "TXT", dns.rcode.NOERROR, 20),  # over 512 and 1232 bytes
    (CERTOK_ZONE, "SOA", dns.rcode.NOERROR, 1),
    (CERTOK_ZONE, "NS", dns.rcode.NOERROR, 3),  # with glue
    (CERTOK_ZONE, "ANY", dns.rcode.NOERROR, 1),
    (f"ns1.{CERTOK_ZONE}", "A", dns.rcode.NOERROR, 2),
    (f"ns1.{CERTOK_ZONE}", "AAAA", dns.rcode.NOERROR, 1),
    (f"api.eu.{CERTOK_ZONE}", "AAAA", dns.rcode.NOERROR, 1),
    (f"idle.{CERTOK_ZONE}", "TXT", dns.rcode.NOERROR, 0),  # NODATA
    (f"{LABEL}.{CERTOK_ZONE}", "MX", dns.rcode.NOERROR, 0),
    (f"branch.{CERTOK_ZONE}", "TXT", dns.rcode.NOERROR, 0),  # empty non-terminal
    (f"eu.{CERTOK_ZONE}", "A", dns.rcode.NOERROR, 0),
    (f"eu.{CERTOK_ZONE}", "CNAME", dns.rcode.NOERROR, 0),
    (f"a.b.{CERTOK_ZONE}", "A", dns.rcode.NOERROR, 2),  # a nameserver's glue, two labels down
    (f"b.{CERTOK_ZONE}", "A", dns.rcode.NOERROR, 0),  # the empty non-terminal above it
    (f"b.{CERTOK_ZONE}", "NS", dns.rcode.NOERROR, 0),
    (f"c.b.{CERTOK_ZONE}", "A", dns.rcode.NXDOMAIN, 0),  # beside the nameserver
    (f"nothere.{CERTOK_ZONE}", "TXT", dns.rcode.NXDOMAIN, 0),
    (f"x.ns1.{CERTOK_ZONE}", "A", dns.rcode.NXDOMAIN, 0),  # the SOA's MNAME compresses into it
    (f"x.hostmaster.{CERTOK_ZONE}", "A", dns.rcode.NXDOMAIN, 0),
    ("example.com", "TXT", dns.rcode.REFUSED, 0),
    (f"x{CERTOK_ZONE}", "TXT", dns.rcode.REFUSED, 0),
    (CERTOK_ZONE, "AXFR", dns.rcode.REFUSED, 0),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "answers"), KINDS)
@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize("max_udp", [None, 512, ADVERTISED_UDP_PAYLOAD, "4x"])
def test_every_kind_of_reply_is_dnspythons(
    qname: str, qtype: str, rcode: dns.rcode.Rcode, answers: int, edns: bool, max_udp: object
) -> None:
    mixed = bytes(
        c ^ 0x20 if chr(c).isalpha() and i % 2 else c for i, c in enumerate(to_wire_name(qname))
    )
    query = common_query(mixed, dns.rdatatype.from_text(qtype), edns=edns, do=edns)
    reference = general_answer(query, CONFIG, RECORDS, max_udp=None)
    assert reference is not None
    parsed = dns.message.from_wire(reference)
    assert parsed.rcode() == rcode
    assert sum(len(rrset) for rrset in parsed.answer) == answers
    assert built_reply(query, CONFIG, RECORDS) == reference

    limit = min(ADVERTISED_UDP_PAYLOAD, 4 * len(query)) if max_udp == "4x" else max_udp
    assert limit is None or isinstance(limit, int)
    expected = general_answer(query, CONFIG, RECORDS, max_udp=limit)
    snapshot = fresh(RECORDS)
    zoneindex.index_for(CONFIG, snapshot)
    with dnspython_messages_forbidden():
        assert fast_answer(query, CONFIG, snapshot, max_udp=limit) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zones())
def test_every_name_above_an_existing_one_exists(zone: tuple[ZoneConfig, ZoneRecords]) -> None:
    """RFC 8020 / RFC 4592: a name between the apex and any name the zone holds (a label, a
    dns_hosts name, an in-zone nameserver) is an empty non-terminal, never NXDOMAIN, on both
    paths."""
    config, records = zone
    existing, _ = names_to_ask(config, records)
    note(f"config={config!r}\nrecords={records!r}")
    snapshot = fresh(records)
    for ancestor in ancestors_in_zone(existing, config.zone):
        note(f"qname={ancestor}")
        query = common_query(ancestor.to_wire(), dns.rdatatype.A)
        general = general_answer(query, config, records, max_udp=None)
        assert general is not None
        assert dns.message.from_wire(general).rcode() == dns.rcode.NOERROR
        assert fast_answer(query, config, snapshot, max_udp=None) == general


def test_the_property_catches_a_wrong_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: a builder that compresses one name less is caught."""
    query = common_query(to_wire_name(f"nothere.{CERTOK_ZONE}"), dns.rdatatype.TXT)
    reference = general_answer(query, CONFIG, RECORDS, max_udp=None)
    assert built_reply(query, CONFIG, RECORDS) == reference
    monkeypatch.setattr(replybuild, "MAX_POINTER_OFFSET", 0)  # nothing may be pointed at
    assert built_reply(query, CONFIG, RECORDS) != reference


def test_the_builder_writes_every_type_the_zone_holds() -> None:
    """A type added to the zone without the builder learning it would go to dnspython on
    every miss again: correct, but the slow path this module exists to avoid."""
    assert set(static_zone.ANY_ORDER) == replybuild._WRITABLE_TYPES


def test_a_reply_too_big_for_tcp_goes_to_dnspython_and_stays_servfail() -> None:
    config = ZoneConfig(CERTOK_ZONE, (f"ns1.{CERTOK_ZONE}",), (), 30, max_txt_values=300)
    records = ZoneRecords.build([], [("big", f"{i:03d}" + "v" * 250) for i in range(300)])
    query = common_query(to_wire_name(f"big.{CERTOK_ZONE}"), dns.rdatatype.TXT)
    assert built_reply(query, config, records) is None
    reply = answer(query, config, records, max_udp=None)
    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL
