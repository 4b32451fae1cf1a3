"""Domain-name rules: what certok accepts as a certificate name, and the names derived from it.

A certificate name arrives as the user typed it (``Bücher.Example.``, ``*.例子.测试``) and leaves
here in one canonical form: lowercase A-labels (punycode), no trailing dot, an optional ``*.``
leftmost label. Everything else in certok (delegation labels, CNAME checks, orders) works on
that form only, so two spellings of one name can never become two delegations.

The registrable domain comes from the Public Suffix List bundled with ``publicsuffixlist``; it
is read from the package's own data file and never fetched (a test holds that).
"""

from __future__ import annotations

import ipaddress
import re

import idna
from publicsuffixlist import PublicSuffixList

from certok.errors import InvalidDomain

MAX_NAMES = 100
CHALLENGE_LABEL = "_acme-challenge"
WILDCARD_PREFIX = "*."

# RFC 1035 §2.3.4 and RFC 1123 §2.1 limits, counted on the A-label (wire) form.
MAX_LABEL_OCTETS = 63
MAX_NAME_OCTETS = 253

# Letters, digits, hyphens; no hyphen at either end (RFC 1123 §2.1 "LDH" hostname label).
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_ALL_DIGITS = re.compile(r"[0-9]+")
# Longer input is refused before IDNA mapping (the idna package caps its input at 1024 too).
_MAX_INPUT_CHARS = 1024
# Names longer than this are cut in messages so one bad entry cannot balloon an error reply.
_SHOWN_NAME_CHARS = 80

# Constructed once: the constructor parses the bundled list file (no network, ~10k rules).
# The PSL default rule "*" applies to TLDs it does not list (accept_unknown), so names under
# test-only TLDs such as ``.test`` still have a registrable domain.
_PSL = PublicSuffixList(accept_unknown=True)


def parse_domains(raw: str, *, max_names: int = MAX_NAMES) -> list[str]:
    """Split a comma-separated list of names and return them canonical, in the order given.

    Raises InvalidDomain, naming the offending entry and saying what to do, for any name
    certok cannot issue for, for duplicates, for an empty list and for more than max_names.
    """
    if not raw or not raw.strip():
        raise InvalidDomain(
            "no domain names given: pass one or more names separated by commas, "
            "like www.example.com,example.com"
        )
    # Count before splitting so a huge parameter is refused before any per-name work.
    if raw.count(",") + 1 > max_names:
        raise InvalidDomain(
            f"too many domain names ({raw.count(',') + 1}): at most {max_names} per "
            "certificate; split them across several certificates"
        )
    names: list[str] = []
    first_spelling: dict[str, str] = {}
    for entry in raw.split(","):
        given = entry.strip()
        name = normalise_name(given)
        if name in first_spelling:
            earlier = first_spelling[name]
            if earlier == given:
                raise InvalidDomain(f"{_show(given)} is listed twice: list each name once")
            raise InvalidDomain(
                f"{_show(given)} and {_show(earlier)} are the same name ({name}): "
                "list each name once"
            )
        first_spelling[name] = given
        names.append(name)
    return names


def normalise_name(given: str) -> str:
    """Return one certificate name in canonical form, or raise InvalidDomain saying why not."""
    if not given:
        raise InvalidDomain(
            "empty entry in the domain list: remove the extra comma, "
            "like www.example.com,example.com"
        )
    name = given[:-1] if given.endswith(".") else given
    wildcard = name.startswith(WILDCARD_PREFIX)
    rest = name[len(WILDCARD_PREFIX) :] if wildcard else name
    if "*" in rest:
        raise InvalidDomain(
            f"{_show(given)}: a wildcard is allowed only as the whole leftmost label, "
            "like *.example.com"
        )
    if len(rest) > _MAX_INPUT_CHARS:
        raise InvalidDomain(
            f"{_show(given)} is {len(rest)} characters long: a domain name may have at most "
            f"{MAX_NAME_OCTETS} octets; use a shorter name"
        )
    _refuse_ip_address(given, rest)
    labels = _a_labels(given, rest)
    if _ALL_DIGITS.fullmatch(labels[-1]):
        # No TLD is all-numeric; such names are IP addresses in some spelling (127.1).
        raise InvalidDomain(
            f"{_show(given)} looks like an IP address (its last label is a number): "
            "certok issues for DNS names only, like www.example.com"
        )
    base = ".".join(labels)
    canonical = WILDCARD_PREFIX + base if wildcard else base
    if len(canonical) > MAX_NAME_OCTETS:
        raise InvalidDomain(
            f"{_show(given)} is {len(canonical)} octets long (as {_show(canonical)}): "
            f"a domain name may have at most {MAX_NAME_OCTETS}; use a shorter name"
        )
    # A bare TLD the list knows (com) is reported as a public suffix below; any other single
    # label (localhost, an intranet name) as a single-label name.
    if len(labels) == 1 and not wildcard and not _PSL.is_public(base, accept_unknown=False):
        raise InvalidDomain(
            f"{_show(given)} is a single-label name: certificates need a full domain name, "
            "like www.example.com"
        )
    if _PSL.is_public(base):
        if wildcard:
            raise InvalidDomain(
                f"{_show(given)} would cover every name under the public suffix {base}: "
                f"use a wildcard under your own domain, like *.example.{base}"
            )
        raise InvalidDomain(
            f"{_show(given)} is a public suffix, which nobody can get a certificate for: "
            f"use a name under it, like example.{base}"
        )
    return canonical


def base_name(name: str) -> str:
    """The name without a leading ``*.``: ``*.example.com`` -> ``example.com``."""
    return name[len(WILDCARD_PREFIX) :] if is_wildcard(name) else name


def is_wildcard(name: str) -> bool:
    return name.startswith(WILDCARD_PREFIX)


def challenge_name(name: str) -> str:
    """The DNS-01 name (RFC 8555 §8.4); an apex and its wildcard share one."""
    return f"{CHALLENGE_LABEL}.{base_name(name)}"


def registrable_domain(name: str) -> str:
    """The public suffix plus one label: ``www.example.co.uk`` -> ``example.co.uk``.

    Raises InvalidDomain if the name is itself a public suffix (it has no registrable part).
    """
    domain = _PSL.privatesuffix(base_name(name).rstrip(".").lower())
    if domain is None:
        raise InvalidDomain(
            f"{_show(name)} has no registrable domain (it is a public suffix): "
            "use a name under it, like example.com"
        )
    return domain


def relative_name(fqdn: str) -> str:
    """The labels left of the registrable domain, as typed into a DNS console; ``@`` for it."""
    fqdn = fqdn.rstrip(".").lower()
    domain = registrable_domain(fqdn)
    if fqdn == domain:
        return "@"
    return fqdn[: -(len(domain) + 1)]


def relative_challenge_name(name: str) -> str:
    """The challenge record's name inside the customer's DNS zone: ``_acme-challenge.www``."""
    return relative_name(challenge_name(name))


def _refuse_ip_address(given: str, candidate: str) -> None:
    text = candidate[1:-1] if candidate.startswith("[") and candidate.endswith("]") else candidate
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return
    raise InvalidDomain(
        f"{_show(given)} is an IP address: certok issues for DNS names only, like www.example.com"
    )


def _a_labels(given: str, name: str) -> list[str]:
    """Map (UTS #46, non-transitional, lowercase) and encode each label; check each one."""
    try:
        # std3_rules off: bad ASCII characters are reported below with a friendlier message.
        mapped = idna.uts46_remap(name, std3_rules=False)
    except idna.IDNAError as exc:
        raise InvalidDomain(
            f"{_show(given)} contains a character not allowed in domain names ({exc}): "
            "check the spelling"
        ) from exc
    labels = mapped.split(".")
    if "" in labels:
        raise InvalidDomain(
            f"{_show(given)} has an empty label (a leading dot or two dots in a row): "
            "write it like www.example.com"
        )
    return [_a_label(given, label) for label in labels]


def _a_label(given: str, label: str) -> str:
    if label.isascii():
        _check_ascii_label(given, label)
        encoded = label
    else:
        try:
            idna.check_label(label)
        except idna.IDNAError as exc:
            raise InvalidDomain(
                f"{_show(given)}: the label {_show(label)} is not a valid internationalised "
                f"label ({exc}): check the spelling"
            ) from exc
        # The A-label (RFC 5891 §4.4), built here so an over-long one gets the length message.
        encoded = "xn--" + label.encode("punycode").decode("ascii")
    if len(encoded) > MAX_LABEL_OCTETS:
        raise InvalidDomain(
            f"{_show(given)}: the label {_show(encoded)} is {len(encoded)} octets long; "
            f"a label may have at most {MAX_LABEL_OCTETS}: use a shorter name"
        )
    return encoded


def _check_ascii_label(given: str, label: str) -> None:
    if not _LDH_LABEL.fullmatch(label):
        bad = [c for c in label if not (c.isascii() and (c.isalnum() or c == "-"))]
        if bad:
            what = "an underscore" if bad[0] == "_" else f"the character {_show(bad[0])}"
            raise InvalidDomain(
                f"{_show(given)} contains {what}: certificate names may use only letters, "
                "digits, hyphens and dots"
            )
        raise InvalidDomain(
            f"{_show(given)}: the label {_show(label)} starts or ends with a hyphen, "
            "which domain names do not allow"
        )
    if label[2:4] == "--":
        # RFC 5891 §4.2.3.1: "--" in positions 3-4 is reserved for encodings; only xn-- is one.
        if not label.startswith("xn--"):
            raise InvalidDomain(
                f"{_show(given)}: the label {_show(label)} has '--' in the third and fourth "
                "positions, which is reserved for encoded labels (xn--): remove one hyphen"
            )
        try:
            valid_punycode = idna.alabel(idna.ulabel(label)).decode("ascii") == label
        except idna.IDNAError:
            valid_punycode = False
        if not valid_punycode:
            raise InvalidDomain(
                f"{_show(given)}: the label {_show(label)} is not valid punycode: "
                "write the name in its Unicode form, or check the xn-- label"
            )


def _show(text: str) -> str:
    """Quote a user-supplied name for a message: printable, and not unboundedly long."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(shown) > _SHOWN_NAME_CHARS:
        shown = shown[: _SHOWN_NAME_CHARS - 1] + "…"
    return f"'{shown}'"
