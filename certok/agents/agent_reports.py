"""certok-agent's two calls about its work: which of my certificates are due, and how my run went.

A run's report becomes the host's row (last seen, last run), one log entry per certificate
that changed or failed, and the `deploy.succeeded` / `deploy.failed` webhooks, all in one
transaction. Only what the agent says about its own results is kept: paths, names, messages.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from certok.agents import hosts
from certok.certificates.service import status_of
from certok.db.models import Certificate
from certok.errors import InvalidRequest
from certok.events.outbox import emit
from certok.events.types import DEPLOY_FAILED, DEPLOY_SUCCEEDED

# A run reports one result per certificate it manages; more than this is not one host's run.
MAX_RESULTS = 500
MAX_IDS = 1000
RESULTS = ("unchanged", "deployed", "failed", "not_delegated")
_LOGGED = {"deployed": DEPLOY_SUCCEEDED, "failed": DEPLOY_FAILED, "not_delegated": DEPLOY_FAILED}
_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class RunResult:
    cert_path: str
    names: list[str]
    result: str
    message: str
    certificate_id: int | None


@dataclass(frozen=True)
class RunReport:
    uuid: str
    agent_version: str | None
    os_name: str | None
    results: list[RunResult]
    problems: list[str]


def certificate_ids(body: Any) -> list[int]:
    """`{"ids": [1, 2]}` checked: whole positive numbers, at most MAX_IDS."""
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or len(ids) > MAX_IDS:
        raise InvalidRequest(f'send {{"ids": [certificate ids]}} with at most {MAX_IDS} ids')
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**62 for i in ids):
        raise InvalidRequest("ids must be certificate ids (whole positive numbers)")
    return ids


def statuses(
    session: Session, tenant_id: int, ids: list[int], now: dt.datetime
) -> list[dict[str, Any]]:
    """Status, renewAt and notAfter of the tenant's certificates among `ids`; another tenant's
    ids are left out, exactly like unknown ones."""
    if not ids:
        return []
    table = Certificate.__table__
    rows = session.execute(
        select(
            table.c.id,
            table.c.not_after,
            table.c.renew_at,
            table.c.revoked_at,
            table.c.replaced_by_id,
        ).where(table.c.tenant_id == tenant_id, table.c.id.in_(ids))
    ).all()
    return [
        {
            "id": row.id,
            "status": status_of(row, now),
            "notAfter": row.not_after.strftime(_TIME),
            "renewAt": row.renew_at.strftime(_TIME),
        }
        for row in rows
    ]


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string")
    return value[:limit]


def parse_report(body: Any) -> RunReport:
    """The agent's JSON report, checked; InvalidRequest naming the field otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequest("the report must be a JSON object (see docs/agent.md)")
    results = body.get("results", [])
    if not isinstance(results, list) or len(results) > MAX_RESULTS:
        raise InvalidRequest(f"results must be a list of at most {MAX_RESULTS} entries")
    parsed = []
    for item in results:
        if not isinstance(item, dict) or item.get("result") not in RESULTS:
            raise InvalidRequest(f"each result needs result = one of {', '.join(RESULTS)}")
        names = item.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidRequest("a result's names must be a list of strings")
        certificate_id = item.get("certificateId")
        if certificate_id is not None and (
            not isinstance(certificate_id, int) or isinstance(certificate_id, bool)
        ):
            raise InvalidRequest("certificateId must be a certificate id or null")
        parsed.append(
            RunResult(
                cert_path=_text(item.get("certPath", ""), "certPath", 1024),
                names=[n[:253] for n in names[:100]],
                result=item["result"],
                message=_text(item.get("message", ""), "message", 2000),
                certificate_id=certificate_id,
            )
        )
    problems = body.get("problems", [])
    if not isinstance(problems, list):
        raise InvalidRequest("problems must be a list of strings")
    return RunReport(
        uuid=hosts.host_uuid(body.get("uuid") if isinstance(body.get("uuid"), str) else None),
        agent_version=_text(body.get("agentVersion", ""), "agentVersion", 32) or None,
        os_name=_text(body.get("os", ""), "os", 128) or None,
        results=parsed,
        problems=[_text(p, "problems", 2000) for p in problems[:20]],
    )


def record_report(
    session: Session, tenant_id: int, report: RunReport, max_hosts: int, now: dt.datetime
) -> None:
    facts = hosts.HostFacts(agent_version=report.agent_version, os_name=report.os_name)
    host = hosts.ensure_host(session, tenant_id, report.uuid, facts, max_hosts, clock=lambda: now)
    counts = {result: 0 for result in RESULTS}
    for item in report.results:
        counts[item.result] += 1
        event = _LOGGED.get(item.result)
        if event is None:
            continue
        hosts.add_log(
            session,
            host,
            event,
            f"{', '.join(item.names)} ({item.cert_path}): {item.message}",
            clock=lambda: now,
        )
        emit(
            session.connection(),
            tenant_id=tenant_id,
            event_type=event,
            data={
                "host": report.uuid,
                "certPath": item.cert_path,
                "domains": item.names,
                "certificateId": item.certificate_id,
                "result": item.result,
                "message": item.message,
            },
            now=now,
        )
    for problem in report.problems:
        hosts.add_log(session, host, "run.problem", problem, clock=lambda: now)
    summary = ", ".join(f"{count} {result}" for result, count in counts.items() if count)
    hosts.add_log(
        session, host, "run", f"certok-agent run: {summary or 'nothing managed'}", clock=lambda: now
    )
    hosts.finished_run(session, host, clock=lambda: now)
