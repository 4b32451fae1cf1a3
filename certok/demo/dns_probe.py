"""DNS questions to one explicitly named loopback server (never the system resolver)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from certok.demo.customer_zone import ExpectedRecord

QUERY_TIMEOUT_SECONDS = 1.0


def ask(
    port: int,
    name: str,
    rdtype: str | dns.rdatatype.RdataType,
    *,
    host: str = "127.0.0.1",
    recursion_desired: bool = True,
    timeout: float = QUERY_TIMEOUT_SECONDS,
) -> dns.message.Message:
    """One query over UDP (TCP when the answer is truncated) to host:port."""
    query = dns.message.make_query(name, rdtype)
    if not recursion_desired:
        query.flags &= ~dns.flags.RD
    response = dns.query.udp(query, host, port=port, timeout=timeout)
    if response.flags & dns.flags.TC:
        response = dns.query.tcp(query, host, port=port, timeout=timeout)
    return response


def answer_texts(
    response: dns.message.Message, name: str, rdtype: dns.rdatatype.RdataType
) -> frozenset[str]:
    """The rdata texts of the answer RRset (name, rdtype), empty when there is none."""
    owner = dns.name.from_text(name)
    for rrset in response.answer:
        if rrset.name == owner and rrset.rdtype == rdtype:
            return frozenset(rdata.to_text() for rdata in rrset)
    return frozenset()


def soa_serial(
    port: int,
    zone: str,
    *,
    recursion_desired: bool = True,
    timeout: float = QUERY_TIMEOUT_SECONDS,
) -> int | None:
    response = ask(
        port, zone, dns.rdatatype.SOA, recursion_desired=recursion_desired, timeout=timeout
    )
    if response.rcode() != dns.rcode.NOERROR:
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)
    return None


def shows(port: int, record: ExpectedRecord) -> bool:
    """True when the server at `port` answers exactly `record`'s data."""
    response = ask(port, record.name, record.rdtype)
    return answer_texts(response, record.name, record.rdtype) == record.rdatas
