"""Which IP addresses certok may connect to on a customer's behalf: the SSRF address policy.

A pre-check makes certok fetch a URL the customer controls (and every URL it redirects to), so
without a policy anyone could make certok probe its own loopback, its cloud metadata service
(169.254.169.254) or the private network it runs in. This module decides, for one address,
whether it is an ordinary global unicast address; everything else is refused with the purpose
of the range it falls in, so the refusal tells the user what they pointed at.

The table is certok's own, not ``ipaddress``'s ``is_global``: Python 3.11 calls
``64:ff9b::7f00:1`` (NAT64 for 127.0.0.1), ``2002:7f00:1::`` (6to4 for 127.0.0.1),
``224.0.0.1``, ``ff02::1``, ``192.0.0.9`` and ``3fff::1`` global. Addresses that carry an IPv4
address inside (IPv4-mapped, NAT64, 6to4, Teredo) are judged by the address inside.

Also here: ``parse_host_literal``, which recognises the IP literals URL parsers and
``inet_aton`` accept in a host (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``,
``[::1]``), so a redirect cannot smuggle an address past a check that only knows the dotted
quad.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """certok will not connect to this address; ``reason`` says what the address is."""

    def __init__(self, address: str, purpose: str) -> None:
        self.address = address
        # A noun phrase ("a loopback address") so callers can say "x resolves to <address>,
        # <purpose>" as well as "<address> is <purpose>".
        self.purpose = purpose
        self.reason = f"{address} is {purpose}"
        super().__init__(self.reason)


class _Kind(enum.Enum):
    REFUSED = "refused"
    LOOPBACK = "loopback"  # opened by allow_loopback
    PRIVATE = "private"  # opened by allow_private
    MAPPED = "mapped"  # ::ffff:a.b.c.d: judged as a.b.c.d, openings included
    NAT64 = "nat64"  # 64:ff9b::a.b.c.d: judged as a.b.c.d
    SIX_TO_FOUR = "6to4"  # 2002:aabb:ccdd::/48: judged as a.b.c.d
    TEREDO = "teredo"  # always refused; the reason names the client address inside


@dataclass(frozen=True)
class _Range:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    kind: _Kind
    purpose: str


def _ranges(entries: list[tuple[str, _Kind, str]]) -> tuple[_Range, ...]:
    built = [_Range(ipaddress.ip_network(net), kind, purpose) for net, kind, purpose in entries]
    # Longest prefix first, so the first match is the most specific purpose (192.0.0.170/31
    # before 192.0.0.0/24, Teredo before 2001::/23).
    return tuple(sorted(built, key=lambda r: r.network.prefixlen, reverse=True))


_R, _L, _P = _Kind.REFUSED, _Kind.LOOPBACK, _Kind.PRIVATE

# The IANA IPv4 Special-Purpose Address Registry, plus multicast and limited broadcast.
# Ranges the registry marks globally reachable (192.0.0.9, AS112, AMT) are refused too: nothing
# a customer's web server needs lives there.
_IPV4_RANGES = _ranges(
    [
        ("0.0.0.0/8", _R, 'a "this network" address (RFC 791)'),
        ("10.0.0.0/8", _P, "a private address (RFC 1918)"),
        ("100.64.0.0/10", _R, "a carrier-grade NAT shared address (RFC 6598)"),
        ("127.0.0.0/8", _L, "a loopback address"),
        ("169.254.0.0/16", _R, "a link-local address (RFC 3927; cloud metadata lives here)"),
        ("172.16.0.0/12", _P, "a private address (RFC 1918)"),
        ("192.0.0.0/24", _R, "an IETF protocol assignment (RFC 6890)"),
        ("192.0.0.0/29", _R, "an IPv4 service continuity address (DS-Lite, RFC 7335)"),
        ("192.0.0.170/31", _R, "a NAT64 discovery address (RFC 7050)"),
        ("192.0.2.0/24", _R, "a documentation address (TEST-NET-1, RFC 5737)"),
        ("192.31.196.0/24", _R, "an AS112 DNS sink address (RFC 7535)"),
        ("192.52.193.0/24", _R, "an AMT relay address (RFC 7450)"),
        ("192.88.99.0/24", _R, "a deprecated 6to4 relay anycast address (RFC 7526)"),
        ("192.168.0.0/16", _P, "a private address (RFC 1918)"),
        ("192.175.48.0/24", _R, "an AS112 DNS sink address (RFC 7534)"),
        ("198.18.0.0/15", _R, "a benchmarking address (RFC 2544)"),
        ("198.51.100.0/24", _R, "a documentation address (TEST-NET-2, RFC 5737)"),
        ("203.0.113.0/24", _R, "a documentation address (TEST-NET-3, RFC 5737)"),
        ("224.0.0.0/4", _R, "a multicast address"),
        ("240.0.0.0/4", _R, "a reserved address (240.0.0.0/4, RFC 1112)"),
        ("255.255.255.255/32", _R, "the limited broadcast address"),
    ]
)

# The IANA IPv6 Special-Purpose Address Registry, plus multicast, the deprecated site-local
# and IPv4-compatible ranges. Anything outside 2000::/3 not listed here is refused as well.
_IPV6_RANGES = _ranges(
    [
        ("::/128", _R, "the unspecified address"),
        ("::1/128", _L, "the loopback address"),
        ("::/96", _R, "a deprecated IPv4-compatible address (RFC 4291)"),
        ("::ffff:0:0/96", _Kind.MAPPED, "an IPv4-mapped form"),
        ("::ffff:0:0:0/96", _R, "an IPv4-translated address (SIIT, RFC 2765)"),
        ("64:ff9b::/96", _Kind.NAT64, "a NAT64 form"),
        ("64:ff9b:1::/48", _R, "a local-use NAT64 address (RFC 8215)"),
        ("100::/64", _R, "a discard-only address (RFC 6666)"),
        ("100:0:0:1::/64", _R, "a dummy address (RFC 9780)"),
        ("2001::/23", _R, "an IETF protocol assignment (RFC 2928)"),
        ("2001::/32", _Kind.TEREDO, "a Teredo tunnel address (RFC 4380)"),
        ("2001:2::/48", _R, "a benchmarking address (RFC 5180)"),
        ("2001:3::/32", _R, "an AMT address (RFC 7450)"),
        ("2001:4:112::/48", _R, "an AS112 DNS sink address (RFC 7535)"),
        ("2001:10::/28", _R, "a deprecated ORCHID address (RFC 4843)"),
        ("2001:20::/28", _R, "an ORCHIDv2 address (RFC 7343)"),
        ("2001:30::/28", _R, "a drone remote ID address (RFC 9374)"),
        ("2001:db8::/32", _R, "a documentation address (RFC 3849)"),
        ("2002::/16", _Kind.SIX_TO_FOUR, "a 6to4 form"),
        ("2620:4f:8000::/48", _R, "an AS112 DNS sink address (RFC 7534)"),
        ("3fff::/20", _R, "a documentation address (RFC 9637)"),
        ("5f00::/16", _R, "an SRv6 segment identifier (RFC 9602)"),
        ("fc00::/7", _P, "a unique local (private) address (RFC 4193)"),
        ("fe80::/10", _R, "a link-local address"),
        ("fec0::/10", _R, "a deprecated site-local address (RFC 3879)"),
        ("ff00::/8", _R, "a multicast address"),
    ]
)

_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses certok may connect to. The defaults are the production policy."""

    # Tests only: permits 127.0.0.0/8 and ::1 (and ::ffff:127.x.y.z), nothing else.
    allow_loopback: bool = False
    # Tests and labs only: permits 10/8, 172.16/12, 192.168/16 and fc00::/7.
    allow_private: bool = False

    def check(self, address: str | IPAddress) -> IPAddress:
        """Return the parsed address if certok may connect to it, else raise AddressRefused."""
        text = str(address)
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            raise AddressRefused(text, "not an IP address") from None
        if isinstance(parsed, ipaddress.IPv6Address):
            if parsed.scope_id is not None:
                # A zone index only means something for link-local and site-local scopes.
                raise AddressRefused(text, "an address with a zone index")
            self._check_v6(parsed)
        else:
            self._check_v4(parsed, openings=True)
        return parsed

    def _opened(self, kind: _Kind) -> bool:
        return (kind is _Kind.LOOPBACK and self.allow_loopback) or (
            kind is _Kind.PRIVATE and self.allow_private
        )

    def _check_v4(self, address: ipaddress.IPv4Address, *, openings: bool) -> None:
        found = _match(_IPV4_RANGES, address)
        if found is None or (openings and self._opened(found.kind)):
            return
        raise AddressRefused(str(address), found.purpose)

    def _check_v6(self, address: ipaddress.IPv6Address) -> None:
        found = _match(_IPV6_RANGES, address)
        if found is None:
            if address not in _GLOBAL_UNICAST_V6:
                raise AddressRefused(
                    str(address), "outside the global unicast range 2000::/3 (reserved by IETF)"
                )
            return
        if found.kind is _Kind.TEREDO:
            assert address.teredo is not None
            _server, client = address.teredo
            raise AddressRefused(str(address), f"{found.purpose} for client {client}")
        embedded = _embedded_ipv4(address, found.kind)
        if embedded is not None:
            # Only the plain IPv4-mapped form is the same socket address as the IPv4 one, so
            # only it inherits allow_loopback / allow_private; a NAT64 or 6to4 form of
            # 127.0.0.1 goes through a gateway and is never "loopback" for certok.
            try:
                self._check_v4(embedded, openings=found.kind is _Kind.MAPPED)
            except AddressRefused as inner:
                raise AddressRefused(
                    str(address), f"{found.purpose} of {inner.address}, {inner.purpose}"
                ) from None
            return
        if self._opened(found.kind):
            return
        raise AddressRefused(str(address), found.purpose)


def _match(ranges: tuple[_Range, ...], address: IPAddress) -> _Range | None:
    return next((r for r in ranges if address in r.network), None)


def _embedded_ipv4(address: ipaddress.IPv6Address, kind: _Kind) -> ipaddress.IPv4Address | None:
    if kind is _Kind.MAPPED:
        return address.ipv4_mapped
    if kind is _Kind.SIX_TO_FOUR:
        return address.sixtofour
    if kind is _Kind.NAT64:
        # RFC 6052 §2.2: with a /96 prefix the IPv4 address is the last 32 bits.
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


# --- host literals ---------------------------------------------------------------------------

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")
_DECIMAL_DIGITS = frozenset("0123456789")


def parse_host_literal(host: str) -> IPAddress | None:
    """The address a URL host means if it is an IP literal in any spelling; None for a name.

    Besides dotted quads and IPv6 (bare or in brackets), this takes the forms ``inet_aton``,
    curl and browsers (WHATWG URL) accept: one to four parts, each decimal, octal (leading
    ``0``) or hex (``0x``), the last part filling the remaining bytes, one trailing dot
    allowed. ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1`` all mean 127.0.0.1.
    A host that merely looks numeric but is no valid literal (``1.2.3.999``) returns None;
    callers that need a DNS name must still refuse a numeric last label.
    """
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return _loose_ipv4(host)


def _loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    text = host[:-1] if host.endswith(".") else host
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_ipv4_part(part) for part in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    *leading, last = values
    if any(n > 0xFF for n in leading) or last >= 256 ** (5 - len(values)):
        return None
    value = last
    for index, part in enumerate(leading):
        value |= part << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_part(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        # WHATWG: a bare "0x" is zero.
        return 0 if not digits else _digits(digits, _HEX_DIGITS, 16)
    if len(part) > 1 and part.startswith("0"):
        return _digits(part[1:], _OCTAL_DIGITS, 8)
    return _digits(part, _DECIMAL_DIGITS, 10)


def _digits(text: str, allowed: frozenset[str], base: int) -> int | None:
    if not text or not set(text) <= allowed:
        return None
    return int(text, base)
