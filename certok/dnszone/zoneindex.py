"""The zone as lookup tables for answers: one index per (config, records snapshot).

A snapshot's index is derived from the previous snapshot's index: only names whose TXT values
or label status changed (and the empty non-terminals above them) get new nodes; every other
node is the previous index's object, shared by identity. The reply cache relies on that
identity to tell which cached replies still hold (see replycache.py), so it is shared too and
survives the change for every name that did not change.

``prepare_index`` does the work where a snapshot is swapped in (the refresher's thread, via a
``ZoneCache`` snapshot hook), so the answer path finds the index ready and never does O(zone)
work; ``index_for`` is the answer path's lookup, building in full only for a snapshot nobody
prepared (tests that call ``answer`` directly).
"""

from __future__ import annotations

import logging

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from certok.dnszone.config import (
    RELATIVE_NAME,
    SOA_EXPIRE,
    SOA_REFRESH,
    SOA_RETRY,
    ZoneConfig,
)
from certok.dnszone.replycache import MAX_CACHED_REPLIES, Entry, ReplyCache
from certok.dnszone.static_zone import (
    IN,
    Node,
    StaticZone,
    ancestors_below,
    ordered_node,
    static_zone,
    wire_key,
)
from certok.dnszone.zone_records import ZoneRecords

log = logging.getLogger(__name__)

TXT_STRING_MAX = 255
# A reply that depends on the query only through the question's length (see answer._shape_key).
ShapeKey = tuple[int, int, int, int]


# --- one snapshot -------------------------------------------------------------------------------


class ZoneIndex:
    """Everything answers need for one (config, records) snapshot.

    ``nodes`` and ``ent_counts`` are never modified once the index is built (a derived index
    copies them), so the refresher's thread can derive the next index while the event loop
    answers from this one. ``replies`` and ``shapes`` are shared with the indexes derived from
    this one and filled by the answer path.
    """

    __slots__ = (
        "__weakref__",
        "config",
        "ent_counts",
        "glue",
        "labels",
        "nodes",
        "replies",
        "serial",
        "shapes",
        "soa",
        "soa_name_suffixes",
        "static",
        "txt",
        "zone",
        "zone_wire",
    )

    def __init__(
        self,
        *,
        config: ZoneConfig,
        static: StaticZone,
        records: ZoneRecords,
        soa: dns.rrset.RRset,
        nodes: dict[bytes, Node],
        ent_counts: dict[bytes, int],
        replies: ReplyCache,
        shapes: dict[ShapeKey, Entry],
    ) -> None:
        self.config = config
        self.static = static
        # The snapshot's data, to diff the next snapshot against. Not the ZoneRecords itself:
        # it holds this index (ZoneRecords.derived), and a cycle would leave every replaced
        # snapshot to the cyclic garbage collector.
        self.labels = records.labels
        self.txt = records.txt
        self.serial = records.serial & 0xFFFFFFFF
        self.soa = soa  # owned by the apex, for AUTHORITY in negative answers
        # lowercase wire owner name → node; a name that is not here does not exist
        self.nodes = nodes
        # names below each empty non-terminal (its node stays while the count is positive)
        self.ent_counts = ent_counts
        self.replies = replies
        self.shapes = shapes  # NXDOMAIN / REFUSED replies per question shape
        self.zone = static.zone
        self.zone_wire = static.zone_wire
        self.glue = static.glue
        self.soa_name_suffixes = static.soa_name_suffixes


def build_index(config: ZoneConfig, records: ZoneRecords) -> ZoneIndex:
    """The index of ``records`` from nothing, with an empty reply cache.

    Deliberately written apart from ``derive_index``: the tests hold one against the other.
    """
    static = static_zone(config)
    soa, apex = _apex(config, static, records.serial)
    nodes = {static.zone_wire: apex, **static.nodes}
    ent_counts = dict(static.ent_counts)
    for relative in sorted(records.labels | records.txt.keys()):
        owner = _owner(static.zone, relative)
        if owner is None:
            continue
        key = wire_key(owner)
        values = records.txt.get(relative, ())[: config.max_txt_values]
        nodes[key] = _snapshot_node(static.nodes.get(key), owner, values, config.ttl)
        for parent in ancestors_below(owner, static.zone):
            parent_key = wire_key(parent)
            ent_counts[parent_key] = ent_counts.get(parent_key, 0) + 1
    for parent_key in ent_counts:
        nodes.setdefault(parent_key, {})  # an empty non-terminal (RFC 8020: NODATA there)
    return ZoneIndex(
        config=config,
        static=static,
        records=records,
        soa=soa,
        nodes=nodes,
        ent_counts=ent_counts,
        replies=ReplyCache(MAX_CACHED_REPLIES),
        shapes={},
    )


def derive_index(previous: ZoneIndex, records: ZoneRecords) -> ZoneIndex:
    """The index of ``records``, sharing every node of ``previous`` whose name did not change.

    Costs set operations on the two snapshots (C speed) and a copy of the node table, plus
    dnspython work for the changed names only.
    """
    changed: set[str] = set()
    if previous.labels is not records.labels:
        changed.update(previous.labels ^ records.labels)
    if previous.txt is not records.txt:
        changed.update(name for name, _ in previous.txt.items() ^ records.txt.items())
    return _apply(previous, records, changed)


def _apply(previous: ZoneIndex, records: ZoneRecords, changed: set[str]) -> ZoneIndex:
    """``previous`` with the names in ``changed`` brought up to date with ``records``."""
    config, static = previous.config, previous.static
    zone = static.zone
    nodes = previous.nodes.copy()
    ent_counts = previous.ent_counts.copy()
    soa = previous.soa
    if (records.serial & 0xFFFFFFFF) != previous.serial:
        # The apex gets a new node, so cached SOA answers are rebuilt; negative replies only
        # get the new serial patched in (replycache.py).
        soa, nodes[static.zone_wire] = _apex(config, static, records.serial)

    # key → (relative name, owner, whether its own records changed)
    touched: dict[bytes, tuple[str, dns.name.Name, bool]] = {}
    for relative in changed:
        owner = _owner(zone, relative)
        if owner is None:
            continue
        key = wire_key(owner)
        touched[key] = (relative, owner, True)
        existed = relative in previous.labels or relative in previous.txt
        exists = relative in records.labels or relative in records.txt
        if existed == exists:
            continue
        step = 1 if exists else -1
        for parent in ancestors_below(owner, zone):
            parent_key = wire_key(parent)
            count = ent_counts.get(parent_key, 0) + step
            if count > 0:
                ent_counts[parent_key] = count
            else:
                ent_counts.pop(parent_key, None)
            if parent_key not in touched:
                touched[parent_key] = (parent.relativize(zone).to_text(), parent, False)

    for key, (relative, owner, own_records_changed) in touched.items():
        node: Node | None
        if relative in records.labels or relative in records.txt:
            kept = nodes.get(key)
            if own_records_changed or kept is None:
                values = records.txt.get(relative, ())[: config.max_txt_values]
                kept = _snapshot_node(static.nodes.get(key), owner, values, config.ttl)
            node = kept
        elif key in static.nodes:
            node = static.nodes[key]
        elif ent_counts.get(key, 0) > 0:
            # An empty non-terminal: keep the object if it already was one, so replies cached
            # for it stay valid; a name that just stopped holding records gets a new one.
            kept = nodes.get(key)
            node = kept if kept is not None and not own_records_changed else {}
        else:
            node = None
        if node is None:
            nodes.pop(key, None)
        else:
            nodes[key] = node

    return ZoneIndex(
        config=config,
        static=static,
        records=records,
        soa=soa,
        nodes=nodes,
        ent_counts=ent_counts,
        replies=previous.replies,
        shapes=previous.shapes,
    )


def _apex(config: ZoneConfig, static: StaticZone, serial: int) -> tuple[dns.rrset.RRset, Node]:
    mname, rname = static.soa_names
    rdata = dns.rdtypes.ANY.SOA.SOA(
        IN,
        dns.rdatatype.SOA,
        mname,
        rname,
        serial & 0xFFFFFFFF,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        config.ttl,
    )
    soa = dns.rrset.from_rdata_list(static.zone, config.ttl, [rdata])
    return soa, ordered_node({**static.apex_without_soa, dns.rdatatype.SOA: soa})


def _owner(zone: dns.name.Name, relative: str) -> dns.name.Name | None:
    if not RELATIVE_NAME.fullmatch(relative):
        log.warning("ignoring a zone name that is not a plain relative name: %r", relative)
        return None
    try:
        return dns.name.from_text(relative, origin=zone)
    except dns.exception.DNSException:
        log.warning("ignoring a zone name that is too long: %r", relative)
        return None


def _snapshot_node(
    static_node: Node | None, owner: dns.name.Name, values: tuple[str, ...], ttl: int
) -> Node:
    """A new node object (even when empty: its identity marks this version of the name)."""
    node = dict(static_node) if static_node else {}
    if values:
        rdatas = [_txt_rdata(value) for value in values]
        node[dns.rdatatype.TXT] = dns.rrset.from_rdata_list(owner, ttl, rdatas)
    return ordered_node(node)


def _txt_rdata(value: str) -> dns.rdata.Rdata:
    # A TXT string holds at most 255 octets; longer values become several strings of one RR.
    data = value.encode("utf-8")
    chunks = [data[i : i + TXT_STRING_MAX] for i in range(0, len(data), TXT_STRING_MAX)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, chunks)


# --- where indexes are made and found -----------------------------------------------------------


def prepare_index(
    config: ZoneConfig, previous: ZoneRecords | None, records: ZoneRecords
) -> ZoneIndex:
    """Make ``records``' index ready before anyone answers from it (a ZoneCache snapshot hook).

    Derived from ``previous``' index when there is one, so cached replies carry over.
    """
    ready = records.derived.get(config)
    if isinstance(ready, ZoneIndex):
        return ready
    base = previous.derived.get(config) if previous is not None else None
    if isinstance(base, ZoneIndex):
        index = derive_index(base, records)
    else:
        index = build_index(config, records)
    prepared: ZoneIndex = records.derived.setdefault(config, index)
    return prepared


def index_for(config: ZoneConfig, records: ZoneRecords) -> ZoneIndex:
    """The prepared index of ``records``, built in full (and kept) if nobody prepared it."""
    ready = records.derived.get(config)
    if isinstance(ready, ZoneIndex):
        return ready
    built: ZoneIndex = records.derived.setdefault(config, build_index(config, records))
    return built
