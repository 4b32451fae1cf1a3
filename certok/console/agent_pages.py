"""Hosts and agents: which of the tenant's hosts run an agent (httpsok.sh's /v1/nginx
protocol, certok/agents/), when each was last seen, the certificates it keeps current, and
its log. Operators see every tenant's hosts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from certok.console.web import Page, Refused, render
from certok.db.models import AgentHost, AgentLogEntry, ManagedCertificate, Tenant

SILENT_AFTER = dt.timedelta(days=2)
HOST_ROWS = 200
LOG_ROWS = 50


@dataclass(frozen=True)
class HostRow:
    id: int
    tenant: str | None
    uuid: str
    agent_version: str | None
    os_name: str | None
    nginx_version: str | None
    last_seen_at: dt.datetime
    last_done_at: dt.datetime | None
    uninstalled_at: dt.datetime | None
    managed: int
    silent: bool


def hosts(session: Session, tenant_id: int | None, now: dt.datetime) -> list[HostRow]:
    statement = select(AgentHost, Tenant.name).join(Tenant, Tenant.id == AgentHost.tenant_id)
    if tenant_id is not None:
        statement = statement.where(AgentHost.tenant_id == tenant_id)
    rows = session.execute(statement.order_by(AgentHost.last_seen_at.desc()).limit(HOST_ROWS)).all()
    ids = [host.id for host, _ in rows]
    counts: dict[int, int] = {}
    if ids:
        found = session.execute(
            select(ManagedCertificate.host_id, func.count())
            .where(ManagedCertificate.host_id.in_(ids), ManagedCertificate.active.is_(True))
            .group_by(ManagedCertificate.host_id)
        ).all()
        counts = {key: count for key, count in found}
    return [
        HostRow(
            id=host.id,
            tenant=name if tenant_id is None else None,
            uuid=host.uuid,
            agent_version=host.agent_version,
            os_name=host.os_name,
            nginx_version=host.nginx_version,
            last_seen_at=host.last_seen_at,
            last_done_at=host.last_done_at,
            uninstalled_at=host.uninstalled_at,
            managed=counts.get(host.id, 0),
            silent=host.uninstalled_at is None and now - host.last_seen_at > SILENT_AFTER,
        )
        for host, name in rows
    ]


def silent_hosts(session: Session, tenant_id: int, now: dt.datetime) -> list[HostRow]:
    """The dashboard's list: hosts not heard from for two days (and not uninstalled)."""
    return [h for h in hosts(session, tenant_id, now) if h.silent]


async def hosts_page(page: Page) -> Response:
    operator = page.user is not None and page.user.operator
    tenant_id = None if operator else page.tenant_id
    now = page.services.clock()
    rows = await page.db(lambda s: hosts(s, tenant_id, now))
    return render(page, "hosts.html", rows=rows, operator=operator)


async def host_page(page: Page) -> Response:
    operator = page.user is not None and page.user.operator
    tenant_id = None if operator else page.tenant_id
    raw = page.request.path_params["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise Refused(404, "error.not_found")
    host_id, now = int(raw), page.services.clock()

    def read(session: Session):  # type: ignore[no-untyped-def]
        found = [h for h in hosts_by_id(session, tenant_id, host_id, now)]
        if not found:
            return None
        managed = session.scalars(
            select(ManagedCertificate)
            .where(ManagedCertificate.host_id == host_id)
            .order_by(ManagedCertificate.active.desc(), ManagedCertificate.cert_path)
        ).all()
        log = session.scalars(
            select(AgentLogEntry)
            .where(AgentLogEntry.host_id == host_id)
            .order_by(AgentLogEntry.id.desc())
            .limit(LOG_ROWS)
        ).all()
        return found[0], list(managed), list(log)

    result = await page.db(read)
    if result is None:
        raise Refused(404, "error.not_found")
    host, managed, log = result
    return render(page, "host.html", host=host, managed=managed, log=log, operator=operator)


def hosts_by_id(
    session: Session, tenant_id: int | None, host_id: int, now: dt.datetime
) -> list[HostRow]:
    statement = select(AgentHost.tenant_id).where(AgentHost.id == host_id)
    owner = session.scalar(statement)
    if owner is None or (tenant_id is not None and owner != tenant_id):
        return []
    return [h for h in hosts(session, owner, now) if h.id == host_id]


ROUTES = [
    ("/hosts", hosts_page, "user", ["GET"]),
    ("/hosts/{id}", host_page, "user", ["GET"]),
]
