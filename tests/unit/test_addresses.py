"""The address policy's matrix and the IP-literal parser (pure logic, no network)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certok.prechecks.addresses import (
    _IPV4_RANGES,
    _IPV6_RANGES,
    AddressPolicy,
    AddressRefused,
    parse_host_literal,
)

PRODUCTION = AddressPolicy()
LOOPBACK = AddressPolicy(allow_loopback=True)
PRIVATE = AddressPolicy(allow_private=True)


def refusal(address: str, policy: AddressPolicy = PRODUCTION) -> AddressRefused:
    with pytest.raises(AddressRefused) as caught:
        policy.check(address)
    return caught.value


# --- every special-purpose range is refused, each with its purpose -----------------------------


@pytest.mark.parametrize(
    ("address", "purpose"),
    [
        # IPv4
        ("0.0.0.0", '"this network"'),
        ("0.255.255.255", '"this network"'),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("169.254.169.254", "link-local"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.0.0.1", "DS-Lite"),
        ("192.0.0.9", "IETF protocol assignment"),
        ("192.0.0.170", "NAT64 discovery"),
        ("192.0.2.1", "TEST-NET-1"),
        ("192.31.196.1", "AS112"),
        ("192.52.193.1", "AMT"),
        ("192.88.99.1", "6to4 relay"),
        ("192.168.1.1", "private"),
        ("192.175.48.1", "AS112"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("198.51.100.1", "TEST-NET-2"),
        ("203.0.113.1", "TEST-NET-3"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.254", "reserved"),
        ("255.255.255.255", "limited broadcast"),
        # IPv6
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::7f00:1", "IPv4-compatible"),
        ("::ffff:0:a00:1", "IPv4-translated"),
        ("64:ff9b:1::a00:1", "local-use NAT64"),
        ("100::1", "discard-only"),
        ("100:0:0:1::1", "dummy"),
        ("2001:1::1", "IETF protocol assignment"),
        ("2001:2::1", "benchmarking"),
        ("2001:3::1", "AMT"),
        ("2001:4:112::1", "AS112"),
        ("2001:10::1", "ORCHID"),
        ("2001:20::1", "ORCHIDv2"),
        ("2001:30::1", "drone"),
        ("2001:db8::1", "documentation"),
        ("2620:4f:8000::1", "AS112"),
        ("3fff::1", "documentation"),
        ("3fff:fff::1", "documentation"),
        ("5f00::1", "SRv6"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("1::", "outside the global unicast range"),
        ("4000::1", "outside the global unicast range"),
    ],
)
def test_special_purpose_addresses_are_refused_with_their_purpose(
    address: str, purpose: str
) -> None:
    refused = refusal(address)
    assert purpose in refused.purpose
    assert refused.reason == f"{refused.address} is {refused.purpose}"


def test_reason_reads_as_a_sentence() -> None:
    assert refusal("127.0.0.1").reason == "127.0.0.1 is a loopback address"
    assert refusal("10.0.0.5").reason == "10.0.0.5 is a private address (RFC 1918)"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "64:ff9b::127.0.0.1",
        "2002:7f00:1::",
        "2002:7f00:1:1234::5",
        "10.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::10.0.0.1",
        "2002:a00:1::",
    ],
)
def test_ipv4_inside_ipv6_is_judged_by_the_ipv4(address: str) -> None:
    inner = "127.0.0.1" if "7f00" in address or "127." in address else "10.0.0.1"
    kind = "a loopback address" if inner == "127.0.0.1" else "a private address"
    refused = refusal(address)
    assert inner in refused.reason
    assert kind in refused.reason


@pytest.mark.parametrize(
    ("address", "form"),
    [
        ("::ffff:127.0.0.1", "an IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("::ffff:10.0.0.1", "an IPv4-mapped form of 10.0.0.1, a private address"),
        ("64:ff9b::7f00:1", "a NAT64 form of 127.0.0.1, a loopback address"),
        ("64:ff9b::a00:1", "a NAT64 form of 10.0.0.1, a private address"),
        ("2002:7f00:1::", "a 6to4 form of 127.0.0.1, a loopback address"),
        ("2002:a00:1::", "a 6to4 form of 10.0.0.1, a private address"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 form of 169.254.169.254, a link-local address"),
        ("2002:c000:221::", "a 6to4 form of 192.0.2.33, a documentation address"),
    ],
)
def test_wrapped_forms_name_the_wrapper_and_the_address_inside(address: str, form: str) -> None:
    assert form in refusal(address).reason


def _teredo(client: str) -> str:
    """A Teredo address for a client (the client address is stored inverted, RFC 4380)."""
    server = int(ipaddress.IPv4Address("65.54.227.120"))
    inverted = int(ipaddress.IPv4Address(client)) ^ 0xFFFF_FFFF
    value = (0x2001_0000 << 96) | (server << 64) | (0x8000_63BF << 32) | inverted
    return str(ipaddress.IPv6Address(value))


@pytest.mark.parametrize("client", ["127.0.0.1", "10.0.0.1", "8.8.8.8"])
def test_teredo_is_refused_naming_the_client_inside(client: str) -> None:
    refused = refusal(_teredo(client))
    assert "Teredo" in refused.reason
    assert f"client {client}" in refused.reason


@pytest.mark.parametrize(
    "address",
    [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "100.63.255.255",  # just below CGNAT
        "100.128.0.0",  # just above CGNAT
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.255",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2a00:1450:4001:80b::200e",
        "2001:200::1",  # just above 2001::/23
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 for a public address
        "2002:808:808::1",  # 6to4 for a public address
        "3fff:1000::1",  # just above 3fff::/20
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    checked = PRODUCTION.check(address)
    assert checked == ipaddress.ip_address(address)


def test_check_returns_the_parsed_address() -> None:
    assert PRODUCTION.check("8.8.8.8") == ipaddress.IPv4Address("8.8.8.8")
    assert PRODUCTION.check(ipaddress.IPv6Address("2606:4700::1")) == ipaddress.IPv6Address(
        "2606:4700::1"
    )


@pytest.mark.parametrize("text", ["", "localhost", "1.2.3", "1.2.3.4.5", "::g", "0x7f000001"])
def test_non_addresses_are_refused(text: str) -> None:
    assert refusal(text).purpose == "not an IP address"


def test_zone_indexes_are_refused() -> None:
    assert "zone index" in refusal("fe80::1%eth0").reason
    assert "zone index" in refusal("2606:4700::1%1").reason


# --- the test openings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "::ffff:127.0.0.1"]
)
def test_allow_loopback_opens_loopback_and_its_mapped_form(address: str) -> None:
    assert LOOPBACK.check(address) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "fd00::1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::",
        "fe80::1",
        "64:ff9b::7f00:1",  # NAT64 of loopback goes through a gateway: not loopback
        "2002:7f00:1::",
        "::ffff:10.0.0.1",
    ],
)
def test_allow_loopback_never_opens_anything_else(address: str) -> None:
    refusal(address, LOOPBACK)


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "172.16.0.1", "192.168.0.1", "fd00::1", "::ffff:10.1.2.3"]
)
def test_allow_private_opens_private_ranges(address: str) -> None:
    assert PRIVATE.check(address) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "169.254.169.254", "100.64.0.1", "fe80::1"]
)
def test_allow_private_does_not_open_loopback_or_link_local(address: str) -> None:
    refusal(address, PRIVATE)


@given(st.ip_addresses())
def test_everything_python_calls_non_global_is_refused(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    # certok's table is stricter than is_global, never looser, except for the forms that wrap
    # an IPv4 address (mapped, NAT64, 6to4): certok judges the IPv4 inside, while Python
    # versions differ on them (3.11.10+ calls all of 2002::/16 non-global).
    if not address.is_global and not _wraps_ipv4(address):
        with pytest.raises(AddressRefused):
            PRODUCTION.check(str(address))


def _wraps_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    wrappers = ("::ffff:0:0/96", "64:ff9b::/96", "2002::/16")
    return any(address in ipaddress.ip_network(n) for n in wrappers if address.version == 6)


# --- IP literals in URL hosts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "means"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0000.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f.0.0x0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("167772161", "10.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("012.0.0.1", "10.0.0.1"),
        ("4294967295", "255.255.255.255"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("[2001:db8::1]", "2001:db8::1"),
    ],
)
def test_parse_host_literal_reads_every_spelling(host: str, means: str) -> None:
    assert parse_host_literal(host) == ipaddress.ip_address(means)


@pytest.mark.parametrize(
    "host",
    [
        "www.example.com",
        "localhost",
        "example",
        "127.0.0.1.example.com",
        "0x7f000001.example",
        "1.2.3.4.5",
        "1.2.3.999",
        "256.1.1.1",
        "4294967296",
        "08.0.0.1",
        "0x1g",
        "1..1",
        "[www.example.com]",
        "[127.0.0.1]",
        "",
    ],
)
def test_parse_host_literal_returns_none_for_names_and_non_literals(host: str) -> None:
    assert parse_host_literal(host) is None


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_parse_host_literal_agrees_with_inet_aton(value: int) -> None:
    # inet_aton is the C library's reading of the same forms: it must mean the same address.
    for spelling in (str(value), hex(value), f"0{value:o}"):
        expected = ipaddress.IPv4Address(socket.inet_aton(spelling))
        assert parse_host_literal(spelling) == expected


# --- docs/ssrf.md lists every range with the purpose a refusal names ----------------------------


def test_docs_ssrf_lists_every_range_of_the_policy_with_its_purpose() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ssrf.md").read_text()
    missing = [
        f"{r.network} ({r.purpose})"
        for r in (*_IPV4_RANGES, *_IPV6_RANGES)
        if f"| `{r.network}` | {r.purpose} |" not in doc
    ]
    assert not missing, (
        f"docs/ssrf.md lacks these ranges of certok/prechecks/addresses.py: {missing}"
    )
