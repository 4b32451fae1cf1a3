"""Delegations: tenant + base name → the CNAME label inside certok's zone.

The label is a keyed hash (HMAC with a key derived from the server secret) of the tenant
and the name, so it is stable across restarts and nodes, unguessable to anyone without the
secret, and different for every (tenant, name): a CNAME that points at tenant A's label can
never validate an order of tenant B.
"""

from __future__ import annotations

import hmac

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.db.models import Delegation

LABEL_HEX_CHARS = 16


def compute_label(label_key: bytes, tenant_id: int, base_name: str) -> str:
    message = f"delegation\x00{tenant_id}\x00{base_name}".encode()
    return hmac.new(label_key, message, "sha256").hexdigest()[:LABEL_HEX_CHARS]


def ensure_delegations(
    session: Session,
    tenant_id: int,
    base_names: list[str],
    label_key: bytes,
    clock: Clock = utcnow,
) -> dict[str, str]:
    """Labels for each base name, allocating (and storing) the ones not seen before."""
    wanted = sorted(set(base_names))
    existing = {
        row.base_name: row.label
        for row in session.scalars(
            select(Delegation).where(
                Delegation.tenant_id == tenant_id, Delegation.base_name.in_(wanted)
            )
        )
    }
    for base in wanted:
        if base in existing:
            continue
        label = compute_label(label_key, tenant_id, base)
        try:
            with session.begin_nested():
                session.add(
                    Delegation(tenant_id=tenant_id, base_name=base, label=label, created_at=clock())
                )
        except IntegrityError:
            # A concurrent dv stored this name first: answer with the label it stored (the
            # same one unless the label key differs between nodes), as callers keep it.
            stored = session.scalar(
                select(Delegation.label).where(
                    Delegation.tenant_id == tenant_id, Delegation.base_name == base
                )
            )
            if stored is not None:
                label = stored
        existing[base] = label
    return existing
