"""The API's one hot path, answered before Starlette's middleware, routing and request objects.

Clients poll `GET /v1/cert/apply?code=…` until their order is issued, and scripts keep polling
codes that were issued long ago. Once the token is in the process's cache
(`certok.api.caches`), an issued answer is a few dict lookups when cached, else one read
gathered with the other polls' (`certok.api.apply_reads`); Starlette's layers around it (two
middlewares, route matching, a Request, a Response and its headers) cost more than either.
Whatever is not an issued answer, every error included, goes down the full route, which makes
the same checks in the same order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from certok.api.envelope import encoded_success, new_trace_id
from certok.logs import ACCESS, access

APPLY_PATH = "/v1/cert/apply"

# Exactly what Starlette's Response(media_type="application/json", headers=NO_STORE) sends.
_CACHE_CONTROL = (b"cache-control", b"no-store")
_CONTENT_TYPE = (b"content-type", b"application/json")

# scope -> the issued answer's data, encoded as JSON, or None to take the full route.
IssuedAnswer = Callable[[Scope], Awaitable[bytes | None]]


class CertokApp(Starlette):
    """Starlette with apply's issued answers served first (see the module's docstring)."""

    def __init__(self, issued_apply_answer: IssuedAnswer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._issued_apply_answer = issued_apply_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        # One access line per request (certok.logs); checked once, so with the access log
        # off (log_level WARNING) a request pays one method call for it.
        logged = ACCESS.isEnabledFor(logging.INFO)
        started = time.perf_counter() if logged else 0.0
        if scope["method"] == "GET" and scope["path"] == APPLY_PATH:
            try:
                data = await self._issued_apply_answer(scope)
            except Exception:  # the full route meets it again, and reports it
                data = None
            if data is not None:
                trace = new_trace_id()
                body = encoded_success(data, trace)
                headers = [_CACHE_CONTROL, (b"content-length", b"%d" % len(body)), _CONTENT_TYPE]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                if logged:
                    access(scope, 200, trace, started)
                return
        if not logged:
            await super().__call__(scope, receive, send)
            return
        status = 0

        async def send_noting_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, send_noting_status)
        finally:
            state = scope.get("state") or {}
            access(scope, status or 500, state.get("trace_id"), started)


def header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), as Starlette's `Headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None
