"""Which `server_name` entries certok can put in a certificate, and why the others are skipped.

nginx's `server_name` takes forms no certificate can hold: regular expressions (`~^www\\d+`),
the catch-all placeholder `_`, `localhost`, IP addresses, wildcards at the end (`www.example.*`),
variables. Those are skipped with a reason the tenant reads in `/checkDns` and the host's log.
A leading wildcard (`*.example.com`) is kept: certok validates over DNS (dns-01 through the
delegation of `example.com`), which wildcards need. The special form `.example.com` means
`example.com` and `*.example.com` to nginx, so it yields both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from certok.errors import InvalidDomain
from certok.names import base_name, normalise_name

REGEX = "a regular expression: certok cannot tell which names it matches"
PLACEHOLDER = "the catch-all placeholder, not a name"
LOCALHOST = "localhost cannot have a publicly trusted certificate"
IP_ADDRESS = "an IP address: certok issues for DNS names only"
TAIL_WILDCARD = "a wildcard in the last label (nginx-only form): no certificate can hold it"
VARIABLE = "a variable: certok cannot tell which names it stands for"
NOT_DELEGATED = (
    "not delegated to this tenant: call /v1/cert/dv?domains={name}, add the CNAME it names, "
    "and run the agent again"
)


@dataclass
class Classified:
    names: list[str] = field(default_factory=list)  # canonical, in order of appearance
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (as written, why)

    def skip(self, name: str, reason: str) -> None:
        if all(name != known for known, _ in self.skipped):
            self.skipped.append((name, reason))


def classify(server_names: Iterable[str], max_names: int) -> Classified:
    """Split `server_name` entries into certificate names and skipped ones (with reasons)."""
    result = Classified()
    for entry in server_names:
        written = entry.strip().lower()
        if not written:
            continue
        for candidate in _expand(written, result):
            try:
                name = normalise_name(candidate)
            except InvalidDomain as refusal:
                result.skip(written, refusal.message)
                continue
            if name in result.names:
                continue
            if len(result.names) >= max_names:
                result.skip(written, f"over {max_names} names (max_domains) in one certificate")
                continue
            result.names.append(name)
    return result


def _expand(written: str, result: Classified) -> list[str]:
    """The certificate names one `server_name` entry stands for ([] when it is skipped)."""
    if written.startswith("~"):
        result.skip(written, REGEX)
        return []
    if written == "_":
        result.skip(written, PLACEHOLDER)
        return []
    if "$" in written:
        result.skip(written, VARIABLE)
        return []
    if _is_ip(written):
        result.skip(written, IP_ADDRESS)
        return []
    bare = written.rstrip(".")
    if bare == "localhost" or bare.endswith(".localhost"):
        result.skip(written, LOCALHOST)
        return []
    if bare.endswith("*"):
        result.skip(written, TAIL_WILDCARD)
        return []
    if bare.startswith(".") and len(bare) > 1:
        return [bare[1:], "*" + bare]
    return [bare]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def split_delegated(
    names: list[str], delegated_bases: set[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Names under one of the tenant's delegations, and the others with why they are skipped."""
    kept = [n for n in names if base_name(n) in delegated_bases]
    skipped = [
        (n, NOT_DELEGATED.format(name=n)) for n in names if base_name(n) not in delegated_bases
    ]
    return kept, skipped
