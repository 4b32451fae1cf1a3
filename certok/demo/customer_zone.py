"""The customer zone's text: the template's base records with a test's own lines merged over.

A test says what the customer's DNS should hold *now* (say `_acme-challenge.www IN CNAME
<label>.acme.svc.test.`); the rig writes base + those lines as one zone with a higher serial.
A test line replaces the base's records of the same name and type, and a CNAME replaces
everything at its name (RFC 1034 §3.6.2: a CNAME owner holds no other data), so a test can
also repoint `www` or drop a name's A record by CNAMEing it elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdataset
import dns.rdatatype
import dns.zone

from certok.demo.errors import RigError

CUSTOMER_ZONE = "customer.test"
_ORIGIN = dns.name.from_text(CUSTOMER_ZONE)
_DEFAULT_TTL = 60


@dataclass(frozen=True)
class ExpectedRecord:
    """One RRset a resolver must answer once the new zone is live."""

    name: str  # absolute, with the trailing dot
    rdtype: dns.rdatatype.RdataType
    rdatas: frozenset[str]


def _parse(text: str, *, check_origin: bool) -> dns.zone.Zone:
    try:
        return dns.zone.from_text(
            text, origin=f"{CUSTOMER_ZONE}.", relativize=True, check_origin=check_origin
        )
    except dns.exception.DNSException as error:
        raise RigError(f"bad zone-file line(s) for {CUSTOMER_ZONE}: {error}\n{text}") from error


def render_zone(
    base_text: str, extra: Sequence[str], serial: int
) -> tuple[str, list[ExpectedRecord]]:
    """Zone-file text for base + `extra` at `serial`, and the RRsets `extra` asks for."""
    zone = _parse(base_text, check_origin=True)
    wanted = _parse(f"$TTL {_DEFAULT_TTL}\n" + "\n".join(extra) + "\n", check_origin=False)
    expected: list[ExpectedRecord] = []
    for name, rdataset in wanted.iterate_rdatasets():
        if rdataset.rdtype == dns.rdatatype.CNAME:
            zone.delete_node(name)
        else:
            zone.delete_rdataset(name, dns.rdatatype.CNAME)
        zone.replace_rdataset(name, rdataset)
        # NS lines below the apex make a delegation: a resolver follows it, so there is nothing
        # stable to compare against. Everything else must show through the resolver verbatim.
        if rdataset.rdtype != dns.rdatatype.NS:
            absolute = name.derelativize(_ORIGIN)
            expected.append(
                ExpectedRecord(
                    name=absolute.to_text(),
                    rdtype=rdataset.rdtype,
                    rdatas=frozenset(
                        rdata.to_text(origin=_ORIGIN, relativize=False) for rdata in rdataset
                    ),
                )
            )
    soa = zone.find_rdataset("@", dns.rdatatype.SOA)
    new_soa = dns.rdataset.from_rdata(soa.ttl, soa[0].replace(serial=serial))
    # SOA first, then the rest in name order: the conventional layout, easy to read in a log.
    lines = [f"$ORIGIN {_ORIGIN}", new_soa.to_text(dns.name.empty)]
    for name in sorted(zone.nodes):
        for rdataset in zone.nodes[name].rdatasets:
            if rdataset.rdtype != dns.rdatatype.SOA:
                lines.append(rdataset.to_text(name))
    return "\n".join(lines) + "\n", expected
