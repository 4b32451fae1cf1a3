"""The test DNS server of dnsfake_server, taught A and AAAA answers, including rebinding ones.

``addresses`` maps a name to the addresses it resolves to; ``rebinding`` maps a name to a list
of answers given in turn (the last one repeats), the way a rebinding attacker's server answers
a first lookup with one address and later lookups with another.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset

from tests.functional.dnsfake_server import TTL, FakeNameserver, canonical

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class FakeAddressNameserver(FakeNameserver):
    def __init__(
        self,
        zones: Iterable[str],
        addresses: dict[str, list[str]] | None = None,
        *,
        rebinding: dict[str, list[list[str]]] | None = None,
    ) -> None:
        super().__init__(zones)
        self.addresses = {canonical(k): list(v) for k, v in (addresses or {}).items()}
        self.rebinding = {canonical(k): [list(a) for a in v] for k, v in (rebinding or {}).items()}
        self._answered: dict[str, int] = {}

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        question = query.question[0]
        qname = canonical(question.name.to_text())
        if question.rdtype not in _ADDRESS_TYPES or not self._knows(qname):
            return super().answer(query)
        self.queries.append((qname, dns.rdatatype.to_text(question.rdtype)))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        version = 4 if question.rdtype == dns.rdatatype.A else 6
        chosen = [a for a in self._current(qname, question.rdtype) if _version(a) == version]
        if chosen:
            kind = dns.rdatatype.to_text(question.rdtype)
            response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", kind, *chosen))
        else:
            zone = self._zone_of(qname)
            assert zone is not None
            response.authority.append(self._apex_rrset(zone, dns.rdatatype.SOA))
        return response

    def _knows(self, qname: str) -> bool:
        return qname in self.addresses or qname in self.rebinding

    def _current(self, qname: str, rdtype: dns.rdatatype.RdataType) -> list[str]:
        if qname not in self.rebinding:
            return self.addresses[qname]
        # Count A and AAAA lookups separately, so "first answer" means the first of each type.
        key = f"{qname}/{rdtype}"
        turn = self._answered.get(key, 0)
        self._answered[key] = turn + 1
        answers = self.rebinding[qname]
        return answers[min(turn, len(answers) - 1)]


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version
