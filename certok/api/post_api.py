"""httpsok's POST OpenAPI, so clients written for it work by changing the base URL.

- `POST /v1/cert/dv {"domainList": [...]}` -> `data.configs[{domain, host, hostValue,
  valid}]` and `data.valid`: the same delegation check as `GET /v1/cert/dv`.
- `POST /v1/cert/apply {"domainList", "algorithm", "ca", "notifyUrl"}` -> `data: "<id>"`:
  checks the delegations, takes a verification code and redeems it at once (the same code
  and order services as the GET API, and its profile rule: certok/certificates/
  order_profile.py); the id is that code, so `GET /v1/cert/apply?code=<id>` answers for the
  same order.
- `GET /v1/cert/apply/{id}` -> the GET apply's status/certificate answer, without waiting.
  One id polled more often than every `post_api_poll_seconds` gets 429 with Retry-After.

The token goes in the `OpenApiKey` header (the same tokens as `httpsok-token`).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable
from string import hexdigits
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from certok.api.caches import TtlCache
from certok.api.envelope import NO_STORE, envelope
from certok.api.query_params import named_choice
from certok.api.webhooks import EventApi, checked_url, read_json_object
from certok.certificates.order_profile import OrderTerms, order_terms
from certok.crypto import ALGORITHMS
from certok.db.models import OrderNotifyUrl
from certok.db.writes import write
from certok.errors import InvalidRequest, RateLimited, Unauthenticated
from certok.names import parse_domains
from certok.order_states import PENDING
from certok.orders.codes import CODE_HEX_CHARS, code_not_found
from certok.orders.quotas import redeem_job, redeemed
from certok.orders.redemption import Redemption, RedemptionTerms
from certok.orders.service import OrderView, code_order, view_order
from certok.tenants.service import TenantRef

if TYPE_CHECKING:
    from certok.api.services import ApiServices

OPEN_API_KEY_HEADER = "OpenApiKey"
TenantOf = Callable[[Request, str], Awaitable[TenantRef]]
# httpsok's names for the CAs (ca=google|letsencrypt|zerossl) are certok's issuer names.
DEFAULT_POLL_SECONDS = 10.0


class PollGate:
    """One answer per (tenant, id) per `seconds`: polling faster gets 429 + Retry-After."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._last: TtlCache[tuple[int, str], float] = TtlCache(
            ttl=seconds, max_entries=100_000, clock=clock
        )

    def check(self, tenant_id: int, apply_id: str) -> None:
        if self._seconds <= 0:
            return
        now = self._clock()
        last = self._last.get((tenant_id, apply_id))
        if last is not None and now - last < self._seconds:
            wait = max(1, math.ceil(self._seconds - (now - last)))
            raise RateLimited(
                f"apply {apply_id} was asked about {now - last:.0f} s ago: poll at most every "
                f"{self._seconds:g} s (or pass notifyUrl to be told); retry in {wait} s",
                retry_after=wait,
            )
        self._last.put((tenant_id, apply_id), now)


def _domain_list(body: dict[str, Any], max_names: int) -> list[str]:
    value = body.get("domainList")
    if not isinstance(value, list) or not value or not all(isinstance(d, str) for d in value):
        raise InvalidRequest(
            'domainList must be a non-empty list of names, e.g. {"domainList": ["example.com"]}'
        )
    return parse_domains(",".join(value), max_names=max_names)


def _choice(body: dict[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value is None or value == "":
        return default
    choice = named_choice(value, choices) if isinstance(value, str) else None
    if choice is not None:
        return choice
    raise InvalidRequest(
        f"{name}={value!r} is not supported: use one of {', '.join(choices)}, "
        f"or leave {name} out for {default}"
    )


def _apply_job(
    connection: Connection, *, terms: RedemptionTerms, notify_url: str | None
) -> Redemption:
    """Redeem the fresh code within the tenant's caps (certok/orders/quotas.py, as the GET
    apply does) and remember the notifyUrl, in one transaction."""
    outcome = redeem_job(connection, terms)
    order_id, created = outcome.order_id, outcome.created
    if order_id is not None and created and notify_url:
        connection.execute(
            insert(OrderNotifyUrl).values(
                order_id=order_id, tenant_id=terms.tenant_id, url=notify_url, created_at=terms.now
            )
        )
    return outcome


HEX_DIGITS = frozenset(hexdigits.lower())


def post_api_routes(
    services: ApiServices,
    tenant_of: TenantOf,
    order_data: Callable[[OrderView], dict[str, Any]],
    order_message: Callable[[OrderView], str],
) -> list[Route]:
    settings = services.settings
    events: EventApi = services.events
    gate = services.post_api_polls

    async def tenant(request: Request) -> TenantRef:
        if not request.headers.get(OPEN_API_KEY_HEADER):
            raise Unauthenticated(
                f"missing token: send the header `{OPEN_API_KEY_HEADER}: <your token>`"
            )
        return await tenant_of(request, OPEN_API_KEY_HEADER)

    async def dv(request: Request) -> Response:
        ref = await tenant(request)
        services.limiter.check(ref.id, "dv")
        body = await read_json_object(request, ("domainList",), strict=False)
        domains = _domain_list(body, settings.max_domains)
        result = await services.verifier.verify(ref, domains)
        configs = [
            {
                "domain": item.domain,
                "host": item.name,
                "hostValue": item.value,
                "valid": item.valid,
                **({"detail": item.detail} if item.detail else {}),
            }
            for item in result.items
        ]
        msg = "success" if result.valid else "not verified yet: " + "; ".join(result.problems)
        return envelope(request, {"configs": configs, "valid": result.valid}, msg=msg)

    def terms_of(tenant_id: int, domains: list[str], issuer: str) -> OrderTerms:
        """The certificate the order renews (the tenant's live one for exactly these names,
        as the GET apply finds it) and the order's profile and deadline: httpsok's body has
        no `profile`, so the renewed certificate's or the tenant's default."""
        return order_terms(
            services.sessions,
            services.profiles,
            tenant_id=tenant_id,
            issuer=issuer,
            requested=None,
            deadline_seconds=settings.order_deadline_seconds,
            domains=domains,
        )

    async def apply(request: Request) -> Response:
        ref = await tenant(request)
        services.limiter.check(ref.id, "apply")
        body = await read_json_object(
            request, ("domainList", "algorithm", "ca", "notifyUrl"), strict=False
        )
        domains = _domain_list(body, settings.max_domains)
        algorithm = _choice(body, "algorithm", "ECC", ALGORITHMS)
        issuer = _choice(body, "ca", settings.default_issuer, tuple(sorted(settings.issuers)))
        raw_notify = body.get("notifyUrl")
        notify_url = None
        if raw_notify not in (None, ""):
            notify_url = checked_url(events, raw_notify, "notifyUrl")
        # Before the names are checked: a profile the issuer does not offer leaves no code.
        terms = await asyncio.to_thread(terms_of, ref.id, domains, issuer)
        result = await services.verifier.verify(ref, domains)
        if not result.valid or result.code is None:
            raise InvalidRequest(
                "not verified yet: "
                + "; ".join(dict.fromkeys(result.problems))
                + " (POST /v1/cert/dv shows each name's CNAME)"
            )
        outcome = await asyncio.to_thread(
            write,
            services.sessions,
            functools.partial(
                _apply_job,
                terms=RedemptionTerms(
                    tenant_id=ref.id,
                    code=result.code,
                    algorithm=algorithm,
                    issuer=issuer,
                    deadline_seconds=terms.deadline_seconds,
                    order_extras=terms.order_extras(),
                    max_pending=settings.tenant_max_pending_orders,
                    join_seconds=settings.order_join_seconds,
                    now=events.clock(),
                ),
                notify_url=notify_url,
            ),
        )
        redeemed(outcome)  # the pending cap's 429, or a tenant disabled meanwhile
        services.wake_worker()
        return envelope(request, result.code, headers=NO_STORE)

    async def status(request: Request) -> Response:
        ref = await tenant(request)
        apply_id = str(request.path_params["id"]).strip().lower()
        # Ids are codes (16 hex): anything else is unknown before it takes a place in the
        # gate's memory, which a client could otherwise fill with made-up ids.
        if len(apply_id) != CODE_HEX_CHARS or not all(c in HEX_DIGITS for c in apply_id):
            raise code_not_found(apply_id)
        services.limiter.check(ref.id, "apply")
        gate.check(ref.id, apply_id)

        def read() -> OrderView:
            with services.sessions() as session:
                order_id = code_order(session, ref.id, apply_id)
                if order_id is None:  # a GET-API code not yet redeemed: nothing ordered
                    return OrderView(id=0, status=PENDING, issuer="", domains="", reason=None)
                return view_order(session, order_id, services.box)

        view = await asyncio.to_thread(read)
        return envelope(request, order_data(view), msg=order_message(view), headers=NO_STORE)

    return [
        Route("/v1/cert/dv", dv, methods=["POST"]),
        Route("/v1/cert/apply", apply, methods=["POST"]),
        Route("/v1/cert/apply/{id}", status, methods=["GET"]),
    ]
