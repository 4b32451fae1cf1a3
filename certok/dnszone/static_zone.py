"""What the zone config alone decides: the apex's NS, glue, dns_hosts and the empty
non-terminals above them, built once per config and shared by every snapshot's index."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import cast

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from certok.dnszone.config import ZoneConfig

IN = dns.rdataclass.IN
# The order ANY picks its one RRset from (RFC 8482 lets the server choose).
ANY_ORDER = (
    dns.rdatatype.SOA,
    dns.rdatatype.TXT,
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.NS,
)

# type → RRset owned by one name, in ANY_ORDER. An empty node is a name that exists without
# data: an allocated label with no TXT value, or an empty non-terminal (RFC 8020: NODATA).
Node = dict[int, dns.rrset.RRset]


def wire_key(name: dns.name.Name) -> bytes:
    """The lowercase wire form of a name: how the index and the fast path key names."""
    # Without a file to write into, to_wire returns the bytes.
    return cast(bytes, name.canonicalize().to_wire())


@dataclass(frozen=True)
class StaticZone:
    """The config's part of the zone, built once per config and shared by all its indexes.

    Its nodes are never modified: a snapshot name that collides with one gets a copy.
    """

    zone: dns.name.Name
    zone_wire: bytes
    soa_names: tuple[dns.name.Name, dns.name.Name]  # MNAME (first nameserver), RNAME
    apex_without_soa: Node
    nodes: dict[bytes, Node]  # config-owned names below the apex, empty non-terminals too
    # How many in-zone host names (nameservers and dns_hosts) lie below each empty non-terminal.
    ent_counts: dict[bytes, int]
    glue: tuple[dns.rrset.RRset, ...]  # A/AAAA of NS names inside the zone
    # Names in the SOA rdata below the apex: a question ending in one of them changes how the
    # SOA compresses, so its NXDOMAIN reply is not the one shared by its length.
    soa_name_suffixes: tuple[bytes, ...]


@functools.lru_cache(maxsize=16)
def static_zone(config: ZoneConfig) -> StaticZone:
    zone = dns.name.from_text(config.zone)
    ttl = config.ttl
    nameservers = [dns.name.from_text(ns) for ns in config.nameservers]
    hostmaster = dns.name.Name((b"hostmaster", *zone.labels))
    nodes: dict[bytes, Node] = {}
    apex = nodes.setdefault(wire_key(zone), {})
    apex[dns.rdatatype.NS] = dns.rrset.from_rdata_list(
        zone, ttl, [dns.rdtypes.ANY.NS.NS(IN, dns.rdatatype.NS, name) for name in nameservers]
    )
    addresses = _address_rdatas(config.nameserver_addresses)
    glue: list[dns.rrset.RRset] = []
    host_names: set[dns.name.Name] = set()  # in-zone names the config gives addresses
    for name in nameservers:
        if not name.is_subdomain(zone):
            continue  # no glue for nameservers in other zones
        host_names.add(name)
        node = nodes.setdefault(wire_key(name), {})
        for rdtype, rdatas in addresses.items():
            node[rdtype] = dns.rrset.from_rdata_list(name, ttl, rdatas)
            glue.append(node[rdtype])
    for relative, host_addresses in config.host_addresses:
        owner = dns.name.from_text(relative, origin=zone)
        host_names.add(owner)
        node = nodes.setdefault(wire_key(owner), {})
        for rdtype, rdatas in _address_rdatas(host_addresses).items():
            node[rdtype] = dns.rrset.from_rdata_list(owner, ttl, rdatas)
    # RFC 8020: the names between the apex and a host name exist (NODATA, not NXDOMAIN), for a
    # nameserver such as a.b.<zone> as much as for a dns_hosts name. A name that is both counts
    # once.
    ent_counts: dict[bytes, int] = {}
    for owner in host_names:
        for parent in ancestors_below(owner, zone):
            parent_key = wire_key(parent)
            ent_counts[parent_key] = ent_counts.get(parent_key, 0) + 1
    soa_name_suffixes = {
        wire_key(name)
        for soa_name in (nameservers[0], hostmaster)
        if soa_name.is_subdomain(zone)
        for name in (soa_name, *ancestors_below(soa_name, zone))
        if name != zone
    }
    for parent_key in ent_counts:
        nodes.setdefault(parent_key, {})  # an empty non-terminal above a host name
    apex_without_soa = ordered_node(nodes.pop(wire_key(zone)))
    return StaticZone(
        zone=zone,
        zone_wire=wire_key(zone),
        soa_names=(nameservers[0], hostmaster),
        apex_without_soa=apex_without_soa,
        nodes={key: ordered_node(node) for key, node in nodes.items()},
        ent_counts=ent_counts,
        glue=tuple(glue),
        soa_name_suffixes=tuple(sorted(soa_name_suffixes)),
    )


def ancestors_below(name: dns.name.Name, zone: dns.name.Name) -> list[dns.name.Name]:
    """The names strictly between ``name`` and ``zone``."""
    result = []
    parent = name.parent()
    while parent != zone and len(parent) > len(zone):
        result.append(parent)
        parent = parent.parent()
    return result


def _address_rdatas(addresses: tuple[str, ...]) -> dict[int, list[dns.rdata.Rdata]]:
    result: dict[int, list[dns.rdata.Rdata]] = {}
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.version == 4:
            rdata: dns.rdata.Rdata = dns.rdtypes.IN.A.A(IN, dns.rdatatype.A, str(address))
        else:
            rdata = dns.rdtypes.IN.AAAA.AAAA(IN, dns.rdatatype.AAAA, str(address))
        result.setdefault(rdata.rdtype, []).append(rdata)
    return result


def ordered_node(node: Node) -> Node:
    """A new node with the types in ANY_ORDER (ANY answers with the first one)."""
    return {rdtype: node[rdtype] for rdtype in ANY_ORDER if rdtype in node}
