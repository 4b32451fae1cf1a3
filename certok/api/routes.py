"""HTTP routes of the httpsok OpenAPI (`/v1/cert/dv`, `/v1/cert/apply`) and service endpoints."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from certok import metrics
from certok.api.agent_api import certok_agent_routes
from certok.api.agents import agent_api_routes
from certok.api.apply_reads import ApplyReads, leave_for_route, prefetched
from certok.api.caches import token_key
from certok.api.cert_routes import apply_extras, certificate_routes
from certok.api.envelope import (
    NO_STORE,
    certok_error_handler,
    database_error_handler,
    database_unavailable_handler,
    envelope,
    envelope_with_encoded_data,
    http_error_handler,
    unexpected_error_handler,
)
from certok.api.fastpath import APPLY_PATH, CertokApp, header_value
from certok.api.openapi import openapi_document
from certok.api.order_answers import (
    dv_data,
    dv_message,
    encoded_issued_data,
    order_data,
    order_message,
)
from certok.api.post_api import post_api_routes
from certok.api.query_params import apply_params, choice_param, single_param
from certok.api.services import ApiServices
from certok.api.token_check import TOKEN_HEADER, TokenCheck, client_address
from certok.api.waiters import Watch
from certok.api.webhooks import webhook_routes
from certok.errors import CertokError, InvalidRequest, RateLimited
from certok.http01 import store as http01_store
from certok.names import parse_domains
from certok.order_states import ISSUED, PENDING
from certok.orders.quotas import redeem_with_quotas
from certok.orders.service import (
    OrderView,
    check_redeemable,
    order_state,
    redeemable_code,
    view_of_row,
    view_order,
)
from certok.ratelimit import HTTP01_RESPONDER

_TOKEN_HEADER_RAW = TOKEN_HEADER.encode("latin-1")
CHALLENGE_TYPES = ("dns", "http")
# Without a waiters poller (tests that build the app alone), a held request re-reads its
# order's state this often; `certok serve` runs the poller (see waiters.py).
WAIT_POLL_SECONDS = 1.0


def create_app(services: ApiServices) -> CertokApp:
    api = _HttpsokApi(services)
    tenant_of = api.tokens.tenant_of
    routes = [
        Route("/v1/cert/dv", api.dv, methods=["GET"]),
        Route(APPLY_PATH, api.apply, methods=["GET"]),
        Route("/v1/openapi.json", api.openapi, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/healthz", api.health, methods=["GET"]),
        Route("/readyz", api.ready, methods=["GET"]),
        # HTTP-01 responder: public, no token (the CA follows the customer's redirect here).
        Route("/v1/dv/{host}/{token}", api.http01_host_only, methods=["GET"]),
        Route("/v1/dv/{handle}/{host}/{token}", api.http01_tenant_bound, methods=["GET"]),
        *console_routes(services),
        *webhook_routes(services, tenant_of),
        *post_api_routes(services, tenant_of, order_data, order_message),
        # httpsok.sh's /v1/nginx protocol and the tenant's view of its hosts.
        *agent_api_routes(services, tenant_of),
        *certok_agent_routes(services, tenant_of),  # certok-agent (agent_api.py)
    ]
    # /v1/cert/list, /v1/cert/{id}, … (cert_routes.py)
    routes += certificate_routes(services, tenant_of)
    app = CertokApp(
        api.issued_answer,
        routes=routes,
        exception_handlers={
            CertokError: certok_error_handler,
            HTTPException: http_error_handler,
            OperationalError: database_unavailable_handler,
            DBAPIError: database_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.state.services = services
    return app


class _HttpsokApi:
    """The seed's GET API (`/v1/cert/dv`, `/v1/cert/apply`) and the service endpoints."""

    def __init__(self, services: ApiServices) -> None:
        self.services = services
        self.tokens = TokenCheck(services)
        self.code_reads = ApplyReads(services.sessions, services.box)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """200 when every check passes, else 503 naming what is wrong (load balancers)."""
        checks = await asyncio.to_thread(self.services.health.run)
        ready = all(result == "ok" for result in checks.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
            headers=NO_STORE,
        )

    async def http01_host_only(self, request: Request) -> Response:
        return await self._http01(request, None)

    async def http01_tenant_bound(self, request: Request) -> Response:
        return await self._http01(request, request.path_params["handle"])

    async def _http01(self, request: Request, handle: str | None) -> Response:
        # Public and unauthenticated: each request is a database read, bounded per client.
        self.services.limiter.check_client(
            client_address(request), HTTP01_RESPONDER, "HTTP-01 challenge requests"
        )
        host = str(request.path_params["host"]).rstrip(".").lower()
        token = str(request.path_params["token"])

        def lookup() -> str | None:
            with self.services.sessions() as session:
                return http01_store.key_authorization(session, host, token, handle)

        value = await asyncio.to_thread(lookup)
        if value is None:
            metrics.HTTP01_RESPONSES.labels("not_found").inc()
            return PlainTextResponse("no pending challenge for this host and token\n", 404)
        metrics.HTTP01_RESPONSES.labels("found").inc()
        return PlainTextResponse(value)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.services.settings))

    # --- GET /v1/cert/dv ---------------------------------------------------------------------
    async def dv(self, request: Request) -> Response:
        tenant = await self.tokens.tenant_of(request)
        self.services.limiter.check(tenant.id, "dv")
        params = request.query_params
        challenge_type = choice_param(params, "type", "dns", CHALLENGE_TYPES)
        raw = single_param(params, "domains")
        if not raw:
            raise InvalidRequest(
                "missing parameter domains: pass domains=example.com,*.example.com"
            )
        domains = parse_domains(raw, max_names=self.services.settings.max_domains)
        if challenge_type == "http":
            wildcards = [d for d in domains if d.startswith("*.")]
            if wildcards:
                raise InvalidRequest(
                    f"{wildcards[0]}: wildcard certificates need type=dns "
                    "(CAs validate wildcards over DNS only)"
                )
            result = await self.services.http_verifier.verify(tenant, domains)
        else:
            result = await self.services.verifier.verify(tenant, domains)
        return envelope(request, dv_data(result), msg=dv_message(result))

    # --- GET /v1/cert/apply ------------------------------------------------------------------
    async def apply(self, request: Request) -> Response:
        tenant = await self.tokens.tenant_of(request)
        self.services.limiter.check(tenant.id, "apply")
        code, algorithm, issuer = apply_params(request.query_params, self.services.settings)
        settings = self.services.settings
        cached = self.services.issued.get((tenant.id, code))
        if cached is not None:
            return envelope_with_encoded_data(request, cached, headers=NO_STORE)

        read_already, read = prefetched(request.scope, code)
        if read_already:
            check_redeemable(read, tenant.id, code)  # raises for a missing or expired code

        def redeem() -> tuple[int, bool, OrderView | None]:
            # Most calls poll a code that already has its order: a read, in the same session
            # and thread hop as the order's view. Only a first redemption writes (in the
            # writer's queue, `certok.db.writes`).
            if read_already:
                # check_redeemable refused a missing code; one with an order went no further
                assert read is not None and read.domains is not None
                domains = read.domains
            else:
                with self.services.sessions() as session:
                    row = redeemable_code(session, tenant.id, code)
                    if row.order_id is not None:
                        view = view_order(session, row.order_id, self.services.box)
                        return row.order_id, False, view
                    domains = row.domains
            extras = apply_extras(
                self.services, tenant.id, domains.split(","), issuer, request.query_params
            )
            # Joined to a running order for the same names, or new within the tenant's
            # pending cap (certok/orders/quotas.py).
            order_id, created = redeem_with_quotas(
                self.services.sessions,
                settings,
                tenant_id=tenant.id,
                code=code,
                algorithm=algorithm,
                issuer=issuer,
                extras=extras,
            )
            return order_id, created, None

        if read is not None and read.order_id is not None:
            # The fast path read the code and its order a moment ago (apply_reads.py).
            order_id, created, view = read.order_id, False, read.view
        else:
            order_id, created, view = await asyncio.to_thread(redeem)
        if created or view is None or view.status == PENDING:
            view = await self._wait_for(order_id, settings.apply_wait_seconds, created=created)
        if view.status == ISSUED:
            encoded = encoded_issued_data(view)
            self.services.issued.put((tenant.id, code), encoded)
            return envelope_with_encoded_data(request, encoded, headers=NO_STORE)
        return envelope(request, order_data(view), msg=order_message(view), headers=NO_STORE)

    async def issued_answer(self, scope: Scope) -> bytes | None:
        """apply's issued answer (its data, encoded) for a token this process's cache accepts:
        from the cache of issued answers, else read with other polls' codes. The same checks
        as `apply`, with no side effect unless it answers, but one: what it read of a code
        that is not issued is left on the request for the full route. None sends the request
        down the full route."""
        token = header_value(scope, _TOKEN_HEADER_RAW)
        if token is None:
            return None
        tenant = self.services.tokens.get(token_key(token))
        if tenant is None:
            return None
        try:
            code, _, _ = apply_params(QueryParams(scope["query_string"]), self.services.settings)
        except InvalidRequest:
            return None
        answer = self.services.issued.get((tenant.id, code))
        if answer is None:
            found = await self.code_reads.get(tenant.id, code)
            if not isinstance(found, bytes):  # not issued, not stored, or another tenant's
                leave_for_route(scope, code, found)
                return None
            answer = found
            self.services.issued.put((tenant.id, code), answer)
        try:
            # Last: the one check that takes something. A refusal takes nothing, so the full
            # route refuses the same way.
            self.services.limiter.check(tenant.id, "apply")
        except RateLimited:
            return None
        return answer

    async def _wait_for(self, order_id: int, seconds: float, *, created: bool) -> OrderView:
        """The order's view once it is no longer pending, or after `seconds`. `created`: this
        request made the order a moment ago, so it is pending by construction and its worker
        is yet to be woken."""
        deadline = time.monotonic() + seconds
        with self.services.waiters.watch(order_id) as finished:
            if created:
                # The watch is in place before the worker is woken, so its finish wakes us;
                # an order another process finishes first is found by the poller's next
                # read of every watched order (or `_woken_or_finished`'s, without one).
                self.services.wake_worker()
            view = None if created else await asyncio.to_thread(self._view, order_id)
            while view is None or view.status == PENDING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.services.waiters.polling:
                    # This process's worker or the shared poller wakes us; nothing to read.
                    if not await finished.wait(remaining):
                        break
                elif not await self._woken_or_finished(finished, order_id, remaining):
                    continue
                if finished.row is not None:
                    # This process's worker finished it and handed on what it saved. Built on
                    # the loop, the key's decryption included: AES-GCM over one key is a
                    # small part of the view, and a hop to a thread would cost the loop
                    # several times the whole view (bench/README.md, "mend round", item 4).
                    view = view_of_row(finished.row, self.services.box)
                else:
                    view = await asyncio.to_thread(self._view, order_id)
        if view is None:  # not woken within `seconds`: what the order is now
            view = await asyncio.to_thread(self._view, order_id)
        return view

    async def _woken_or_finished(self, finished: Watch, order_id: int, remaining: float) -> bool:
        """Without a poller in this process (tests that build the app alone): wait a while,
        then look at the order's state ourselves."""
        if await finished.wait(min(WAIT_POLL_SECONDS, remaining)):
            return True
        return await asyncio.to_thread(self._read_state, order_id) != PENDING

    def _read_state(self, order_id: int) -> str:
        with self.services.sessions() as session:
            return order_state(session, order_id)

    def _view(self, order_id: int) -> OrderView:
        with self.services.sessions() as session:
            return view_order(session, order_id, self.services.box)


def console_routes(services: ApiServices) -> list[Any]:
    """The console under /console/ (server-rendered pages; certok/console/)."""
    from certok.console.app import console_mount

    return console_mount(
        services.settings,
        services.sessions,
        services.box,
        services.verifier,
        services.http_verifier,
        # Read when called: certok serve sets the worker's wake-up after building the app.
        lambda: services.wake_certificates() if services.wake_certificates else None,
        services.events,
    )
