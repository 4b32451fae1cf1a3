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

The parts: url_rules.py (the URL rules), fetch_dns.py (the lookup and the address checks),
http11.py (reading the response), dial.py (TCP and TLS to one checked address),
fetch_types.py (limits, results, problems); this module follows the chain.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.asyncresolver

from certok.prechecks.addresses import AddressPolicy, IPAddress
from certok.prechecks.dial import (
    dial,
    os_error_text,
    unverified_tls_context,
    verified_tls_context,
    where_text,
)
from certok.prechecks.fetch_dns import resolve_checked
from certok.prechecks.fetch_types import (
    Failure,
    FetchFailed,
    FetchLimits,
    FetchProblem,
    FetchRefused,
    FetchResult,
    Hop,
    PostResult,
    Refusal,
    Stage,
)
from certok.prechecks.http11 import (
    REDIRECT_STATUSES,
    MalformedResponse,
    Response,
    has_body_worth_reading,
    read_body,
    read_final_head,
    read_response,
)
from certok.prechecks.url_rules import Target, clip, join_location, parse_target

# The names callers import from here.
__all__ = [
    "REDIRECT_STATUSES",
    "USER_AGENT",
    "FetchFailed",
    "FetchLimits",
    "FetchProblem",
    "FetchRefused",
    "FetchResult",
    "Hop",
    "PostResult",
    "SafeFetcher",
    "Stage",
    "verified_tls_context",
]

USER_AGENT = "certok-precheck/1 (HTTP-01 redirect check)"
# Frozen, so one shared default is safe.
_DEFAULT_LIMITS = FetchLimits()


@dataclass
class _Progress:
    url: str
    hops: list[Hop] = field(default_factory=list)


class SafeFetcher:
    def __init__(
        self,
        resolver_factory: Callable[[], dns.asyncresolver.Resolver],
        policy: AddressPolicy,
        limits: FetchLimits = _DEFAULT_LIMITS,
        *,
        max_concurrent: int = 32,
        post_tls: ssl.SSLContext | None = None,
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
        self._tls = unverified_tls_context()
        # What post() (webhooks, notifyUrls) trusts over https. Unlike a CA's redirect, a
        # delivery carries the tenant's events and its answer (2xx, 410) changes state:
        # the receiver must prove who it is (verified_tls_context()).
        self._post_tls = post_tls or verified_tls_context()

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
            except Refusal as refusal:
                hops = tuple(progress.hops)
                raise FetchRefused(refusal.reason, hops, progress.url, refusal.stage) from None
            except Failure as failure:
                hops = tuple(progress.hops)
                raise FetchFailed(failure.reason, hops, progress.url, failure.stage) from None
            except TimeoutError:
                raise FetchFailed(
                    f"gave up on {clip(progress.url)} after {self._limits.total_timeout:g} s "
                    f"(the whole fetch took too long)",
                    tuple(progress.hops),
                    progress.url,
                    "deadline",
                ) from None

    def check_url(self, url: str) -> str:
        """The URL in canonical form if the URL rules allow it (scheme, port, host spelling);
        raises FetchRefused saying why not. Addresses are checked only when it is requested."""
        try:
            return parse_target(url, self._limits, self._policy, redirected=False).url
        except Refusal as refusal:
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
                    target = parse_target(url, self._limits, self._policy, redirected=False)
                    progress.url = target.url
                    if target.literal is not None:
                        candidates = [target.literal]
                    else:
                        candidates = await resolve_checked(
                            target.host, self._resolver_factory(), self._policy
                        )
                    return await self._post_exchange(target, candidates, body, headers, user_agent)
            except Refusal as refusal:
                raise FetchRefused(refusal.reason, (), progress.url, refusal.stage) from None
            except Failure as failure:
                raise FetchFailed(failure.reason, (), progress.url, failure.stage) from None
            except TimeoutError:
                raise FetchFailed(
                    f"{clip(progress.url)} did not answer within {self._limits.total_timeout:g} s",
                    (),
                    progress.url,
                    "deadline",
                ) from None

    async def _post_exchange(
        self,
        target: Target,
        candidates: list[IPAddress],
        body: bytes,
        headers: dict[str, str],
        user_agent: str,
    ) -> PostResult:
        failures: list[Failure] = []
        for address in candidates:
            try:
                reader, writer = await dial(
                    address, target, self._policy, self._limits.connect_timeout, self._post_tls
                )
            except Failure as failure:
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
            where = where_text(address, target)
            try:
                writer.write(request)
                await writer.drain()
                status, response_headers = await read_final_head(reader)
                answer = b""
                if has_body_worth_reading(status):
                    answer, _ = await read_body(
                        reader, response_headers, self._limits.max_body_bytes
                    )
                return PostResult(target.url, str(address), status, response_headers, answer)
            except MalformedResponse as exc:
                raise Failure(
                    "response", f"{where} sent a malformed HTTP response ({exc})"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise Failure(
                    "response", f"sending to or reading from {where} failed: {os_error_text(exc)}"
                ) from None
            finally:
                writer.transport.abort()
        raise Failure(failures[-1].stage, "; ".join(f.reason for f in failures))

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
            target = parse_target(progress.url, self._limits, self._policy, redirected=redirected)
            progress.url = target.url
            if redirected and stop_at_prefix and target.url.startswith(stop_at_prefix):
                status = progress.hops[-1].status
                assert status is not None
                return FetchResult(target.url, status, b"", tuple(progress.hops), stopped=True)
            if target.literal is not None:
                candidates = [target.literal]
            else:
                candidates = await resolve_checked(target.host, resolver, self._policy)
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
                raise Failure(
                    "response",
                    f"{clip(target.url)} answered {response.status} without a Location header",
                )
            progress.url = join_location(target.url, response.location)
        raise Refusal(
            "redirects",
            f"too many redirects: more than {self._limits.max_redirects} "
            f"(the CA follows at most {self._limits.max_redirects})",
        )

    # --- one request --------------------------------------------------------------------------
    async def _exchange(
        self, target: Target, candidates: list[IPAddress]
    ) -> tuple[Response, IPAddress]:
        """Request target from the first candidate that accepts a connection."""
        failures: list[Failure] = []
        for address in candidates:
            # A CA falls back to IPv4 when IPv6 does not connect; a response failure is final.
            try:
                reader, writer = await dial(
                    address, target, self._policy, self._limits.connect_timeout, self._tls
                )
            except Failure as failure:
                failures.append(failure)
                continue
            try:
                return await self._request(reader, writer, target, address), address
            finally:
                writer.transport.abort()
        raise Failure(failures[-1].stage, "; ".join(f.reason for f in failures))

    async def _request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: Target,
        address: IPAddress,
    ) -> Response:
        request = (
            f"GET {target.request_target} HTTP/1.1\r\n"
            f"Host: {target.host_header}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\n"
            "Accept-Encoding: identity\r\n"
            "Connection: close\r\n"
            "\r\n"
        ).encode("ascii")
        where = where_text(address, target)
        timeout = self._limits.read_timeout
        try:
            async with asyncio.timeout(timeout):
                writer.write(request)
                await writer.drain()
                return await read_response(reader, self._limits.max_body_bytes)
        except TimeoutError:
            raise Failure(
                "response", f"{where} did not answer {clip(target.url)} within {timeout:g} s"
            ) from None
        except MalformedResponse as exc:
            raise Failure("response", f"{where} sent a malformed HTTP response ({exc})") from None
        except (OSError, ssl.SSLError) as exc:
            raise Failure(
                "response", f"reading the response from {where} failed: {os_error_text(exc)}"
            ) from None
