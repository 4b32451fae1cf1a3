"""Domain-name rules: parse_domains' accept/reject matrix and the derived names."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certok.errors import InvalidDomain
from certok.names import (
    MAX_NAMES,
    base_name,
    challenge_name,
    is_wildcard,
    parse_domains,
    registrable_domain,
    relative_challenge_name,
    relative_name,
)

# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("www.customer.test", ["www.customer.test"]),
        (
            "www.customer.test,*.customer.test,customer.test",
            ["www.customer.test", "*.customer.test", "customer.test"],
        ),
        # spaces around commas, one trailing dot dropped, order kept
        (
            " b.example.com , a.example.com. ,c.example.com",
            ["b.example.com", "a.example.com", "c.example.com"],
        ),
        ("WWW.Example.COM", ["www.example.com"]),
        ("*.EXAMPLE.com", ["*.example.com"]),
        ("bücher.example", ["xn--bcher-kva.example"]),
        ("BÜCHER.example", ["xn--bcher-kva.example"]),
        ("*.例子.测试", ["*.xn--fsqu00a.xn--0zwm56d"]),
        # UTS #46 maps the ideographic full stop and fullwidth letters
        ("例子。测试", ["xn--fsqu00a.xn--0zwm56d"]),
        ("\uff57\uff57\uff57.example.com", ["www.example.com"]),  # fullwidth www
        # non-transitional processing (IDNA 2008): ß stays ß
        ("faß.de", ["xn--fa-hia.de"]),
        # an A-label as given is kept
        ("xn--bcher-kva.example", ["xn--bcher-kva.example"]),
        ("demo.fastpix.cn", ["demo.fastpix.cn"]),
        ("www.example.co.uk,example.co.uk", ["www.example.co.uk", "example.co.uk"]),
        # numbers are fine anywhere but the last label
        ("1.2.3.4.example.com", ["1.2.3.4.example.com"]),
        ("123.example.com", ["123.example.com"]),
        ("a-b.c-d.example", ["a-b.c-d.example"]),
        ("x.y", ["x.y"]),  # unknown TLD: the PSL default rule "*" makes x.y registrable
        ("a" * 63 + ".example.com", ["a" * 63 + ".example.com"]),
    ],
)
def test_accepted(raw: str, expected: list[str]) -> None:
    assert parse_domains(raw) == expected


def test_longest_allowed_name_is_253_octets() -> None:
    three_full_labels = ("a" * 63 + ".") * 3
    longest = three_full_labels + "d" * 49 + ".example.com"
    assert len(longest) == 253
    assert parse_domains(longest) == [longest]
    with pytest.raises(InvalidDomain) as caught:
        parse_domains(three_full_labels + "d" * 50 + ".example.com")
    assert "254 octets" in caught.value.message


def test_max_names_is_the_limit_not_one_less() -> None:
    raw = ",".join(f"n{i}.example.com" for i in range(MAX_NAMES))
    assert len(parse_domains(raw)) == MAX_NAMES
    assert parse_domains("a.example.com,b.example.com", max_names=2) == [
        "a.example.com",
        "b.example.com",
    ]


def test_apex_and_wildcard_are_different_names() -> None:
    assert parse_domains("example.com,*.example.com") == ["example.com", "*.example.com"]


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "bad", "says"),
    [
        # wildcards
        ("*foo.example.com", "*foo.example.com", "whole leftmost label"),
        ("a.*.example.com", "a.*.example.com", "whole leftmost label"),
        ("*.a.*.example.com", "*.a.*.example.com", "whole leftmost label"),
        ("*", "*", "whole leftmost label"),
        ("**.example.com", "**.example.com", "whole leftmost label"),
        ("example.*", "example.*", "whole leftmost label"),
        ("*.com", "*.com", "public suffix"),
        ("*.co.uk", "*.co.uk", "public suffix"),
        ("*.github.io", "*.github.io", "public suffix"),
        # IP addresses in any spelling
        ("127.0.0.1", "127.0.0.1", "IP address"),
        ("192.0.2.1.", "192.0.2.1.", "IP address"),
        ("::1", "::1", "IP address"),
        ("[::1]", "[::1]", "IP address"),
        ("2001:db8::1", "2001:db8::1", "IP address"),
        ("2130706433", "2130706433", "IP address"),
        ("127.1", "127.1", "IP address"),
        ("www.example.123", "www.example.123", "IP address"),
        # labels
        ("a..example.com", "a..example.com", "empty label"),
        (".example.com", ".example.com", "empty label"),
        ("example.com..", "example.com..", "empty label"),
        ("a" * 64 + ".example.com", "a" * 64, "at most 63"),
        ("-www.example.com", "-www.example.com", "hyphen"),
        ("www-.example.com", "www-.example.com", "hyphen"),
        ("ab--cd.example.com", "ab--cd.example.com", "reserved"),
        ("xn--zz.example.com", "xn--zz.example.com", "punycode"),
        # characters
        ("a_b.example.com", "a_b.example.com", "underscore"),
        ("_acme-challenge.example.com", "_acme-challenge.example.com", "underscore"),
        ("www example.com", "www example.com", "character ' '"),
        ("example.com:443", "example.com:443", "character ':'"),
        ("https://example.com", "https://example.com", "character ':'"),
        ("exa!mple.com", "exa!mple.com", "character '!'"),
        ("a\u200db.example.com", "a\\u200db.example.com", "internationalised"),
        # single labels and public suffixes
        ("localhost", "localhost", "single-label"),
        ("intranet.", "intranet.", "single-label"),
        ("com", "com", "public suffix"),
        ("co.uk", "co.uk", "public suffix"),
        ("github.io", "github.io", "public suffix"),
        ("com.cn", "com.cn", "public suffix"),
    ],
)
def test_refused_with_a_message_naming_the_name(raw: str, bad: str, says: str) -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains(raw)
    assert f"'{bad}" in caught.value.message
    assert says in caught.value.message


def test_refused_name_is_named_even_among_good_ones() -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("www.example.com,bad_name.example.com,example.com")
    assert "'bad_name.example.com'" in caught.value.message


def test_name_longer_than_253_octets() -> None:
    name = ".".join(["abcdefghi"] * 26) + ".com"  # 26*10 - 1 + 4 = 263
    with pytest.raises(InvalidDomain) as caught:
        parse_domains(name)
    assert "263 octets" in caught.value.message
    assert "at most 253" in caught.value.message
    assert f"'{name[:40]}" in caught.value.message  # named, if shortened


def test_idn_length_counts_the_a_label() -> None:
    # 30 ü characters are 30 code points but a 38+-octet A-label; 60 of them exceed 63 octets.
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("ü" * 60 + ".example")
    assert "at most 63" in caught.value.message


def test_huge_input_is_refused_without_choking() -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("a" * 100_000 + ".com")
    assert "characters long" in caught.value.message
    assert len(caught.value.message) < 300


def test_duplicates_after_normalisation_are_refused() -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("www.example.com,WWW.Example.com.")
    assert "'WWW.Example.com.'" in caught.value.message
    assert "same name" in caught.value.message
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("bücher.example,xn--bcher-kva.example")
    assert "'xn--bcher-kva.example'" in caught.value.message
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("a.example.com,a.example.com")
    assert "'a.example.com' is listed twice" in caught.value.message


@pytest.mark.parametrize("raw", ["", "   ", ","])
def test_empty_list_is_refused(raw: str) -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains(raw)
    assert "like www.example.com" in caught.value.message


def test_empty_entry_is_refused() -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("a.example.com,,b.example.com")
    assert "extra comma" in caught.value.message
    with pytest.raises(InvalidDomain):
        parse_domains("a.example.com,")


def test_more_than_max_names_is_refused() -> None:
    raw = ",".join(f"n{i}.example.com" for i in range(MAX_NAMES + 1))
    with pytest.raises(InvalidDomain) as caught:
        parse_domains(raw)
    assert f"at most {MAX_NAMES}" in caught.value.message
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("a.example.com,b.example.com,c.example.com", max_names=2)
    assert "at most 2" in caught.value.message


def test_every_error_is_invalid_domain_with_its_status() -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("localhost")
    assert caught.value.http_status == 400
    assert caught.value.code == InvalidDomain.code


def test_control_characters_are_shown_escaped() -> None:
    with pytest.raises(InvalidDomain) as caught:
        parse_domains("bad\nname.example.com")
    assert "\n" not in caught.value.message
    assert "bad\\nname.example.com" in caught.value.message


_CANONICAL = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]*[a-z][a-z0-9-]*")


@settings(max_examples=400, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from("abcxyz019-._*,: AÜü例。\u200d\uff0e") | st.characters(),
        max_size=60,
    )
)
def test_any_input_gives_canonical_names_or_invalid_domain(raw: str) -> None:
    try:
        names = parse_domains(raw)
    except InvalidDomain as exc:
        assert exc.message
        return
    for name in names:
        assert _CANONICAL.fullmatch(name), name
        assert len(name) <= 253
    assert parse_domains(",".join(names)) == names


_ldh_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--"
)
_unicode_label = st.text(alphabet="äöüßéçñ例子测试дом", min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(_ldh_label | _unicode_label, min_size=1, max_size=4), min_size=1, max_size=20
    ),
    st.booleans(),
)
def test_well_formed_names_are_accepted_canonical(
    label_lists: list[list[str]], wildcard: bool
) -> None:
    given_names = [
        ("*." if wildcard else "") + ".".join(labels) + ".Example.COM." for labels in label_lists
    ]
    if len({name.lower() for name in given_names}) < len(given_names):
        return  # duplicates are a separate rule
    try:
        names = parse_domains(" , ".join(given_names))
    except InvalidDomain as exc:
        # Distinct spellings may still fold to one name (Unicode case, ß vs ss is not one).
        assert "same name" in exc.message
        return
    assert len(names) == len(given_names)
    for name, given_name in zip(names, given_names, strict=True):
        assert _CANONICAL.fullmatch(name), name
        assert name.endswith(".example.com")
        assert is_wildcard(name) is wildcard
        assert name.count(".") == given_name.count(".") - 1  # the trailing dot is gone
    assert parse_domains(",".join(names)) == names


# --- derived names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "base", "wildcard", "challenge", "registrable", "relative"),
    [
        (
            "www.customer.test",
            "www.customer.test",
            False,
            "_acme-challenge.www.customer.test",
            "customer.test",
            "_acme-challenge.www",
        ),
        (
            "customer.test",
            "customer.test",
            False,
            "_acme-challenge.customer.test",
            "customer.test",
            "_acme-challenge",
        ),
        (
            "*.customer.test",
            "customer.test",
            True,
            "_acme-challenge.customer.test",
            "customer.test",
            "_acme-challenge",
        ),
        (
            "*.www.customer.test",
            "www.customer.test",
            True,
            "_acme-challenge.www.customer.test",
            "customer.test",
            "_acme-challenge.www",
        ),
        (
            "demo.fastpix.cn",
            "demo.fastpix.cn",
            False,
            "_acme-challenge.demo.fastpix.cn",
            "fastpix.cn",
            "_acme-challenge.demo",
        ),
        (
            "www.example.co.uk",
            "www.example.co.uk",
            False,
            "_acme-challenge.www.example.co.uk",
            "example.co.uk",
            "_acme-challenge.www",
        ),
        (
            "a.b.example.com.cn",
            "a.b.example.com.cn",
            False,
            "_acme-challenge.a.b.example.com.cn",
            "example.com.cn",
            "_acme-challenge.a.b",
        ),
        (
            "*.xn--fsqu00a.xn--0zwm56d",
            "xn--fsqu00a.xn--0zwm56d",
            True,
            "_acme-challenge.xn--fsqu00a.xn--0zwm56d",
            "xn--fsqu00a.xn--0zwm56d",
            "_acme-challenge",
        ),
        (
            # a private-section suffix: the customer owns me.github.io, not github.io
            "blog.me.github.io",
            "blog.me.github.io",
            False,
            "_acme-challenge.blog.me.github.io",
            "me.github.io",
            "_acme-challenge.blog",
        ),
    ],
)
def test_derived_names(
    name: str, base: str, wildcard: bool, challenge: str, registrable: str, relative: str
) -> None:
    assert base_name(name) == base
    assert is_wildcard(name) is wildcard
    assert challenge_name(name) == challenge
    assert registrable_domain(name) == registrable
    assert relative_challenge_name(name) == relative


def test_apex_and_wildcard_share_one_challenge_name() -> None:
    assert challenge_name("*.example.com") == challenge_name("example.com")


def test_registrable_domain_of_a_public_suffix_is_an_error() -> None:
    with pytest.raises(InvalidDomain) as caught:
        registrable_domain("co.uk")
    assert "'co.uk'" in caught.value.message


def test_relative_name() -> None:
    assert relative_name("_acme-challenge.www.customer.test.") == "_acme-challenge.www"
    assert relative_name("customer.test") == "@"


def test_parsed_names_round_trip() -> None:
    # The canonical form is a fixed point: feeding it back changes nothing.
    raw = "Bücher.Example,*.例子.测试,WWW.example.co.uk."
    once = parse_domains(raw)
    assert parse_domains(",".join(once)) == once


# --- the Public Suffix List is local ----------------------------------------------------------

_NO_NETWORK = textwrap.dedent(
    """
    import sys

    def refuse_network(event, args):
        if event.startswith(("socket.", "urllib.")) or event == "http.client.connect":
            raise RuntimeError(f"network use: {event} {args!r}")

    sys.addaudithook(refuse_network)
    """
)


def _run_without_network(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _NO_NETWORK + body],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_public_suffix_list_is_never_fetched() -> None:
    done = _run_without_network(
        "import certok.names as n\n"
        "from publicsuffixlist import PublicSuffixList\n"
        "PublicSuffixList()\n"
        "assert n.registrable_domain('www.example.co.uk') == 'example.co.uk'\n"
        "assert n.parse_domains('*.例子.测试,demo.fastpix.cn')\n"
        "print('ok')"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_network_guard_itself_works() -> None:
    # Without this, the test above could pass because the hook catches nothing.
    done = _run_without_network("import socket\nsocket.getaddrinfo('127.0.0.1', 53)")
    assert done.returncode != 0
    assert "network use: socket.getaddrinfo" in done.stderr
