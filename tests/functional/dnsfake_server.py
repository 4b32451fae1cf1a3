"""A small authoritative DNS server for tests: answers CNAME / NODATA / NXDOMAIN from dicts.

It runs its own asyncio loop in a daemon thread on 127.0.0.1:<ephemeral>, so it keeps
answering while a test drives its own event loop, and so a real unbound can use it as a stub.
It answers like a well-behaved authoritative server (AA=1, SOA in AUTHORITY on negative
answers, NODATA for empty non-terminals so QNAME minimisation works, REFUSED out of zone).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 1


def canonical(name: str) -> str:
    return name.strip().rstrip(".").lower()


@dataclass
class FakeZoneData:
    """What the server knows. Names are canonical (lowercase, no trailing dot)."""

    zones: tuple[str, ...]
    cnames: dict[str, str] = field(default_factory=dict)  # owner -> target
    existing: set[str] = field(default_factory=set)  # names with data but no CNAME
    servfail: set[str] = field(default_factory=set)  # answer SERVFAIL for these
    # Put the whole in-data CNAME chain in the answer to a CNAME query, as some resolvers do.
    chase: bool = False


class FakeNameserver:
    """Use as a context manager; ``port`` is valid inside it; ``queries`` logs (name, type)."""

    def __init__(
        self,
        zones: Iterable[str],
        cnames: dict[str, str] | None = None,
        *,
        existing: Iterable[str] = (),
        servfail: Iterable[str] = (),
        chase: bool = False,
    ) -> None:
        self.data = FakeZoneData(
            zones=tuple(canonical(z) for z in zones),
            cnames={canonical(k): canonical(v) for k, v in (cnames or {}).items()},
            existing={canonical(n) for n in existing},
            servfail={canonical(n) for n in servfail},
            chase=chase,
        )
        self.queries: list[tuple[str, str]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._transport: asyncio.DatagramTransport | None = None

    def add_cname(self, owner: str, target: str) -> None:
        self.data.cnames[canonical(owner)] = canonical(target)

    def queries_for(self, name: str) -> list[str]:
        return [qtype for qname, qtype in list(self.queries) if qname == canonical(name)]

    def __enter__(self) -> FakeNameserver:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                transport, _ = loop.run_until_complete(
                    loop.create_datagram_endpoint(
                        lambda: _Protocol(self), local_addr=("127.0.0.1", 0)
                    )
                )
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            self._transport = transport
            self.port = transport.get_extra_info("sockname")[1]
            ready.set()
            loop.run_forever()
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-nameserver", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fake nameserver did not start within 5 s")
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # --- answer logic ---------------------------------------------------------------------
    def answer(self, query: dns.message.Message) -> dns.message.Message:
        question = query.question[0]
        qname = canonical(question.name.to_text())
        qtype = question.rdtype
        self.queries.append((qname, dns.rdatatype.to_text(qtype)))
        # make_response copies the question verbatim (0x20 case randomisation survives).
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        zone = self._zone_of(qname)
        if zone is None:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if qname in self.data.servfail:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if qname in self.data.cnames:
            self._add_chain(response, qname, question.name, chase=self.data.chase)
            return response
        if qname == zone and qtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            response.answer.append(self._apex_rrset(zone, qtype, question.name))
            return response
        if not self._exists(qname, zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._apex_rrset(zone, dns.rdatatype.SOA))
        return response

    def _zone_of(self, qname: str) -> str | None:
        inside = [z for z in self.data.zones if qname == z or qname.endswith("." + z)]
        return max(inside, key=len, default=None)

    def _exists(self, qname: str, zone: str) -> bool:
        if qname == zone or qname in self.data.existing:
            return True
        # An empty non-terminal (an ancestor of a name with data) exists: RFC 8020.
        owners = [*self.data.cnames, *self.data.existing]
        return any(owner.endswith("." + qname) for owner in owners)

    def _add_chain(
        self, response: dns.message.Message, qname: str, wire_name: dns.name.Name, *, chase: bool
    ) -> None:
        owner_name, current, seen = wire_name, qname, set()
        while current in self.data.cnames and current not in seen:
            seen.add(current)
            target = self.data.cnames[current]
            response.answer.append(
                dns.rrset.from_text(owner_name, TTL, "IN", "CNAME", target + ".")
            )
            if not chase:
                return
            owner_name, current = dns.name.from_text(target), target

    @staticmethod
    def _apex_rrset(
        zone: str, rdtype: dns.rdatatype.RdataType, owner: dns.name.Name | None = None
    ) -> dns.rrset.RRset:
        name = owner or dns.name.from_text(zone)
        if rdtype == dns.rdatatype.NS:
            return dns.rrset.from_text(name, TTL, "IN", "NS", f"ns.{zone}.")
        return dns.rrset.from_text(
            name, TTL, "IN", "SOA", f"ns.{zone}. hostmaster.{zone}. 1 60 60 60 {TTL}"
        )


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: FakeNameserver) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return  # not DNS: a test server may simply drop it
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return
        response = self.server.answer(query)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(max_size=65535), addr)
