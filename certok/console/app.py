"""The console's Starlette application, mounted at /console by the API (certok/api/routes.py).

Each page handler takes a `Page` and is wrapped with who may open it: anyone, a tenant's user,
or an operator. A tenant's user opening an operator page, or any user opening another tenant's
object, gets the same 404 as for something that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from certok.console import agent_pages, auth_pages, operator_pages, tenant_pages, webhook_pages
from certok.console.auth_pages import SIGN_IN_KIND
from certok.console.web import (
    STATIC,
    ConsoleServices,
    Handler,
    Refused,
    load_page,
    read_form,
    redirect,
    render,
)
from certok.crypto import SecretBox
from certok.ratelimit import RateLimiter
from certok.settings import Settings
from certok.verification.dns_verifier import DnsVerifier
from certok.verification.http_verifier import HttpVerifier

log = logging.getLogger("certok.console")

Who = Literal["anyone", "tenant", "operator", "user"]

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def console_mount(
    settings: Settings,
    sessions: sessionmaker[Session],
    box: SecretBox,
    verifier: DnsVerifier,
    http_verifier: HttpVerifier,
    wake_certificates: Callable[[], None],
    events: Any = None,
) -> list[BaseRoute]:
    """/console/ and its pages, and /console sent there."""
    limiter = RateLimiter({SIGN_IN_KIND: settings.console_sign_in_per_minute})
    services = ConsoleServices(
        settings,
        sessions,
        box,
        verifier,
        http_verifier,
        limiter,
        wake_certificates=wake_certificates,
        events=events,
    )

    async def to_root(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=308)

    return [
        Route("/console", to_root, methods=["GET", "HEAD"]),
        Mount("/console", app=create_console(services)),
    ]


def create_console(services: ConsoleServices) -> Starlette:
    static = {
        path.name: (path.read_bytes(), _STATIC_TYPES[path.suffix])
        for path in STATIC.iterdir()
        if path.suffix in _STATIC_TYPES
    }

    def wrap(handler: Handler, who: Who, post: bool = False) -> Callable[[Request], object]:
        async def endpoint(request: Request) -> Response:
            page = await load_page(request, services)
            try:
                if who != "anyone":
                    user = page.user
                    if user is None or user.mfa_pending:
                        if post:
                            raise Refused(403, "error.signed_out")
                        target = request.url.path
                        if request.url.query:
                            target += "?" + request.url.query
                        from urllib.parse import quote

                        return redirect(page, "/console/sign-in?next=" + quote(target, safe=""))
                    if (who == "tenant" and user.tenant_id is None) or (
                        who == "operator" and not user.operator
                    ):
                        raise Refused(404, "error.not_found")
                if post:
                    await read_form(page)
                return await handler(page)
            except Refused as refused:
                return render(page, "error.html", refused.status, message=page.t(refused.message))

        return endpoint

    async def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            return Response("not found\n", 404, media_type="text/plain")
        body, media_type = found
        return Response(
            body,
            media_type=media_type,
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    routes: list[BaseRoute] = [Route("/static/{name}", static_file, methods=["GET"])]
    for path, handler, who, methods in (
        auth_pages.ROUTES
        + tenant_pages.ROUTES
        + webhook_pages.ROUTES
        + agent_pages.ROUTES
        + operator_pages.ROUTES
    ):
        for method in methods:
            routes.append(
                Route(path, wrap(handler, who, method == "POST"), methods=[method])  # type: ignore[arg-type]
            )

    async def not_found(request: Request, exc: Exception) -> Response:
        page = await load_page(request, services)
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        key = "error.method" if status == 405 else "error.not_found"
        return render(page, "error.html", status, message=page.t(key))

    async def failed(request: Request, exc: Exception) -> Response:
        log.exception("console page %s failed", request.url.path)
        page = await load_page(request, services)
        return render(page, "error.html", 500, message=page.t("error.internal"))

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: failed})
    app.state.console = services
    return app
