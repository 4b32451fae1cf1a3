"""Hosts, their managed certificates and their log, in the database.

A host is (tenant, `httpsok-uuid`); a managed certificate is (host, certificate path) → the
candidate names of the server blocks using it, with a random `code` the agent passes back.
Everything here is a derived fact: paths, names, fingerprints, the agent's own reports.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from certok.agents.nginx_config import ParsedConfig
from certok.agents.server_names import classify
from certok.clock import Clock, utcnow
from certok.db.models import AgentHost, AgentLogEntry, ManagedCertificate
from certok.errors import Conflict, InvalidRequest

# DMI product UUIDs (8-4-4-4-12 hex) and httpsok.sh's random md5 (32 hex) both fit.
_UUID = re.compile(r"^[0-9a-z][0-9a-z-]{7,63}$")
CODE_HEX_CHARS = 16
# The agent's reports: the types httpsok.sh v1.18.2 sends to /log/{type}.
AGENT_LOG_TYPES = frozenset(
    {
        "cert-updated-success",
        "cert-updated-failed",
        "nginx-test-failed",
        "nginx-reload-success",
        "nginx-reload-failed",
    }
)
# certok's own notes about a host's runs.
PREPARSE = "preparse"
ISSUED = "certificate-issued"
CHECK_DNS = "check-dns"
MAX_LOG_MESSAGE_CHARS = 8192
# Entries kept per host; older ones go as new ones arrive.
LOG_ENTRIES_KEPT = 1000


@dataclass(frozen=True)
class ManagedLine:
    code: str
    cert_path: str
    key_path: str

    def render(self) -> str:
        return f"{self.code},{self.cert_path},{self.key_path}"


@dataclass(frozen=True)
class HostFacts:
    """What the agent says about its host in its headers (each cut to its column)."""

    agent_version: str | None = None
    os_name: str | None = None
    nginx_version: str | None = None


def host_uuid(raw: str | None) -> str:
    """The `httpsok-uuid` header, checked; InvalidRequest saying what to do otherwise."""
    value = (raw or "").strip().lower()
    if not _UUID.match(value):
        raise InvalidRequest(
            "missing or malformed httpsok-uuid header: httpsok.sh sends the host's DMI product "
            "UUID or the random id in ~/.httpsok/uuid (8-64 characters of 0-9, a-z and '-')"
        )
    return value


def find_host(session: Session, tenant_id: int, uuid: str) -> AgentHost | None:
    return session.scalar(
        select(AgentHost).where(AgentHost.tenant_id == tenant_id, AgentHost.uuid == uuid)
    )


def ensure_host(
    session: Session,
    tenant_id: int,
    uuid: str,
    facts: HostFacts,
    max_hosts: int,
    clock: Clock = utcnow,
) -> AgentHost:
    host = find_host(session, tenant_id, uuid)
    now = clock()
    if host is None:
        count = session.scalar(
            select(func.count())
            .select_from(AgentHost)
            # An uninstalled host (httpsok.sh -u) no longer takes a place.
            .where(AgentHost.tenant_id == tenant_id, AgentHost.uninstalled_at.is_(None))
        )
        if (count or 0) >= max_hosts:
            raise Conflict(
                f"this tenant already runs the agent on {max_hosts} hosts "
                "(agent_max_hosts_per_tenant): uninstall it from a host you no longer use "
                "(httpsok.sh -u) or ask the operator to raise the limit"
            )
        host = AgentHost(tenant_id=tenant_id, uuid=uuid, created_at=now, last_seen_at=now)
        session.add(host)
    host.agent_version = _cut(facts.agent_version, 32)
    host.os_name = _cut(facts.os_name, 128)
    host.nginx_version = _cut(facts.nginx_version, 64)
    host.last_seen_at = now
    host.uninstalled_at = None
    session.flush()
    return host


def record_preparse(
    session: Session,
    host: AgentHost,
    parsed: ParsedConfig,
    *,
    max_certificates: int,
    max_names: int,
    clock: Clock = utcnow,
) -> list[ManagedLine]:
    """Store what the configuration says (paths and names only); return the agent's lines."""
    now = clock()
    existing = {
        mc.cert_path: mc
        for mc in session.scalars(
            select(ManagedCertificate).where(ManagedCertificate.host_id == host.id)
        )
    }
    notes = list(parsed.notes)
    lines: list[ManagedLine] = []
    summary: list[str] = []
    seen: set[str] = set()
    for index, pair in enumerate(parsed.pairs):
        if index >= max_certificates:
            notes.append(
                f"certificate {pair.cert_path} skipped: over {max_certificates} certificates "
                "on one host (agent_max_certificates_per_host)"
            )
            continue
        classified = classify(pair.names, max_names)
        names = ",".join(classified.names)
        skipped = json.dumps(classified.skipped, ensure_ascii=False)
        mc = existing.get(pair.cert_path)
        if mc is None:
            mc = ManagedCertificate(
                tenant_id=host.tenant_id,
                host_id=host.id,
                code=secrets.token_hex(CODE_HEX_CHARS // 2),
                cert_path=pair.cert_path,
                created_at=now,
            )
            session.add(mc)
        mc.key_path = pair.key_path
        mc.names = names
        mc.skipped = skipped
        mc.active = True
        # What is on disk is told by this run's upload; until then it is unknown.
        mc.disk_sha256 = None
        mc.updated_at = now
        seen.add(pair.cert_path)
        lines.append(ManagedLine(mc.code, pair.cert_path, pair.key_path))
        summary.append(_describe(pair.cert_path, classified.names, classified.skipped))
    for path, mc in existing.items():
        if path not in seen and mc.active:
            mc.active = False
            mc.updated_at = now
    session.flush()
    message = "\n".join(summary + notes) or "no TLS certificate in the nginx configuration"
    _log_if_changed(session, host, PREPARSE, message, now)
    return lines


def managed_by_code(
    session: Session, tenant_id: int, uuid: str, code: str
) -> ManagedCertificate | None:
    """The host's active managed certificate with this code; None for an unknown code, another
    host's or another tenant's (all answered alike)."""
    return session.scalar(
        select(ManagedCertificate)
        .join(AgentHost, AgentHost.id == ManagedCertificate.host_id)
        .where(
            ManagedCertificate.code == code.strip().lower(),
            ManagedCertificate.tenant_id == tenant_id,
            ManagedCertificate.active.is_(True),
            AgentHost.tenant_id == tenant_id,
            AgentHost.uuid == uuid,
        )
    )


def active_certificates(session: Session, host: AgentHost) -> list[ManagedCertificate]:
    return list(
        session.scalars(
            select(ManagedCertificate)
            .where(ManagedCertificate.host_id == host.id, ManagedCertificate.active.is_(True))
            .order_by(ManagedCertificate.id)
        )
    )


def add_log(
    session: Session,
    host: AgentHost,
    kind: str,
    message: str,
    *,
    managed_certificate_id: int | None = None,
    clock: Clock = utcnow,
) -> None:
    if len(message) > MAX_LOG_MESSAGE_CHARS:
        message = message[:MAX_LOG_MESSAGE_CHARS] + "\n[cut: over 8192 characters]"
    session.add(
        AgentLogEntry(
            tenant_id=host.tenant_id,
            host_id=host.id,
            managed_certificate_id=managed_certificate_id,
            kind=kind,
            message=message,
            created_at=clock(),
        )
    )
    session.flush()
    _prune_log(session, host.id)


def log_entries(session: Session, host: AgentHost, limit: int) -> list[AgentLogEntry]:
    return list(
        session.scalars(
            select(AgentLogEntry)
            .where(AgentLogEntry.host_id == host.id)
            .order_by(AgentLogEntry.id.desc())
            .limit(limit)
        )
    )


def tenant_hosts(session: Session, tenant_id: int) -> list[AgentHost]:
    return list(
        session.scalars(
            select(AgentHost).where(AgentHost.tenant_id == tenant_id).order_by(AgentHost.id)
        )
    )


def skipped_names(mc: ManagedCertificate) -> list[tuple[str, str]]:
    return [(str(name), str(reason)) for name, reason in json.loads(mc.skipped or "[]")]


def candidate_names(mc: ManagedCertificate) -> list[str]:
    return [n for n in mc.names.split(",") if n]


def finished_run(session: Session, host: AgentHost, clock: Clock = utcnow) -> None:
    host.last_done_at = clock()
    host.last_seen_at = host.last_done_at


def uninstall(session: Session, host: AgentHost, clock: Clock = utcnow) -> None:
    """httpsok.sh -u: the host stops asking; its certificates are no longer managed."""
    now = clock()
    host.uninstalled_at = now
    host.last_seen_at = now
    for mc in active_certificates(session, host):
        mc.active = False
        mc.updated_at = now
    add_log(session, host, "uninstalled", "the agent was uninstalled (httpsok.sh -u)", clock=clock)


def log_if_changed(
    session: Session, host: AgentHost, kind: str, message: str, clock: Clock = utcnow
) -> None:
    """A daily run that finds what the last one found adds nothing to the log."""
    _log_if_changed(session, host, kind, message, clock())


def _log_if_changed(
    session: Session, host: AgentHost, kind: str, message: str, now: dt.datetime
) -> None:
    """A daily run that finds what the last one found adds nothing to the log."""
    last = session.scalar(
        select(AgentLogEntry.message)
        .where(AgentLogEntry.host_id == host.id, AgentLogEntry.kind == kind)
        .order_by(AgentLogEntry.id.desc())
        .limit(1)
    )
    if last != message:
        add_log(session, host, kind, message, clock=lambda: now)


def _prune_log(session: Session, host_id: int) -> None:
    cutoff = session.scalar(
        select(AgentLogEntry.id)
        .where(AgentLogEntry.host_id == host_id)
        .order_by(AgentLogEntry.id.desc())
        .offset(LOG_ENTRIES_KEPT)
        .limit(1)
    )
    if cutoff is not None:
        session.execute(
            delete(AgentLogEntry).where(
                AgentLogEntry.host_id == host_id, AgentLogEntry.id <= cutoff
            )
        )


def _describe(cert_path: str, names: list[str], skipped: list[tuple[str, str]]) -> str:
    text = f"{cert_path}: {', '.join(names) if names else 'no name certok can issue for'}"
    for name, reason in skipped:
        text += f"\n  skipped {name}: {reason}"
    return text


def _cut(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:limit] or None
