"""HTTP routes of the httpsok OpenAPI (`/v1/cert/dv`, `/v1/cert/apply`) and service endpoints."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from certok import metrics
from certok.api.agent_api import certok_agent_routes
from certok.api.agents import agent_api_routes
from certok.api.caches import TtlCache, token_key
from certok.api.cert_routes import apply_extras, certificate_routes, check_apply_extras
from certok.api.envelope import (
    NO_STORE,
    certok_error_handler,
    database_error_handler,
    database_unavailable_handler,
    encode_data,
    envelope,
    envelope_with_encoded_data,
    http_error_handler,
    unexpected_error_handler,
)
from certok.api.fastpath import APPLY_PATH, CertokApp, header_value
from certok.api.openapi import openapi_document
from certok.api.post_api import DEFAULT_POLL_SECONDS, PollGate, post_api_routes
from certok.api.waiters import OrderWaiters, Watch
from certok.api.webhooks import EventApi, webhook_routes
from certok.crypto import ALGORITHMS, SecretBox
from certok.errors import CertokError, InvalidRequest, RateLimited, Unauthenticated
from certok.health import HealthChecks
from certok.http01 import store as http01_store
from certok.names import parse_domains
from certok.orders.quotas import QUEUED, redeem_with_quotas
from certok.orders.service import (
    PENDING,
    OrderView,
    code_order,
    order_state,
    view_order,
)
from certok.ratelimit import HTTP01_RESPONDER, RateLimiter
from certok.settings import Settings
from certok.tenants.service import TenantRef, authenticate
from certok.tenants.token_usage import TokenUsage
from certok.verification.dns_verifier import DnsVerifier
from certok.verification.http_verifier import HttpVerifier
from certok.verification.results import DvResult

TOKEN_HEADER = "httpsok-token"  # noqa: S105 - a header name, not a secret
_TOKEN_HEADER_RAW = TOKEN_HEADER.encode("latin-1")
# How long a token, once accepted, is exempt from the per-client limit on token lookups.
ACCEPTED_TOKEN_SECONDS = 3600.0
CHALLENGE_TYPES = ("dns", "http")
# Without a waiters poller (tests that build the app alone), a held request re-reads its
# order's state this often; `certok serve` runs the poller (see waiters.py).
WAIT_POLL_SECONDS = 1.0


@dataclass
class ApiServices:
    settings: Settings
    sessions: sessionmaker[Session]
    box: SecretBox
    verifier: DnsVerifier
    http_verifier: HttpVerifier
    waiters: OrderWaiters
    wake_worker: Any  # Callable[[], None]
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter({}))
    tokens: TtlCache[bytes, TenantRef] = field(
        default_factory=lambda: TtlCache(ttl=2.0, max_entries=100_000)
    )
    # Keys of tokens accepted in the last hour: their lookups skip the per-client limit.
    accepted_tokens: TtlCache[bytes, bool] = field(
        default_factory=lambda: TtlCache(ttl=ACCEPTED_TOKEN_SECONDS, max_entries=100_000)
    )
    issued: TtlCache[tuple[int, str], bytes] = field(
        default_factory=lambda: TtlCache(ttl=300.0, max_entries=10_000)
    )
    # Stamps tokens' last use for the console (on token-cache misses only); None: not kept.
    token_usage: TokenUsage | None = None

    # Webhooks and the POST API (certok/api/webhooks.py, certok/api/post_api.py).
    events: EventApi = field(default_factory=EventApi)
    post_api_polls: PollGate = field(default_factory=lambda: PollGate(DEFAULT_POLL_SECONDS))
    # Certificates (cert_routes.py): the issuers' meta.profiles, and a wake-up for the worker's
    # certificate tasks (revocations).
    profiles: Any = None  # certok.certificates.profiles.ProfileCatalog | None
    wake_certificates: Any = None  # Callable[[], None] | None
    # /readyz: the process's checks (database, DNS listener, worker heartbeat; see runtime).
    health: HealthChecks = field(default_factory=HealthChecks)


def create_app(services: ApiServices) -> CertokApp:
    api = _Api(services)
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
        *webhook_routes(services, api._tenant),
        *post_api_routes(services, api._tenant, _order_data, _order_message),
        # httpsok.sh's /v1/nginx protocol and the tenant's view of its hosts.
        *agent_api_routes(services, api._tenant),
        *certok_agent_routes(services, api._tenant),  # certok-agent (agent_api.py)
    ]
    routes += certificate_routes(api)  # /v1/cert/list, /v1/cert/{id}, … (cert_routes.py)
    app = CertokApp(
        api.cached_issued_answer,
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


class _Api:
    def __init__(self, services: ApiServices) -> None:
        self.s = services
        # Token checks in flight, by token key: requests with the same token that arrive
        # while its cache entry is being renewed share that one database read.
        self._checking: dict[bytes, asyncio.Future[TenantRef]] = {}

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """200 when every check passes, else 503 naming what is wrong (load balancers)."""
        checks = await asyncio.to_thread(self.s.health.run)
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
        self.s.limiter.check_client(
            _client_address(request), HTTP01_RESPONDER, "HTTP-01 challenge requests"
        )
        host = str(request.path_params["host"]).rstrip(".").lower()
        token = str(request.path_params["token"])

        def lookup() -> str | None:
            with self.s.sessions() as session:
                return http01_store.key_authorization(session, host, token, handle)

        value = await asyncio.to_thread(lookup)
        if value is None:
            metrics.HTTP01_RESPONSES.labels("not_found").inc()
            return PlainTextResponse("no pending challenge for this host and token\n", 404)
        metrics.HTTP01_RESPONSES.labels("found").inc()
        return PlainTextResponse(value)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.s.settings))

    # --- GET /v1/cert/dv ---------------------------------------------------------------------
    async def dv(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        self.s.limiter.check(tenant.id, "dv")
        params = request.query_params
        challenge_type = _choice(params, "type", "dns", CHALLENGE_TYPES)
        raw = _single(params, "domains")
        if not raw:
            raise InvalidRequest(
                "missing parameter domains: pass domains=example.com,*.example.com"
            )
        domains = parse_domains(raw, max_names=self.s.settings.max_domains)
        if challenge_type == "http":
            wildcards = [d for d in domains if d.startswith("*.")]
            if wildcards:
                raise InvalidRequest(
                    f"{wildcards[0]}: wildcard certificates need type=dns "
                    "(CAs validate wildcards over DNS only)"
                )
            result = await self.s.http_verifier.verify(tenant, domains)
        else:
            result = await self.s.verifier.verify(tenant, domains)
        return envelope(request, _dv_data(result), msg=_dv_message(result))

    # --- GET /v1/cert/apply ------------------------------------------------------------------
    async def apply(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        self.s.limiter.check(tenant.id, "apply")
        code, algorithm, issuer = _apply_params(request.query_params, self.s.settings)
        settings = self.s.settings
        cached = self.s.issued.get((tenant.id, code))
        if cached is not None:
            return envelope_with_encoded_data(request, cached, headers=NO_STORE)

        def redeem() -> tuple[int, bool]:
            # Most calls poll a code that already has its order: a read. Only a first
            # redemption writes (in the writer's queue, `certok.db.writes`).
            with self.s.sessions() as session:
                existing = code_order(session, tenant.id, code)
            if existing is not None:
                return existing, False
            extras = apply_extras(self.s, tenant.id, code, issuer, request.query_params)
            # Joined to a running order for the same names, or new within the tenant's
            # pending cap (certok/orders/quotas.py).
            return redeem_with_quotas(
                self.s.sessions,
                settings,
                tenant_id=tenant.id,
                code=code,
                algorithm=algorithm,
                issuer=issuer,
                extras=extras,
            )

        order_id, created = await asyncio.to_thread(redeem)
        if created:
            self.s.wake_worker()
        view = await self._wait_for(order_id, settings.apply_wait_seconds)
        data = _order_data(view)
        if view.status == "issued":
            encoded = encode_data(data)
            self.s.issued.put((tenant.id, code), encoded)
            return envelope_with_encoded_data(request, encoded, headers=NO_STORE)
        return envelope(request, data, msg=_order_message(view), headers=NO_STORE)

    def cached_issued_answer(self, scope: Scope) -> bytes | None:
        """apply's issued answer (its data, encoded) when this process's caches hold everything
        it needs (an accepted token's tenant, the order's issued answer): the same checks as
        `apply`, with no side effect unless it answers. None sends the request down the full
        route."""
        token = header_value(scope, _TOKEN_HEADER_RAW)
        if token is None:
            return None
        tenant = self.s.tokens.get(token_key(token))
        if tenant is None:
            return None
        try:
            code, _, _ = _apply_params(QueryParams(scope["query_string"]), self.s.settings)
        except InvalidRequest:
            return None
        cached = self.s.issued.get((tenant.id, code))
        if cached is None:
            return None
        try:
            # Last: the one check that takes something. A refusal takes nothing, so the full
            # route refuses the same way.
            self.s.limiter.check(tenant.id, "apply")
        except RateLimited:
            return None
        return cached

    async def _wait_for(self, order_id: int, seconds: float) -> OrderView:
        """The order's view once it is no longer pending, or after `seconds`."""
        deadline = time.monotonic() + seconds
        with self.s.waiters.watch(order_id) as finished:
            view = await asyncio.to_thread(self._view, order_id)
            while view.status == PENDING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.s.waiters.polling:
                    # This process's worker or the shared poller wakes us; nothing to read.
                    if not await finished.wait(remaining):
                        break
                elif not await self._woken_or_finished(finished, order_id, remaining):
                    continue
                view = await asyncio.to_thread(self._view, order_id)
        return view

    async def _woken_or_finished(self, finished: Watch, order_id: int, remaining: float) -> bool:
        """Without a poller in this process (tests that build the app alone): wait a while,
        then look at the order's state ourselves."""
        if await finished.wait(min(WAIT_POLL_SECONDS, remaining)):
            return True
        return await asyncio.to_thread(self._read_state, order_id) != PENDING

    def _read_state(self, order_id: int) -> str:
        with self.s.sessions() as session:
            return order_state(session, order_id)

    def _view(self, order_id: int) -> OrderView:
        with self.s.sessions() as session:
            return view_order(session, order_id, self.s.box)

    async def _tenant(self, request: Request, header: str = TOKEN_HEADER) -> TenantRef:
        token = request.headers.get(header)
        key = token_key(token) if token else None
        if key is not None:
            known = self.s.tokens.get(key)
            if known is not None:
                return known

        if key is None or self.s.accepted_tokens.get(key) is None:
            # A lookup that may well fail (no token, a wrong or an unknown one): bounded per
            # client address, so a flood of guesses cannot buy unlimited database reads.
            self.s.limiter.check_unverified_token(_client_address(request), header)

        def check() -> TenantRef:
            with self.s.sessions() as session:
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
            self.s.tokens.put(key, done.result())
            self.s.accepted_tokens.put(key, True)
            if self.s.token_usage is not None:
                self.s.token_usage.seen(key.hex())
        elif isinstance(failure, Unauthenticated):
            # Revoked, or its tenant disabled: its lookups count against the client's limit
            # again, or a revoked token would buy unlimited database reads for an hour.
            self.s.accepted_tokens.discard(key)


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


def _client_address(request: Request) -> str:
    """The peer's address; behind a proxy listed in `trusted_proxies`, the client address it
    appended to X-Forwarded-For (uvicorn's ProxyHeadersMiddleware puts it in the scope)."""
    return request.client.host if request.client is not None else "unknown"


# --- parameters ------------------------------------------------------------------------------
def _single(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"parameter {name} given {len(values)} times: give it once")
    return values[0] if values else None


def _choice(params: QueryParams, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _single(params, name)
    if value is None:
        return default
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise InvalidRequest(
        f"{name}={value!r} is not supported: use one of {', '.join(choices)} "
        f"(any case), or leave {name} out for {default}"
    )


def _apply_params(params: QueryParams, settings: Settings) -> tuple[str, str, str]:
    """apply's code (normalised), algorithm and issuer, or InvalidRequest saying what to fix."""
    code = _single(params, "code")
    if not code:
        raise InvalidRequest("missing parameter code: call /v1/cert/dv first to get a code")
    algorithm = _choice(params, "algorithm", "ECC", ALGORITHMS)
    issuer = _choice(params, "issuer", settings.default_issuer, tuple(sorted(settings.issuers)))
    check_apply_extras(params)  # profile, replaces (cert_routes.py)
    return code.strip().lower(), algorithm, issuer


# --- rendering ----------------------------------------------------------------------------------
def _dv_data(result: DvResult) -> dict[str, Any]:
    items = []
    for item in result.items:
        entry: dict[str, Any] = {"domain": item.domain}
        if item.type is not None:
            entry.update(type=item.type, name=item.name, value=item.value)
        entry.update(valid=item.valid, cost=str(item.cost_ms))
        if item.detail:
            entry["detail"] = item.detail
        if item.code:
            entry["code"] = item.code
        items.append(entry)
    data: dict[str, Any] = {
        "code": result.code,
        "type": result.type,
        "items": items,
        "valid": result.valid,
        "cost": str(result.cost_ms),
    }
    if result.nginx is not None:
        data["nginx"] = result.nginx
    return data


def _dv_message(result: DvResult) -> str:
    if result.valid:
        return "success"
    return "not verified yet: " + "; ".join(dict.fromkeys(result.problems))


def _time(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _order_data(view: OrderView) -> dict[str, Any]:
    if view.status == "issued":
        return {
            "status": "issued",
            "issuer": view.issuer,
            "subject": view.subject,
            "notBefore": _time(view.not_before),
            "notAfter": _time(view.not_after),
            "domains": view.domains,
            "certificate": view.certificate,
            "privateKey": view.private_key,
            # Beyond the seed: the certificate record (GET /v1/cert/{id}) and when to renew.
            "id": view.certificate_id,
            "renewAt": _time(view.renew_at),
        }
    data: dict[str, Any] = {"status": view.status}
    if view.reason:
        data["reason"] = view.reason
    return data


def _order_message(view: OrderView) -> str:
    if view.status == "failure":
        return f"certificate order failed: {view.reason}"
    if view.status == "pending":
        if view.reason and view.reason.startswith(QUEUED):
            return f"pending, {view.reason}"
        return "pending: ask again in about 10 seconds"
    return "success"
