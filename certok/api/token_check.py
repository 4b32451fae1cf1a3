"""Which tenant a request's token belongs to: cached, shared between concurrent requests, and
bounded per client while the token is not known to be good."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from certok.api.caches import token_key
from certok.api.services import ApiServices
from certok.errors import Unauthenticated
from certok.tenants.service import TenantRef, authenticate

TOKEN_HEADER = "httpsok-token"  # noqa: S105 - a header name, not a secret


class TokenCheck:
    """The tenant a request's token names, for every route that takes a token."""

    def __init__(self, services: ApiServices) -> None:
        self._services = services
        # Token checks in flight, by token key: requests with the same token that arrive
        # while its cache entry is being renewed share that one database read.
        self._checking: dict[bytes, asyncio.Future[TenantRef]] = {}

    async def tenant_of(self, request: Request, header: str = TOKEN_HEADER) -> TenantRef:
        token = request.headers.get(header)
        key = token_key(token) if token else None
        if key is not None:
            known = self._services.tokens.get(key)
            if known is not None:
                return known

        if key is None or self._services.accepted_tokens.get(key) is None:
            # A lookup that may well fail (no token, a wrong or an unknown one): bounded per
            # client address, so a flood of guesses cannot buy unlimited database reads.
            self._services.limiter.check_unverified_token(client_address(request), header)

        def check() -> TenantRef:
            with self._services.sessions() as session:
                return authenticate(session, token)

        if key is None:
            return await asyncio.to_thread(check)  # raises: no token given
        running = self._checking.get(key)
        if running is None:
            # A task of its own, not the request's: a client that hangs up does not cancel
            # the check the other requests wait for.
            running = asyncio.ensure_future(asyncio.to_thread(check))
            self._checking[key] = running
            running.add_done_callback(lambda done: self._token_checked(key, done))
        return await asyncio.shield(running)

    def _token_checked(self, key: bytes, done: asyncio.Future[TenantRef]) -> None:
        self._checking.pop(key, None)
        if done.cancelled():
            return
        failure = done.exception()
        if failure is None:
            self._services.tokens.put(key, done.result())
            self._services.accepted_tokens.put(key, True)
            if self._services.token_usage is not None:
                self._services.token_usage.seen(key.hex())
        elif isinstance(failure, Unauthenticated):
            # Revoked, or its tenant disabled: its lookups count against the client's limit
            # again, or a revoked token would buy unlimited database reads for an hour.
            self._services.accepted_tokens.discard(key)


def client_address(request: Request) -> str:
    """The peer's address; behind a proxy listed in `trusted_proxies`, the client address it
    appended to X-Forwarded-For (uvicorn's ProxyHeadersMiddleware puts it in the scope)."""
    return request.client.host if request.client is not None else "unknown"
