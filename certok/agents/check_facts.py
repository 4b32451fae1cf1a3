"""What `/check` decides from: a managed certificate, its delegations, its latest order and the
record it deploys, read together in one session."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from certok.agents import hosts
from certok.agents.deployed_record import current_record, leaf_sha256, record_secret
from certok.db.models import Delegation, Order
from certok.names import base_name


@dataclass(frozen=True)
class OrderFacts:
    id: int
    state: str
    names: frozenset[str]
    reason: str | None
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class RecordFacts:
    """The certificate record a managed certificate deploys now."""

    id: int
    order_id: int
    names: frozenset[str]
    renew_at: dt.datetime
    not_after: dt.datetime
    leaf_sha256: str | None
    usable: bool  # neither revoked nor asked to be


@dataclass(frozen=True)
class CheckFacts:
    """A managed certificate as `check` sees it: its names, delegations, order and record."""

    id: int
    cert_path: str
    candidates: list[str]
    delegated: set[str]
    order: OrderFacts | None
    certificate: RecordFacts | None
    disk_sha256: str | None


def read_check_facts(
    sessions: sessionmaker[Session], tenant_id: int, uuid: str, code: str
) -> CheckFacts | None:
    """What `check` decides from, read in one session; None for an unknown code."""
    with sessions() as session:
        mc = hosts.managed_by_code(session, tenant_id, uuid, code)
        if mc is None:
            return None
        candidates = hosts.candidate_names(mc)
        bases = sorted({base_name(n) for n in candidates})
        delegated = set(
            session.scalars(
                select(Delegation.base_name).where(
                    Delegation.tenant_id == tenant_id, Delegation.base_name.in_(bases)
                )
            )
        )
        order = None
        if mc.order_id is not None:
            row = session.get(Order, mc.order_id)
            if row is not None and row.tenant_id == tenant_id:
                order = OrderFacts(
                    row.id,
                    row.state,
                    frozenset(row.domains.split(",")),
                    row.reason,
                    row.finished_at,
                )
        record = current_record(session, mc)
        certificate = None
        if record is not None:
            certificate = RecordFacts(
                id=record.id,
                order_id=record.order_id,
                names=frozenset(record.domains.split(",")),
                renew_at=record.renew_at,
                not_after=record.not_after,
                leaf_sha256=leaf_sha256(
                    record_secret(session, record).certificate_pem.encode("ascii")
                ),
                usable=record.revoked_at is None and record.revoke_requested_at is None,
            )
        return CheckFacts(
            id=mc.id,
            cert_path=mc.cert_path,
            candidates=candidates,
            delegated=delegated,
            order=order,
            certificate=certificate,
            disk_sha256=mc.disk_sha256,
        )
