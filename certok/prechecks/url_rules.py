"""The URL rules of a safe fetch: which URLs certok requests, and in what canonical form.

Only http and https, only the allowed ports, only DNS names (an IP literal in any spelling is
refused unless the address policy allows loopback, for tests), no control characters, a
bounded length; the path and query are escaped as the CA's URL parser would send them.
Addresses are not checked here: the fetcher checks each one it resolves and dials.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import idna

from certok.prechecks.addresses import AddressPolicy, AddressRefused, IPAddress, parse_host_literal
from certok.prechecks.fetch_types import FetchLimits, Refusal

DEFAULT_PORTS = {"http": 80, "https": 443}
_SHOWN_URL_CHARS = 160

# RFC 3986 characters that may stay as they are in a path or query; "%" keeps existing escapes.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"
# Labels as DNS allows them in hostnames, plus "_" which real names carry and Go's URL parser
# (hence the CA) accepts.
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# No top-level domain is a number: a numeric last label is an IP address in some spelling.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# A space in a path is tolerated (and escaped), as by the CA's URL parser; controls are not.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Target:
    url: str  # canonical: lowercase scheme and host, default port omitted, path quoted
    scheme: str
    host: str  # the A-label hostname, or the IP literal's canonical text
    literal: IPAddress | None
    port: int
    request_target: str  # path and query, as sent in the request line
    host_header: str


def parse_target(
    raw: str, limits: FetchLimits, policy: AddressPolicy, *, redirected: bool
) -> Target:
    """Parse and check one URL of the chain; raises Refusal naming what is not allowed."""
    what = "redirect to " if redirected else ""
    shown = clip(raw)
    if len(raw) > limits.max_url_length:
        raise Refusal(
            "url",
            f"{what}a URL of {len(raw)} characters is not allowed "
            f"(at most {limits.max_url_length}): {shown}",
        )
    if _CONTROL_CHARS.search(raw):
        raise Refusal("url", f"{what}{shown!r} is not a valid URL (control characters)")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise Refusal("url", f"{what}{shown} is not a valid URL ({exc})") from None
    scheme = parts.scheme
    if scheme not in DEFAULT_PORTS:
        raise Refusal("url", f"{what}{shown} is not allowed: only http and https URLs are")
    # WHATWG URL parsers read "\" as "/", Python's as part of the host: refuse the doubt.
    if "\\" in parts.netloc or not parts.hostname:
        raise Refusal("url", f"{what}{shown} is not a valid URL (no usable host)")
    port = DEFAULT_PORTS[scheme] if port is None else port
    if port not in limits.allowed_ports:
        raise Refusal(
            "url",
            f"{what}port {port} is not allowed (only {_and_list(limits.allowed_ports)})",
        )
    host, literal = _host(parts.hostname, policy, what, shown)
    host_in_url = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    host_header = host_in_url if port == DEFAULT_PORTS[scheme] else f"{host_in_url}:{port}"
    request_target = _quote(parts.path or "/", _PATH_SAFE)
    if parts.query:
        request_target += "?" + _quote(parts.query, _QUERY_SAFE)
    url = f"{scheme}://{host_header}{request_target}"
    if len(url) > limits.max_url_length:
        raise Refusal(
            "url",
            f"{what}a URL of {len(url)} characters is not allowed "
            f"(at most {limits.max_url_length}): {clip(url)}",
        )
    return Target(url, scheme, host, literal, port, request_target, host_header)


def _host(given: str, policy: AddressPolicy, what: str, shown: str) -> tuple[str, IPAddress | None]:
    host = given
    if not host.isascii():
        try:
            # UTS #46 maps look-alikes too: full-width digits and dots become 127.0.0.1.
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise Refusal("url", f"{what}{shown}: {given!r} is not a valid hostname") from None
    literal = parse_host_literal(host)
    if literal is not None:
        meaning = f"{literal}" if host == str(literal) else f"{host}, which means {literal}"
        if not policy.allow_loopback:
            raise Refusal(
                "url",
                f"{what}{shown} names an IP address ({meaning}): only hostnames are allowed, "
                "as the CA follows redirects only to DNS names",
            )
        try:
            checked = policy.check(literal)
        except AddressRefused as refusal:
            raise Refusal(
                "url", f"{what}{shown} names an IP address ({meaning}) and {refusal.reason}"
            ) from None
        return str(checked), checked
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        len(name) > 253
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or _NUMERIC_LABEL.fullmatch(labels[-1])
    ):
        raise Refusal("url", f"{what}{shown}: {given!r} is not a valid hostname")
    return name, None


def join_location(base: str, location: str) -> str:
    """The absolute URL a Location header means; one that cannot be parsed is refused."""
    try:
        return urljoin(base, location)
    except ValueError as exc:
        raise Refusal("url", f"redirect to {clip(location)} is not a valid URL ({exc})") from None


def _quote(text: str, safe: str) -> str:
    # surrogateescape round-trips the raw bytes of a non-UTF-8 Location header.
    return quote(text.encode("utf-8", "surrogateescape"), safe=safe)


def _and_list(ports: frozenset[int]) -> str:
    ordered = [str(p) for p in sorted(ports)]
    if len(ordered) <= 1:
        return "".join(ordered) or "none"
    return f"{', '.join(ordered[:-1])} and {ordered[-1]}"


def clip(url: str) -> str:
    return url if len(url) <= _SHOWN_URL_CHARS else url[: _SHOWN_URL_CHARS - 3] + "..."
