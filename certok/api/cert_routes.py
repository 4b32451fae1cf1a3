"""Certificate records over HTTP: `/v1/cert/list`, `/v1/cert/{id}` (+ .pem downloads) and
`/v1/cert/{id}/revoke`; and what apply adds to an order (`profile`, `replaces`).

Same token header and envelope as the seed's routes. Every lookup is scoped by the caller's
tenant, so another tenant's id is answered exactly like an unknown one (404).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from certok.api.envelope import NO_STORE, envelope
from certok.certificates import service
from certok.certificates.order_profile import order_terms
from certok.clock import utcnow
from certok.db.engine import transaction
from certok.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from certok.agents.routes import TenantOf
    from certok.api.services import ApiServices

# How often a revoke request looks whether the worker has finished with it.
REVOKE_POLL_SECONDS = 0.1
MAX_BODY_BYTES = 4096


def certificate_routes(services: ApiServices, tenant_of: TenantOf) -> list[Route]:
    routes = _CertRoutes(services, tenant_of)
    return [
        Route("/v1/cert/list", routes.list, methods=["GET"]),
        Route("/v1/cert/{id:int}", routes.get, methods=["GET"]),
        Route("/v1/cert/{id:int}/fullchain.pem", routes.fullchain, methods=["GET"]),
        Route("/v1/cert/{id:int}/privkey.pem", routes.privkey, methods=["GET"]),
        Route("/v1/cert/{id:int}/revoke", routes.revoke, methods=["POST"]),
    ]


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _summary(view: service.CertificateView) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": view.id,
        "domains": view.domains,
        "issuer": view.issuer,
        "algorithm": view.algorithm,
        "notBefore": _time(view.not_before),
        "notAfter": _time(view.not_after),
        "renewAt": _time(view.renew_at),
        "status": view.status,
    }
    return data


def _detail(view: service.CertificateView) -> dict[str, Any]:
    data = _summary(view)
    data.update(
        serial=view.serial,
        profile=view.profile,
        replaces=view.replaces,
        replacedBy=view.replaced_by,
        revocationPending=view.revoke_pending,
    )
    if view.revoke_error:
        data["revocationError"] = view.revoke_error
    if view.certificate is not None:
        data.update(certificate=view.certificate, privateKey=view.private_key)
    return data


def _positive_int(params: QueryParams, name: str, default: int, maximum: int) -> int:
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"parameter {name} given {len(values)} times: give it once")
    if not values:
        return default
    text = values[0]
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise InvalidRequest(f"{name}={text!r} is not a whole number from 1 to {maximum}")
    return int(text)


def _certificate_id(request: Request) -> int:
    value = int(request.path_params["id"])
    # Out of the database's integer range: no such certificate, like any unknown id.
    if value > 2**62:
        raise NotFound(f"certificate {value} not found: list yours with GET /v1/cert/list")
    return value


class _CertRoutes:
    def __init__(self, services: ApiServices, tenant_of: TenantOf) -> None:
        self.services = services
        self._tenant_of = tenant_of

    async def list(self, request: Request) -> Response:
        tenant = await self._tenant_of(request)
        params = request.query_params
        page = _positive_int(params, "page", 1, 1_000_000)
        size = _positive_int(params, "size", 20, service.MAX_PAGE_SIZE)
        status = params.get("status")
        if status is not None and status not in service.STATUSES:
            raise InvalidRequest(
                f"status={status!r} is not a certificate status: use one of "
                f"{', '.join(service.STATUSES)}, or leave it out for all"
            )
        domain = (params.get("domain") or "").strip().rstrip(".").lower() or None
        if domain is not None and (len(domain) > 253 or "," in domain):
            raise InvalidRequest("domain must be one name, such as www.example.com")

        def read() -> tuple[int, list[service.CertificateView]]:
            with self.services.sessions() as session:
                return service.list_certificates(
                    session, tenant.id, utcnow(), page=page, size=size, domain=domain, status=status
                )

        total, views = await asyncio.to_thread(read)
        data = {"total": total, "page": page, "size": size, "items": [_summary(v) for v in views]}
        return envelope(request, data, headers=NO_STORE)

    async def _view(self, request: Request, *, secrets: bool) -> service.CertificateView:
        tenant = await self._tenant_of(request)
        certificate_id = _certificate_id(request)

        def read() -> service.CertificateView:
            with self.services.sessions() as session:
                return service.get_certificate(
                    session,
                    tenant.id,
                    certificate_id,
                    utcnow(),
                    self.services.box if secrets else None,
                )

        return await asyncio.to_thread(read)

    async def get(self, request: Request) -> Response:
        view = await self._view(request, secrets=True)
        return envelope(request, _detail(view), headers=NO_STORE)

    async def fullchain(self, request: Request) -> Response:
        view = await self._view(request, secrets=True)
        return PlainTextResponse(
            view.certificate or "", media_type="application/pem-certificate-chain", headers=NO_STORE
        )

    async def privkey(self, request: Request) -> Response:
        view = await self._view(request, secrets=True)
        return PlainTextResponse(
            view.private_key or "", media_type="application/x-pem-file", headers=NO_STORE
        )

    async def revoke(self, request: Request) -> Response:
        """Record the request, wake the worker (it revokes through the issuing ACME account)
        and wait for it at most `apply_wait_seconds`: a slow CA never holds the request."""
        tenant = await self._tenant_of(request)
        certificate_id = _certificate_id(request)
        reason = service.revocation_reason(await _reason_of(request))
        now = utcnow()

        def record() -> bool:
            with transaction(self.services.sessions) as session:
                return service.request_revocation(session, tenant.id, certificate_id, reason, now)

        if await asyncio.to_thread(record) and self.services.wake_certificates is not None:
            self.services.wake_certificates()

        def settled() -> bool:
            with self.services.sessions() as session:
                return service.revocation_settled(session, tenant.id, certificate_id)

        deadline = time.monotonic() + self.services.settings.apply_wait_seconds
        while not await asyncio.to_thread(settled) and time.monotonic() < deadline:
            await asyncio.sleep(REVOKE_POLL_SECONDS)
        view = await self._view(request, secrets=False)
        if view.status == service.REVOKED:
            msg = "success"
        elif view.revoke_error:
            msg = f"the CA refused the revocation: {view.revoke_error}"
        else:
            msg = "revocation requested: the CA has not confirmed it yet; GET the certificate later"
        return envelope(request, _detail(view), msg=msg, headers=NO_STORE)


async def _reason_of(request: Request) -> Any:
    """`reason` from a JSON body ({"reason": "keyCompromise"} or a code), else the query."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(f"the request body is over {MAX_BODY_BYTES} bytes")
    if body.strip():
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise InvalidRequest(
                'the body is not JSON: send {"reason": "keyCompromise"} or no body'
            ) from exc
        if not isinstance(document, dict):
            raise InvalidRequest('the body must be a JSON object such as {"reason": 1}')
        return document.get("reason")
    return request.query_params.get("reason")


_PROFILE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CERTIFICATE_ID = re.compile(r"[0-9]{1,18}")


def check_apply_extras(params: QueryParams) -> None:
    """apply's `profile` and `replaces`, when given, are well formed (every apply call, the
    cached answers' fast path included: a malformed request is refused however it is sent)."""
    for name, pattern, example in (
        ("profile", _PROFILE, "tlsserver"),
        ("replaces", _CERTIFICATE_ID, "a certificate id such as 42"),
    ):
        values = params.getlist(name)
        if len(values) > 1:
            raise InvalidRequest(f"parameter {name} given {len(values)} times: give it once")
        if values and not pattern.fullmatch(values[0]):
            raise InvalidRequest(
                f"{name}={values[0]!r} is not valid: give {example}, or leave it out"
            )


def apply_extras(
    services: ApiServices, tenant_id: int, domains: list[str], issuer: str, params: QueryParams
) -> dict[str, Any]:
    """What apply's first redemption of a code for `domains` adds to the order: the
    certificate it renews (named by `replaces`, or the tenant's live certificate for exactly
    these names), and the profile and deadline of every new order
    (certok/certificates/order_profile.py), from `profile` when given. Blocking: call in a
    thread."""
    replaces_text = params.get("replaces")
    replaces = None
    if replaces_text is not None:
        with services.sessions() as session:
            replaces = service.get_certificate(session, tenant_id, int(replaces_text), utcnow()).id
    terms = order_terms(
        services.sessions,
        services.profiles,
        tenant_id=tenant_id,
        issuer=issuer,
        requested=params.get("profile"),
        deadline_seconds=services.settings.order_deadline_seconds,
        renews=replaces,
        domains=domains,
    )
    return {"deadline_seconds": terms.deadline_seconds, **terms.order_extras()}
