"""Snapshot changes: derived indexes answer exactly like full builds, and keep cached replies.

A new snapshot's index is derived from the previous one (zoneindex.derive_index) and shares
the reply cache, whose entries are checked against the index's nodes by identity. These tests
hold that to a full rebuild byte for byte, count the replies a change makes the answer path
build again, and check the reply cache's bound.
"""

from __future__ import annotations

import functools
import gc
import random
import struct
import weakref
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certok.dnszone import answer as answer_module
from certok.dnszone import wire, zoneindex
from certok.dnszone.answer import ADVERTISED_UDP_PAYLOAD, ZoneConfig, answer, general_answer
from certok.dnszone.replycache import Entry, ReplyCache
from certok.dnszone.wire import ReplyKey
from certok.dnszone.zone_cache import ZoneCache
from certok.dnszone.zone_records import ZoneRecords
from certok.dnszone.zoneindex import ZoneIndex, prepare_index
from tests.kit.dns import CERTOK_ZONE

CONFIG = ZoneConfig(
    zone=CERTOK_ZONE,
    # a.b: an in-zone nameserver whose parent is an empty non-terminal the config owns
    nameservers=(f"ns1.{CERTOK_ZONE}", "ns.elsewhere.test", f"a.b.{CERTOK_ZONE}"),
    nameserver_addresses=("127.0.0.53", "fd00::53"),
    ttl=30,
    max_txt_values=3,
    host_addresses=(("api.eu", ("127.0.0.2",)), ("svc", ("::2",))),
)
# Names a snapshot may hold: labels, names below and above each other (empty non-terminals
# come and go), names the config owns too, and names the index must ignore.
NAMES = [
    "0123456789abcdef",
    "fedcba9876543210",
    "branch",
    "leaf.branch",
    "deep.leaf.branch",
    "ns1",
    "svc",
    "eu",
    "x.api.eu",
    "hostmaster",
    "Bad Label",
    "a" * 64,
    "b",
    "c.b",
    "a.b",
]
VALUES = ["v1", "v2", "v3", "v4", "w" * 300]
# Owners queried: every name above, their ancestors, missing names and outsiders.
OWNERS = [
    *(name.lower() for name in NAMES[:10]),
    "",
    "api",
    "api.eu",
    "x.branch",
    "x.ns1",
    "nothere",
    "deep.nothere",
    "b",
    "c.b",
    "a.b",
    "x.a.b",
]
QTYPES = ["TXT", "A", "AAAA", "NS", "SOA", "ANY", "MX", 65280]


def records_of(labels: frozenset[str], txt: dict[str, list[str]], serial: int) -> ZoneRecords:
    rows = [(name, value) for name, values in txt.items() for value in values]
    return ZoneRecords.build(labels, rows, serial=serial)


def random_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def random_query(rng: random.Random) -> bytes:
    owner = rng.choice(OWNERS)
    qname = f"{owner}.{CERTOK_ZONE}." if owner else f"{CERTOK_ZONE}."
    if rng.random() < 0.05:
        qname = "example.com."
    use_edns: int | bool = rng.choice([False, 0])
    query = dns.message.make_query(
        random_case(qname, rng),
        rng.choice(QTYPES),
        use_edns=use_edns,
        want_dnssec=use_edns is not False and rng.random() < 0.5,
        payload=rng.choice([512, 1232, 4096]),
        flags=rng.choice([0, dns.flags.RD, dns.flags.CD | dns.flags.RD]),
    )
    query.id = rng.randrange(65536)
    return query.to_wire()


def node_contents(index: ZoneIndex) -> dict[bytes, list[tuple[int, list[str]]]]:
    return {
        key: [(rdtype, [rdata.to_text() for rdata in rrset]) for rdtype, rrset in node.items()]
        for key, node in index.nodes.items()
    }


def hooked_cache(first: ZoneRecords) -> ZoneCache:
    """A ZoneCache that prepares indexes on swap-in, as start_dns_server hooks it."""
    cache = ZoneCache(None)
    cache.add_snapshot_hook(functools.partial(prepare_index, CONFIG))
    cache.replace(first)
    return cache


snapshots = st.lists(
    st.tuples(
        st.frozensets(st.sampled_from(NAMES), max_size=8),
        st.dictionaries(
            st.sampled_from(NAMES),
            st.lists(st.sampled_from(VALUES), min_size=1, max_size=5, unique=True),
            max_size=6,
        ),
        st.sampled_from([1, 2, 3]),  # a serial may move with a change, or not
    ),
    min_size=2,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=snapshots, seed=st.integers(0, 2**32))
def test_a_derived_index_answers_exactly_like_a_full_build(
    sequence: list[tuple[frozenset[str], dict[str, list[str]], int]], seed: int
) -> None:
    rng = random.Random(seed)
    cache = hooked_cache(records_of(*sequence[0]))
    for step in sequence[1:]:
        # Fill the shared reply cache from the current snapshot before it changes.
        for _ in range(25):
            answer(random_query(rng), CONFIG, cache.records, max_udp=ADVERTISED_UDP_PAYLOAD)
        before = cache.records.derived[CONFIG]
        cache.replace(records_of(*step))
        derived = cache.records
        index = derived.derived.get(CONFIG)
        assert isinstance(index, ZoneIndex), "the hook prepared the new snapshot's index"
        assert index.replies is before.replies, "derived, not rebuilt: the cache carries over"

        full = ZoneRecords(labels=derived.labels, txt=derived.txt, serial=derived.serial)
        full_index = zoneindex.build_index(CONFIG, full)
        assert node_contents(index) == node_contents(full_index)
        assert index.ent_counts == full_index.ent_counts
        assert index.serial == full_index.serial
        for _ in range(30):
            query = random_query(rng)
            max_udp = rng.choice([ADVERTISED_UDP_PAYLOAD, 512, None])
            expected = answer(query, CONFIG, full, max_udp=max_udp)
            assert answer(query, CONFIG, derived, max_udp=max_udp) == expected
            assert general_answer(query, CONFIG, derived, max_udp=max_udp) == expected


# --- what a change costs -------------------------------------------------------------------------


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The lowercase names a reply is built for (the cache misses), in order."""
    seen: list[bytes] = []
    canonical_entry = answer_module._canonical_entry

    def counting(index: ZoneIndex, key: ReplyKey, stamp: object) -> Entry:
        seen.append(key[0])
        return canonical_entry(index, key, stamp)

    monkeypatch.setattr(answer_module, "_canonical_entry", counting)
    yield seen


LABELS = [f"{i:016x}" for i in range(40)]
WITH_TXT = LABELS[::4]


def label_records(changed_value: str, serial: int) -> ZoneRecords:
    rows = [(label, f"value-{label}") for label in WITH_TXT[1:]]
    rows.append((WITH_TXT[0], changed_value))
    return ZoneRecords.build(LABELS, rows, serial=serial)


def ask(qname: str, records: ZoneRecords, qtype: str = "TXT") -> dns.message.Message:
    query = dns.message.make_query(qname, qtype)
    reply = answer(query.to_wire(), CONFIG, records, max_udp=ADVERTISED_UDP_PAYLOAD)
    assert reply is not None
    return dns.message.from_wire(reply)


def txt_of(reply: dns.message.Message) -> list[str]:
    return [b"".join(rdata.strings).decode() for rrset in reply.answer for rdata in rrset]


def soa_serial(reply: dns.message.Message) -> int:
    (soa,) = reply.authority
    return int(soa[0].serial)


def test_cached_replies_of_unchanged_names_survive_a_change(renders: list[bytes]) -> None:
    cache = hooked_cache(label_records("old", serial=10))
    questions = [f"{label}.{CERTOK_ZONE}" for label in LABELS] + [f"nothere.{CERTOK_ZONE}"]
    for qname in questions:
        ask(qname, cache.records)
    assert len(renders) == len(questions)  # every question rendered once

    renders.clear()
    cache.replace(label_records("new", serial=11))  # one TXT value changed, serial moved
    changed = f"{WITH_TXT[0]}.{CERTOK_ZONE}"
    assert txt_of(ask(changed, cache.records)) == ["new"]  # at once, no stale reply
    for qname in questions:
        reply = ask(qname, cache.records)
        if reply.answer == []:
            assert soa_serial(reply) == 11  # NODATA / NXDOMAIN carry the new serial
    # Only the changed name got a new reply built; the others, negative ones included
    # (their serial is patched in), came from the cache.
    assert renders == [wire_name(changed)]


def test_a_removed_name_is_nxdomain_and_an_added_one_answers_at_once(
    renders: list[bytes],
) -> None:
    cache = hooked_cache(ZoneRecords.build(LABELS[:2], [(LABELS[0], "v")], serial=1))
    gone, added = f"{LABELS[1]}.{CERTOK_ZONE}", f"{LABELS[2]}.{CERTOK_ZONE}"
    assert ask(gone, cache.records).rcode() == dns.rcode.NOERROR
    assert ask(added, cache.records).rcode() == dns.rcode.NXDOMAIN
    cache.replace(ZoneRecords.build([LABELS[0], LABELS[2]], [(LABELS[2], "w")], serial=1))
    assert ask(gone, cache.records).rcode() == dns.rcode.NXDOMAIN
    assert txt_of(ask(added, cache.records)) == ["w"]
    assert ask(f"{LABELS[0]}.{CERTOK_ZONE}", cache.records).answer == []  # its value went away


def test_an_empty_non_terminal_appears_and_goes_with_the_names_below_it() -> None:
    cache = hooked_cache(ZoneRecords.build([], [], serial=1))
    assert ask(f"branch.{CERTOK_ZONE}", cache.records, "A").rcode() == dns.rcode.NXDOMAIN
    cache.replace(ZoneRecords.build(["leaf.branch"], [], serial=2))
    reply = ask(f"branch.{CERTOK_ZONE}", cache.records, "A")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    cache.replace(ZoneRecords.build([], [], serial=3))
    assert ask(f"branch.{CERTOK_ZONE}", cache.records, "A").rcode() == dns.rcode.NXDOMAIN


def test_an_empty_non_terminal_above_a_nameserver_outlives_snapshot_names() -> None:
    cache = hooked_cache(ZoneRecords.build([], [], serial=1))
    for labels, txt in [([], []), (["c.b"], []), ([], []), (["b"], [("b", "v")]), ([], [])]:
        cache.replace(ZoneRecords.build(labels, txt, serial=cache.records.serial + 1))
        reply = ask(f"b.{CERTOK_ZONE}", cache.records)
        assert reply.rcode() == dns.rcode.NOERROR, (labels, txt)
        assert txt_of(reply) == [value for _, value in txt]
        assert ask(f"c.b.{CERTOK_ZONE}", cache.records, "A").rcode() == (
            dns.rcode.NOERROR if labels == ["c.b"] else dns.rcode.NXDOMAIN
        )


def test_the_apex_soa_follows_the_serial() -> None:
    cache = hooked_cache(ZoneRecords.build(LABELS[:1], [], serial=5))
    assert ask(CERTOK_ZONE, cache.records, "SOA").answer[0][0].serial == 5
    cache.replace(ZoneRecords.build(LABELS[:2], [], serial=6))
    assert ask(CERTOK_ZONE, cache.records, "SOA").answer[0][0].serial == 6
    assert ask(f"nothere.{CERTOK_ZONE}", cache.records).authority[0][0].serial == 6


def test_an_older_snapshot_still_gets_its_own_answers() -> None:
    """Indexes share one reply cache; an entry serves only the index whose node built it."""
    cache = hooked_cache(label_records("old", serial=1))
    old = cache.records
    cache.replace(label_records("new", serial=2))
    new = cache.records
    changed = f"{WITH_TXT[0]}.{CERTOK_ZONE}"
    for _ in range(2):
        assert txt_of(ask(changed, new)) == ["new"]
        assert txt_of(ask(changed, old)) == ["old"]
        assert soa_serial(ask(f"nothere.{CERTOK_ZONE}", old)) == 1
        assert soa_serial(ask(f"nothere.{CERTOK_ZONE}", new)) == 2


def wire_name(text: str) -> bytes:
    return dns.name.from_text(text).canonicalize().to_wire()


def test_negative_serial_offset_points_at_the_serial() -> None:
    records = ZoneRecords.build([], [], serial=0x01020304)
    for qname, qtype in (
        (f"nothere.{CERTOK_ZONE}", "TXT"),
        (f"ns1.{CERTOK_ZONE}", "TXT"),
        (CERTOK_ZONE, "MX"),
    ):
        query = dns.message.make_query(qname, qtype, use_edns=0)
        reply = general_answer(query.to_wire(), CONFIG, records, max_udp=None)
        assert reply is not None
        at = wire.negative_serial_offset(reply)
        assert at > 0
        assert struct.unpack_from("!I", reply, at)[0] == 0x01020304
        patched = wire.with_serial(reply, at, 7)
        assert dns.message.from_wire(patched).authority[0][0].serial == 7
    positive = general_answer(
        dns.message.make_query(CERTOK_ZONE, "SOA").to_wire(), CONFIG, records, max_udp=None
    )
    assert positive is not None and wire.negative_serial_offset(positive) == 0


# --- the bound -----------------------------------------------------------------------------------


def entry(n: int) -> tuple[bytes, None, None, int, int]:
    return (b"reply-%d" % n, None, None, 0, 0)


def key(n: int) -> tuple[bytes, int, int, int]:
    return (b"\x10name-%d\x00" % n, 16, 0, 0)


def test_the_reply_cache_never_holds_more_than_its_bound() -> None:
    cache = ReplyCache(max_entries=100)
    for n in range(1000):
        cache.put(key(n), entry(n))
        assert len(cache) <= 100
    held = [n for n in range(1000) if key(n) in cache]
    assert len(held) == 100
    assert all(cache.get(key(n)) == entry(n) for n in held)
    cache.put(key(held[0]), entry(-1))  # replacing an entry evicts nothing
    assert len(cache) == 100 and cache.get(key(held[0])) == entry(-1)


def test_random_eviction_keeps_hits_when_questions_cycle_through_more_than_fit() -> None:
    """A resolver sweeping 150 names through a 100-entry cache: LRU or FIFO would never hit."""
    cache = ReplyCache(max_entries=100)
    hits = asked = 0
    for sweep in range(30):
        for n in range(150):
            found = cache.get(key(n)) is not None
            if sweep >= 10:
                hits, asked = hits + found, asked + 1
            if not found:
                cache.put(key(n), entry(n))
    assert hits / asked > 0.3


def test_the_answer_path_honours_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoneindex, "MAX_CACHED_REPLIES", 20)
    records = ZoneRecords.build(LABELS, [(label, "v") for label in WITH_TXT], serial=1)
    for label in LABELS:
        for qtype in ("TXT", "A"):
            query = dns.message.make_query(f"{label.upper()}.{CERTOK_ZONE}", qtype).to_wire()
            fast = answer(query, CONFIG, records, max_udp=512)
            assert fast == general_answer(query, CONFIG, records, max_udp=512)
    index = answer_module._index_for(CONFIG, records)
    assert len(index.replies) == 20


def test_a_replaced_snapshot_is_freed_at_once() -> None:
    """No reference cycle between a snapshot and its index: with churn, replaced snapshots
    must not pile up waiting for the cyclic garbage collector (a long pause on the loop)."""
    cache = hooked_cache(label_records("first", serial=1))
    ask(f"{LABELS[0]}.{CERTOK_ZONE}", cache.records)
    gc.disable()
    try:
        old = weakref.ref(cache.records)
        old_index = weakref.ref(cache.records.derived[CONFIG])
        cache.replace(label_records("second", serial=2))
        ask(f"{LABELS[0]}.{CERTOK_ZONE}", cache.records)  # the answer path moves on too
        assert old() is None
        assert old_index() is None
    finally:
        gc.enable()
