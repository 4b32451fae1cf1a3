"""The agents' endpoints on the API: httpsok.sh's `/v1/nginx` protocol (certok/agents/routes.py)
and, for the tenant, its hosts with their managed certificates and log (JSON envelope)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from certok.agents import hosts
from certok.agents.deployed_record import current_record, leaf_sha256, record_secret
from certok.agents.issuing import AgentIssuer
from certok.agents.renewal import renewal_clock
from certok.agents.routes import AgentServices, TenantOf, agent_routes
from certok.api.envelope import NO_STORE, envelope
from certok.db.models import ManagedCertificate
from certok.errors import InvalidRequest, NotFound, RateLimited
from certok.ratelimit import RateLimiter

if TYPE_CHECKING:  # routes.py imports this module to build its routes
    from certok.api.services import ApiServices

MAX_LOG_LIMIT = 500
PREPARSE = "preparse"


def agent_api_routes(services: ApiServices, tenant_of: TenantOf) -> list[Route]:
    """Routes for the API's services, with its token check."""
    issuer = AgentIssuer(
        services.sessions,
        services.box,
        services.verifier,
        services.waiters,
        services.wake_worker,
        services.settings,
        renewal_clock(services.settings),
        services.profiles,
    )
    agent = AgentServices(
        settings=services.settings,
        sessions=services.sessions,
        verifier=services.verifier,
        issuer=issuer,
        tenant_of=tenant_of,
        take_preparse=_preparse_limit(services.settings.agent_preparse_per_minute),
    )
    listing = _HostListing(agent)
    return [
        *agent_routes(agent),
        Route("/v1/agents/hosts", listing.hosts, methods=["GET"]),
        Route("/v1/agents/hosts/{uuid}/log", listing.log, methods=["GET"]),
    ]


def _preparse_limit(per_minute: int) -> Callable[[int], None]:
    """One of the tenant's nginx configurations for this minute, or RateLimited saying so."""
    limiter = RateLimiter({PREPARSE: per_minute})

    def take(tenant_id: int) -> None:
        try:
            limiter.check(tenant_id, PREPARSE)
        except RateLimited as limited:
            raise RateLimited(
                f"too many nginx configurations from this tenant (at most {per_minute} a "
                f"minute, agent_preparse_per_minute): retry in {limited.retry_after} s",
                retry_after=limited.retry_after,
            ) from None

    return take


def _deployed(session: Session, mc: ManagedCertificate) -> dict[str, Any]:
    """The certificate record a managed certificate deploys, and whether the host has it."""
    record = current_record(session, mc)
    if record is None:
        return {
            "certificateId": None,
            "certificateNames": [],
            "notAfter": None,
            "renewAt": None,
            "deployed": False,
        }
    fingerprint = leaf_sha256(record_secret(session, record).certificate_pem.encode("ascii"))
    return {
        "certificateId": record.id,
        "certificateNames": record.domains.split(","),
        "notAfter": _time(record.not_after),
        "renewAt": _time(record.renew_at),
        "deployed": mc.disk_sha256 is not None and mc.disk_sha256 == fingerprint,
    }


def _time(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


class _HostListing:
    def __init__(self, services: AgentServices) -> None:
        self.services = services

    async def hosts(self, request: Request) -> Response:
        tenant = await self.services.tenant_of(request)

        def read() -> list[dict[str, Any]]:
            with self.services.sessions() as session:
                return [
                    {
                        "uuid": host.uuid,
                        "agentVersion": host.agent_version,
                        "osName": host.os_name,
                        "nginxVersion": host.nginx_version,
                        "lastSeenAt": _time(host.last_seen_at),
                        "lastRunAt": _time(host.last_done_at),
                        "uninstalledAt": _time(host.uninstalled_at),
                        "certificates": [
                            {
                                "code": mc.code,
                                "certPath": mc.cert_path,
                                "keyPath": mc.key_path,
                                "names": hosts.candidate_names(mc),
                                "skipped": [
                                    {"name": n, "reason": r} for n, r in hosts.skipped_names(mc)
                                ],
                                **_deployed(session, mc),
                            }
                            for mc in hosts.active_certificates(session, host)
                        ],
                    }
                    for host in hosts.tenant_hosts(session, tenant.id)
                ]

        return envelope(request, {"hosts": await asyncio.to_thread(read)}, headers=NO_STORE)

    async def log(self, request: Request) -> Response:
        tenant = await self.services.tenant_of(request)
        uuid = str(request.path_params["uuid"]).strip().lower()
        raw_limit = request.query_params.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LOG_LIMIT:
            raise InvalidRequest(f"limit={raw_limit!r}: give a number from 1 to {MAX_LOG_LIMIT}")
        limit = int(raw_limit)

        def read() -> list[dict[str, Any]] | None:
            with self.services.sessions() as session:
                host = hosts.find_host(session, tenant.id, uuid)
                if host is None:
                    return None
                codes = {mc.id: mc.code for mc in hosts.active_certificates(session, host)}
                return [
                    {
                        "type": entry.kind,
                        "code": codes.get(entry.managed_certificate_id or -1),
                        "message": entry.message,
                        "createdAt": _time(entry.created_at),
                    }
                    for entry in hosts.log_entries(session, host, limit)
                ]

        entries = await asyncio.to_thread(read)
        if entries is None:
            raise NotFound(
                f"no host {uuid[:64]!r} runs the agent for this tenant: see /v1/agents/hosts"
            )
        return envelope(request, {"entries": entries}, headers=NO_STORE)
