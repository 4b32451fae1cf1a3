"""certok-agent's endpoints: the installer and the agent itself (public: code, no secrets),
and the two authenticated calls a run makes (`check`, `report`). See docs/agent.md."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from certok.agents import agent_archive, agent_reports
from certok.agents.renewal import renewal_clock
from certok.agents.routes import TenantOf
from certok.api.envelope import NO_STORE, envelope
from certok.api.webhooks import read_json_object
from certok.clock import utcnow
from certok.db.engine import transaction


def certok_agent_routes(services: Any, tenant_of: TenantOf) -> list[Route]:
    """Routes for `services` (certok.api.routes.ApiServices) with its token check."""
    api = _AgentApi(services, tenant_of)
    return [
        Route("/v1/agent/install.sh", api.installer, methods=["GET"]),
        Route(f"/v1/agent/{agent_archive.ARCHIVE_NAME}", api.archive, methods=["GET"]),
        Route("/v1/agent/check", api.check, methods=["POST"]),
        Route("/v1/agent/report", api.report, methods=["POST"]),
    ]


class _AgentApi:
    def __init__(self, services: Any, tenant_of: TenantOf) -> None:
        self.services = services
        self.tenant_of = tenant_of

    async def installer(self, request: Request) -> Response:
        script = agent_archive.installer(self.services.settings.public_url)
        return PlainTextResponse(script, media_type="text/x-shellscript")

    async def archive(self, request: Request) -> Response:
        return Response(agent_archive.archive(), media_type="application/zip")

    async def check(self, request: Request) -> Response:
        tenant = await self.tenant_of(request)
        ids = agent_reports.certificate_ids(await read_json_object(request))

        # The renewal clock (shifted only in tests), as httpsok.sh's `check` uses it.
        now = renewal_clock(self.services.settings)()

        def read() -> list[dict[str, Any]]:
            with self.services.sessions() as session:
                return agent_reports.statuses(session, tenant.id, ids, now)

        return envelope(request, await asyncio.to_thread(read), headers=NO_STORE)

    async def report(self, request: Request) -> Response:
        tenant = await self.tenant_of(request)
        report = agent_reports.parse_report(await read_json_object(request))
        max_hosts = self.services.settings.agent_max_hosts_per_tenant

        def record() -> None:
            with transaction(self.services.sessions) as session:
                agent_reports.record_report(session, tenant.id, report, max_hosts, utcnow())

        await asyncio.to_thread(record)
        self.services.events.wake()
        return envelope(request, None, headers=NO_STORE)
