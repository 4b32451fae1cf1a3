"""The audit log: who changed what, when and from where (issue 20).

One row per administrative action, written in the same transaction as the change it records
(so a change without its record, or the reverse, cannot happen). Callers:

    record(session, actor, action, target, tenant_id, source)

``actor`` says who (``cli:root``, ``user:alice``, ``tenant:acme``), ``action`` what, as
``<object>.<verb>`` (``tenant.create``, ``token.revoke``, ``user.create``, ``webhook.update``,
``certificate.revoke``), ``target`` which object, ``source`` from where (a client address,
``cli on host1``). Never put a secret in any of them: a token is named by its first 6
characters, as `certok tenant list` shows them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.db.models import AuditEvent

_LIMITS = {"actor": 200, "action": 64, "target": 400, "source": 200}


@dataclass(frozen=True)
class AuditEntry:
    at: dt.datetime
    actor: str
    action: str
    target: str
    tenant_id: int | None
    source: str


def record(
    session: Session,
    actor: str,
    action: str,
    target: str,
    tenant_id: int | None,
    source: str,
    *,
    clock: Clock = utcnow,
) -> None:
    """Add one audit row to ``session`` (committed with the caller's change)."""
    values = {"actor": actor, "action": action, "target": target, "source": source}
    clipped = {name: value[: _LIMITS[name]] for name, value in values.items()}
    session.add(AuditEvent(at=clock(), tenant_id=tenant_id, **clipped))


def list_events(
    session: Session,
    *,
    tenant_id: int | None = None,
    action_prefix: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """The newest ``limit`` events (optionally of one tenant or kind), oldest first."""
    query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    if action_prefix:
        query = query.where(AuditEvent.action.startswith(action_prefix, autoescape=True))
    rows = list(session.scalars(query))
    rows.reverse()
    return [
        AuditEntry(row.at, row.actor, row.action, row.target, row.tenant_id, row.source)
        for row in rows
    ]


def cli_actor() -> str:
    """Who runs an admin command: the login (and the sudo caller behind root)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"cli:{user}" + (f" (sudo by {sudo})" if sudo and sudo != user else "")


def cli_source() -> str:
    return f"cli on {socket.gethostname()}"
