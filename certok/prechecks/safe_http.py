"""Fetch a URL the way a CA validates HTTP-01, without letting the URL aim certok anywhere.

The customer controls the first URL's DNS and every redirect after it, so each hop is treated
as hostile (Boulder ``va/http.go`` does the same):

- only http and https, only ``allowed_ports`` (80 and 443, like Let's Encrypt), only DNS names
  (an IP literal in any spelling is refused unless the policy allows loopback, for tests);
- the name is resolved once through the configured resolver (never the system resolver),
  every address in the answer is checked against the AddressPolicy, and the connection goes
  to one of those checked addresses, re-checked at dial time; there is no second lookup a
  rebinding DNS server could answer differently;
- Host and SNI carry the hostname; TLS is not verified (CAs do not verify it when following
  an HTTP-01 redirect to https);
- at most ``max_redirects`` redirects (301/302/307/308 only), a bounded response head, at most
  ``max_body_bytes`` of body, timeouts on connect, TLS, the response and the whole fetch, and
  a cap on concurrent fetches.

The HTTP/1.1 client is a small one of certok's own on asyncio streams (one GET, ``Connection:
close``): a general client would bring proxies from the environment, its own resolver, its own
redirect handling and connection reuse, each a way around the checks above.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import idna

from certok.prechecks.addresses import AddressPolicy, AddressRefused, IPAddress, parse_host_literal

# RFC 9110 §15.4: the redirects a CA follows (Let's Encrypt: 301, 302, 307, 308).
REDIRECT_STATUSES = frozenset({301, 302, 307, 308})
USER_AGENT = "certok-precheck/1 (HTTP-01 redirect check)"

_DEFAULT_PORTS = {"http": 80, "https": 443}
# The response head (status line and headers) a redirect or a key authorization needs is a few
# hundred bytes; this bounds what a hostile server can make certok buffer.
_MAX_HEAD_BYTES = 16 * 1024
_MAX_HEADERS = 100
_MAX_INTERIM_RESPONSES = 5
_MAX_CHUNK_SIZE_DIGITS = 16
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
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


@dataclass(frozen=True)
class FetchLimits:
    max_redirects: int = 10
    # Each of: the TCP connect, and the TLS handshake after it.
    connect_timeout: float = 10.0
    # The whole response, from sending the request to the last body byte; a server dripping
    # one byte at a time cannot stretch it.
    read_timeout: float = 10.0
    max_body_bytes: int = 1024
    allowed_ports: frozenset[int] = frozenset({80, 443})
    max_url_length: int = 2000
    # The whole fetch, every lookup and hop included.
    total_timeout: float = 30.0


@dataclass(frozen=True)
class Hop:
    url: str  # the URL requested, in canonical form
    address: str | None  # the address certok connected to
    status: int | None  # the response status


@dataclass(frozen=True)
class FetchResult:
    final_url: str  # the last URL the chain led to
    status: int  # the status of the last response received
    body: bytes  # at most max_body_bytes of that response's body
    hops: tuple[Hop, ...]  # every response received, in order
    truncated: bool = False  # the body was longer than max_body_bytes
    # final_url starts with the stop_at_prefix given to fetch() and was not requested: status
    # is then the redirect's that pointed there, and body is empty.
    stopped: bool = False


@dataclass(frozen=True)
class PostResult:
    url: str  # the URL posted to, in canonical form
    address: str  # the address certok connected to
    status: int
    headers: dict[str, list[str]]  # lower-case names
    body: bytes  # at most max_body_bytes of the body


# Where a fetch stopped: the URL rules, the DNS lookup, the address policy, the TCP connect,
# the TLS handshake, the response, the redirect count, or the whole fetch's deadline.
# "resolver": the configured resolvers gave no answer (an outage on certok's side), unlike
# "dns", where they answered that the name has no usable address.
Stage = Literal[
    "url", "dns", "resolver", "address", "connect", "tls", "response", "redirects", "deadline"
]


class FetchProblem(Exception):
    """A fetch ended without a final response; ``reason`` says why, ``url`` says where."""

    def __init__(self, reason: str, hops: tuple[Hop, ...], url: str, stage: Stage) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hops = hops  # the responses received before the problem
        self.url = url  # the URL certok was about to request (or requesting) when it stopped
        self.stage = stage


class FetchRefused(FetchProblem):
    """certok refused to request ``url``: no packet was sent to the refused target."""


class FetchFailed(FetchProblem):
    """A lookup, a connection or a response failed (timeouts, refusals, malformed HTTP)."""


class _Stop(Exception):
    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class _Refused(_Stop):
    pass


class _Failed(_Stop):
    pass


class _Malformed(Exception):
    """The peer's bytes are not an HTTP/1.x response certok can read."""


@dataclass(frozen=True)
class _Target:
    url: str  # canonical: lowercase scheme and host, default port omitted, path quoted
    scheme: str
    host: str  # the A-label hostname, or the IP literal's canonical text
    literal: IPAddress | None
    port: int
    request_target: str  # path and query, as sent in the request line
    host_header: str


@dataclass
class _Progress:
    url: str
    hops: list[Hop] = field(default_factory=list)


@dataclass(frozen=True)
class _Response:
    status: int
    location: str | None
    body: bytes
    truncated: bool


class SafeFetcher:
    def __init__(
        self,
        resolver_factory: Callable[[], dns.asyncresolver.Resolver],
        policy: AddressPolicy,
        limits: FetchLimits = FetchLimits(),  # frozen, so one shared default is safe
        *,
        max_concurrent: int = 32,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._resolver_factory = resolver_factory
        self._policy = policy
        self._limits = limits
        self._max_concurrent = max_concurrent
        # A semaphore belongs to one event loop; callers such as the order driver run each
        # batch under its own asyncio.run, so the cap is kept per loop.
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._tls = _unverified_tls_context()

    @property
    def policy(self) -> AddressPolicy:
        return self._policy

    @property
    def limits(self) -> FetchLimits:
        return self._limits

    async def fetch(self, url: str, *, stop_at_prefix: str | None = None) -> FetchResult:
        """GET url, following redirects under the rules in the module docstring.

        With stop_at_prefix, a redirect to a URL starting with it (canonical form) ends the
        fetch without requesting that URL, once the URL itself passes the redirect rules: a
        pre-check that only needs to see where a chain leads need not fetch certok's own
        responder. Raises FetchRefused or FetchFailed; never other exceptions for anything the
        network or the remote side does.
        """
        progress = _Progress(url)
        async with self._gate():
            try:
                async with asyncio.timeout(self._limits.total_timeout):
                    return await self._follow(progress, stop_at_prefix)
            except _Refused as refusal:
                hops = tuple(progress.hops)
                raise FetchRefused(refusal.reason, hops, progress.url, refusal.stage) from None
            except _Failed as failure:
                hops = tuple(progress.hops)
                raise FetchFailed(failure.reason, hops, progress.url, failure.stage) from None
            except TimeoutError:
                raise FetchFailed(
                    f"gave up on {_clip(progress.url)} after {self._limits.total_timeout:g} s "
                    f"(the whole fetch took too long)",
                    tuple(progress.hops),
                    progress.url,
                    "deadline",
                ) from None

    def check_url(self, url: str) -> str:
        """The URL in canonical form if the URL rules allow it (scheme, port, host spelling);
        raises FetchRefused saying why not. Addresses are checked only when it is requested."""
        try:
            return self._target(url, redirected=False).url
        except _Refused as refusal:
            raise FetchRefused(refusal.reason, (), url, refusal.stage) from None

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, user_agent: str
    ) -> PostResult:
        """POST `body` to `url` once, under the same URL and address rules as fetch().

        No redirect is followed: a 3xx is the answer (a webhook receiver that moved must be
        re-registered, and following would let a receiver aim certok elsewhere). Raises
        FetchRefused or FetchFailed like fetch().
        """
        progress = _Progress(url)
        async with self._gate():
            try:
                async with asyncio.timeout(self._limits.total_timeout):
                    target = self._target(url, redirected=False)
                    progress.url = target.url
                    if target.literal is not None:
                        candidates = [target.literal]
                    else:
                        candidates = await self._resolve(target.host, self._resolver_factory())
                    return await self._post_exchange(target, candidates, body, headers, user_agent)
            except _Refused as refusal:
                raise FetchRefused(refusal.reason, (), progress.url, refusal.stage) from None
            except _Failed as failure:
                raise FetchFailed(failure.reason, (), progress.url, failure.stage) from None
            except TimeoutError:
                raise FetchFailed(
                    f"{_clip(progress.url)} did not answer within {self._limits.total_timeout:g} s",
                    (),
                    progress.url,
                    "deadline",
                ) from None

    async def _post_exchange(
        self,
        target: _Target,
        candidates: list[IPAddress],
        body: bytes,
        headers: dict[str, str],
        user_agent: str,
    ) -> PostResult:
        failures: list[_Failed] = []
        for address in candidates:
            try:
                reader, writer = await self._dial(address, target)
            except _Failed as failure:
                failures.append(failure)
                continue
            lines = [
                f"POST {target.request_target} HTTP/1.1",
                f"Host: {target.host_header}",
                f"User-Agent: {user_agent}",
                "Accept: */*",
                "Accept-Encoding: identity",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Connection: close",
                *(f"{name}: {value}" for name, value in headers.items()),
            ]
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
            where = _where(address, target)
            try:
                writer.write(request)
                await writer.drain()
                for _ in range(_MAX_INTERIM_RESPONSES + 1):
                    status, response_headers = await _read_head(reader)
                    if status >= 200:
                        break
                else:
                    raise _Malformed(f"more than {_MAX_INTERIM_RESPONSES} interim responses")
                answer = b""
                if status not in REDIRECT_STATUSES and status not in (204, 304):
                    answer, _ = await _read_body(
                        reader, response_headers, self._limits.max_body_bytes
                    )
                return PostResult(target.url, str(address), status, response_headers, answer)
            except _Malformed as exc:
                raise _Failed(
                    "response", f"{where} sent a malformed HTTP response ({exc})"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise _Failed(
                    "response", f"sending to or reading from {where} failed: {_os_error(exc)}"
                ) from None
            finally:
                writer.transport.abort()
        raise _Failed(failures[-1].stage, "; ".join(f.reason for f in failures))

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = self._gates[loop] = asyncio.Semaphore(self._max_concurrent)
        return gate

    async def _follow(self, progress: _Progress, stop_at_prefix: str | None) -> FetchResult:
        resolver = self._resolver_factory()
        # The first request plus max_redirects redirects.
        for _ in range(self._limits.max_redirects + 1):
            redirected = bool(progress.hops)
            target = self._target(progress.url, redirected=redirected)
            progress.url = target.url
            if redirected and stop_at_prefix and target.url.startswith(stop_at_prefix):
                status = progress.hops[-1].status
                assert status is not None
                return FetchResult(target.url, status, b"", tuple(progress.hops), stopped=True)
            if target.literal is not None:
                candidates = [target.literal]
            else:
                candidates = await self._resolve(target.host, resolver)
            response, address = await self._exchange(target, candidates)
            progress.hops.append(Hop(target.url, str(address), response.status))
            if response.status not in REDIRECT_STATUSES:
                return FetchResult(
                    target.url,
                    response.status,
                    response.body,
                    tuple(progress.hops),
                    truncated=response.truncated,
                )
            if response.location is None:
                raise _Failed(
                    "response",
                    f"{_clip(target.url)} answered {response.status} without a Location header",
                )
            progress.url = _join(target.url, response.location)
        raise _Refused(
            "redirects",
            f"too many redirects: more than {self._limits.max_redirects} "
            f"(the CA follows at most {self._limits.max_redirects})",
        )

    # --- the URL rules ------------------------------------------------------------------------
    def _target(self, raw: str, *, redirected: bool) -> _Target:
        """Parse and check one URL of the chain; raises _Refused naming what is not allowed."""
        what = "redirect to " if redirected else ""
        shown = _clip(raw)
        if len(raw) > self._limits.max_url_length:
            raise _Refused(
                "url",
                f"{what}a URL of {len(raw)} characters is not allowed "
                f"(at most {self._limits.max_url_length}): {shown}",
            )
        if _CONTROL_CHARS.search(raw):
            raise _Refused("url", f"{what}{shown!r} is not a valid URL (control characters)")
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:
            raise _Refused("url", f"{what}{shown} is not a valid URL ({exc})") from None
        scheme = parts.scheme
        if scheme not in _DEFAULT_PORTS:
            raise _Refused("url", f"{what}{shown} is not allowed: only http and https URLs are")
        # WHATWG URL parsers read "\" as "/", Python's as part of the host: refuse the doubt.
        if "\\" in parts.netloc or not parts.hostname:
            raise _Refused("url", f"{what}{shown} is not a valid URL (no usable host)")
        port = _DEFAULT_PORTS[scheme] if port is None else port
        if port not in self._limits.allowed_ports:
            raise _Refused(
                "url",
                f"{what}port {port} is not allowed (only {_and_list(self._limits.allowed_ports)})",
            )
        host, literal = self._host(parts.hostname, what, shown)
        host_in_url = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
        host_header = host_in_url if port == _DEFAULT_PORTS[scheme] else f"{host_in_url}:{port}"
        request_target = _quote(parts.path or "/", _PATH_SAFE)
        if parts.query:
            request_target += "?" + _quote(parts.query, _QUERY_SAFE)
        url = f"{scheme}://{host_header}{request_target}"
        if len(url) > self._limits.max_url_length:
            raise _Refused(
                "url",
                f"{what}a URL of {len(url)} characters is not allowed "
                f"(at most {self._limits.max_url_length}): {_clip(url)}",
            )
        return _Target(url, scheme, host, literal, port, request_target, host_header)

    def _host(self, given: str, what: str, shown: str) -> tuple[str, IPAddress | None]:
        host = given
        if not host.isascii():
            try:
                # UTS #46 maps look-alikes too: full-width digits and dots become 127.0.0.1.
                host = idna.encode(host, uts46=True).decode("ascii")
            except (idna.IDNAError, UnicodeError):
                raise _Refused("url", f"{what}{shown}: {given!r} is not a valid hostname") from None
        literal = parse_host_literal(host)
        if literal is not None:
            meaning = f"{literal}" if host == str(literal) else f"{host}, which means {literal}"
            if not self._policy.allow_loopback:
                raise _Refused(
                    "url",
                    f"{what}{shown} names an IP address ({meaning}): only hostnames are allowed, "
                    "as the CA follows redirects only to DNS names",
                )
            try:
                checked = self._policy.check(literal)
            except AddressRefused as refusal:
                raise _Refused(
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
            raise _Refused("url", f"{what}{shown}: {given!r} is not a valid hostname")
        return name, None

    # --- DNS ----------------------------------------------------------------------------------
    async def _resolve(self, host: str, resolver: dns.asyncresolver.Resolver) -> list[IPAddress]:
        """The addresses to try, in order (IPv6 first, as Let's Encrypt), all of them checked."""
        name = dns.name.from_text(host)  # absolute: no search list can be appended
        results = await asyncio.gather(
            _lookup(resolver, host, name, dns.rdatatype.AAAA),
            _lookup(resolver, host, name, dns.rdatatype.A),
            return_exceptions=True,
        )
        addresses: list[IPAddress] = []
        failures: list[_Failed] = []
        for result in results:
            if isinstance(result, _Failed):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                addresses.extend(result)
        if not addresses:
            if failures:
                raise failures[0]
            raise _Failed("dns", f"{host} has no A or AAAA record")
        # Every address, not only the one used: a name that mixes a public address with an
        # internal one is a probe, and which one a CA picks is not certok's to guess.
        for address in addresses:
            try:
                self._policy.check(address)
            except AddressRefused as refusal:
                raise _Refused(
                    "address", f"{host} resolves to {refusal.address}, {refusal.purpose}"
                ) from None
        first_v6 = next((a for a in addresses if a.version == 6), None)
        first_v4 = next((a for a in addresses if a.version == 4), None)
        return [a for a in (first_v6, first_v4) if a is not None]

    # --- one request --------------------------------------------------------------------------
    async def _exchange(
        self, target: _Target, candidates: list[IPAddress]
    ) -> tuple[_Response, IPAddress]:
        """Request target from the first candidate that accepts a connection."""
        failures: list[_Failed] = []
        for address in candidates:
            # A CA falls back to IPv4 when IPv6 does not connect; a response failure is final.
            try:
                reader, writer = await self._dial(address, target)
            except _Failed as failure:
                failures.append(failure)
                continue
            try:
                return await self._request(reader, writer, target, address), address
            finally:
                writer.transport.abort()
        raise _Failed(failures[-1].stage, "; ".join(f.reason for f in failures))

    async def _dial(
        self, address: IPAddress, target: _Target
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to exactly this address: a socket of our own, no name resolution anywhere."""
        try:
            # The address was checked when it was resolved; check the one actually dialled.
            self._policy.check(address)
        except AddressRefused as refusal:
            raise _Refused("address", f"refusing to connect to {refusal.reason}") from None
        where = _where(address, target)
        limits = self._limits
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(limits.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (str(address), target.port))
        except TimeoutError:
            sock.close()
            raise _Failed(
                "connect", f"timed out connecting to {where} after {limits.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise _Failed("connect", f"could not connect to {where}: {_os_error(exc)}") from None
        reader, writer = await asyncio.open_connection(sock=sock, limit=_MAX_HEAD_BYTES)
        if target.scheme != "https":
            return reader, writer
        try:
            async with asyncio.timeout(limits.connect_timeout):
                # SNI carries the hostname; an IP literal (tests only) sends none.
                server_hostname = target.host if target.literal is None else None
                await writer.start_tls(self._tls, server_hostname=server_hostname)
        except TimeoutError:
            writer.transport.abort()
            raise _Failed(
                "tls",
                f"the TLS handshake with {where} timed out after {limits.connect_timeout:g} s",
            ) from None
        except (ssl.SSLError, OSError) as exc:
            writer.transport.abort()
            raise _Failed(
                "tls", f"the TLS handshake with {where} failed: {_os_error(exc)}"
            ) from None
        return reader, writer

    async def _request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: _Target,
        address: IPAddress,
    ) -> _Response:
        request = (
            f"GET {target.request_target} HTTP/1.1\r\n"
            f"Host: {target.host_header}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\n"
            "Accept-Encoding: identity\r\n"
            "Connection: close\r\n"
            "\r\n"
        ).encode("ascii")
        where = _where(address, target)
        timeout = self._limits.read_timeout
        try:
            async with asyncio.timeout(timeout):
                writer.write(request)
                await writer.drain()
                return await _read_response(reader, self._limits.max_body_bytes)
        except TimeoutError:
            raise _Failed(
                "response", f"{where} did not answer {_clip(target.url)} within {timeout:g} s"
            ) from None
        except _Malformed as exc:
            raise _Failed("response", f"{where} sent a malformed HTTP response ({exc})") from None
        except (OSError, ssl.SSLError) as exc:
            raise _Failed(
                "response", f"reading the response from {where} failed: {_os_error(exc)}"
            ) from None


async def _lookup(
    resolver: dns.asyncresolver.Resolver,
    host: str,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
) -> list[IPAddress]:
    kind = dns.rdatatype.to_text(rdtype)
    try:
        # dnspython may sleep a retry backoff past its lifetime; hold it to the lifetime.
        async with asyncio.timeout(resolver.lifetime):
            answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        raise _Failed("dns", f"{host} does not exist in DNS (NXDOMAIN)") from None
    except (dns.resolver.LifetimeTimeout, TimeoutError):
        raise _Failed("resolver", f"looking up {host} {kind} timed out") from None
    except dns.resolver.NoNameservers:
        raise _Failed(
            "resolver", f"looking up {host} {kind} failed: no resolver gave an answer"
        ) from None
    except (dns.exception.DNSException, OSError) as exc:
        raise _Failed(
            "resolver", f"looking up {host} {kind} failed ({type(exc).__name__}: {exc})"
        ) from None
    if answer.rrset is None:
        return []
    return [ipaddress.ip_address(rdata.address) for rdata in answer.rrset]


# --- reading a response ----------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader, max_body: int) -> _Response:
    for _ in range(_MAX_INTERIM_RESPONSES + 1):
        status, headers = await _read_head(reader)
        # 1xx responses are interim (RFC 9110 §15.2); the real one follows.
        if status >= 200:
            break
    else:
        raise _Malformed(f"more than {_MAX_INTERIM_RESPONSES} interim 1xx responses")
    locations = headers.get("location")
    location = locations[0] if locations else None
    if status in REDIRECT_STATUSES or status in (204, 304):
        # A redirect's body is never looked at; the connection is closed unread.
        return _Response(status, location, b"", False)
    body, truncated = await _read_body(reader, headers, max_body)
    return _Response(status, location, body, truncated)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]]]:
    budget = _MAX_HEAD_BYTES
    status_line = await _read_line(reader, budget)
    if status_line is None:
        raise _Malformed("the connection closed before a status line")
    budget -= len(status_line)
    matched = _STATUS_LINE.fullmatch(status_line.rstrip(b"\r\n"))
    if matched is None:
        raise _Malformed(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    headers: dict[str, list[str]] = {}
    count = 0
    while True:
        line = await _read_line(reader, budget)
        if line is None:
            raise _Malformed("the connection closed inside the headers")
        budget -= len(line)
        line = line.rstrip(b"\r\n")
        if not line:
            return int(matched.group(1)), headers
        count += 1
        if count > _MAX_HEADERS:
            raise _Malformed(f"more than {_MAX_HEADERS} header fields")
        name, colon, value = line.partition(b":")
        # RFC 9112 §5: no whitespace inside or before the colon; obsolete folding is refused.
        if not colon or not _TOKEN.fullmatch(name):
            raise _Malformed(f"bad header line {line[:60]!r}")
        text = value.strip(b" \t").decode("utf-8", "surrogateescape")
        headers.setdefault(name.decode("ascii").lower(), []).append(text)


async def _read_line(reader: asyncio.StreamReader, budget: int) -> bytes | None:
    """One line ending in LF, None at a clean EOF; _Malformed past the head's budget."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise _Malformed("the connection closed mid-line") from None
        return None
    except asyncio.LimitOverrunError:
        raise _Malformed(f"a response head line longer than {_MAX_HEAD_BYTES} bytes") from None
    if len(line) > budget:
        raise _Malformed(f"a response head larger than {_MAX_HEAD_BYTES} bytes")
    return line


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, list[str]], max_body: int
) -> tuple[bytes, bool]:
    """At most max_body bytes of the body, and whether there was more."""
    codings = [
        coding.strip().lower()
        for value in headers.get("transfer-encoding", [])
        for coding in value.split(",")
    ]
    if codings and codings[-1] == "chunked":
        return await _read_chunked(reader, max_body)
    lengths = {
        value.strip()
        for field_value in headers.get("content-length", [])
        for value in field_value.split(",")
    }
    if lengths and not codings:
        # RFC 9112 §6.3: differing lengths are an error, not a choice.
        if len(lengths) != 1 or not (length_text := lengths.pop()).isdigit():
            raise _Malformed("an invalid Content-Length")
        length = int(length_text)
        try:
            body = await reader.readexactly(min(length, max_body))
        except asyncio.IncompleteReadError:
            raise _Malformed("the body is shorter than its Content-Length") from None
        return body, length > max_body
    # No length: the body runs to the end of the connection (RFC 9112 §6.3, item 8).
    return await _read_until_close(reader, max_body)


async def _read_until_close(reader: asyncio.StreamReader, max_body: int) -> tuple[bytes, bool]:
    # One byte past the cap tells "exactly max_body" from "more than max_body".
    body = bytearray()
    while len(body) <= max_body:
        data = await reader.read(max_body + 1 - len(body))
        if not data:
            break
        body += data
    return bytes(body[:max_body]), len(body) > max_body


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        line = await _read_line(reader, _MAX_HEAD_BYTES)
        if line is None:
            raise _Malformed("the connection closed inside a chunked body")
        size_text = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text) or len(size_text) > _MAX_CHUNK_SIZE_DIGITS:
            raise _Malformed(f"a bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            # Trailers are not needed: the connection is closed right after.
            return bytes(body), False
        wanted = min(size, max_body + 1 - len(body))
        try:
            body += await reader.readexactly(wanted)
        except asyncio.IncompleteReadError:
            raise _Malformed("the connection closed inside a chunk") from None
        if len(body) > max_body:
            return bytes(body[:max_body]), True
        if await _read_line(reader, _MAX_HEAD_BYTES) not in (b"\r\n", b"\n"):
            raise _Malformed("a chunk not followed by CRLF")


# --- small helpers ---------------------------------------------------------------------------


def _unverified_tls_context() -> ssl.SSLContext:
    # CAs do not verify the certificate when an HTTP-01 redirect leads to https (RFC 8555
    # §8.3 leaves it open; Boulder sets InsecureSkipVerify): a pre-check that did would fail
    # names the CA accepts.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def _join(base: str, location: str) -> str:
    """The absolute URL a Location header means; one that cannot be parsed is refused."""
    try:
        return urljoin(base, location)
    except ValueError as exc:
        raise _Refused("url", f"redirect to {_clip(location)} is not a valid URL ({exc})") from None


def _quote(text: str, safe: str) -> str:
    # surrogateescape round-trips the raw bytes of a non-UTF-8 Location header.
    return quote(text.encode("utf-8", "surrogateescape"), safe=safe)


def _where(address: IPAddress, target: _Target) -> str:
    if target.literal is not None:
        return f"{address} port {target.port}"
    return f"{address} port {target.port} ({target.host})"


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc}".lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's messages carry the address tuple; the errno's own text reads better.
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _and_list(ports: frozenset[int]) -> str:
    ordered = [str(p) for p in sorted(ports)]
    if len(ordered) <= 1:
        return "".join(ordered) or "none"
    return f"{', '.join(ordered[:-1])} and {ordered[-1]}"


def _clip(url: str) -> str:
    return url if len(url) <= _SHOWN_URL_CHARS else url[: _SHOWN_URL_CHARS - 3] + "..."
