"""What redeeming a code comes to, and the read every redemption starts with: shared by the
redemption's transaction (`certok.orders.quotas.redeem_job`) and its one statement on
PostgreSQL (`certok.orders.redeem_statement`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select

from certok.db.models import Tenant, VerificationCode
from certok.orders.service import CODE_COLUMNS

_CODES = VerificationCode.__table__
_TENANTS = Tenant.__table__

# The tenant's disabled flag and the code's row in one read (the code's columns are NULL for
# an unknown code; no row at all for an unknown tenant). redeem_code takes the code's row as
# read here instead of reading it again.
TENANT_AND_CODE = (
    select(_TENANTS.c.disabled.label("tenant_disabled"), *CODE_COLUMNS)
    .select_from(_TENANTS.outerjoin(_CODES, _CODES.c.code == bindparam("b_code")))
    .where(_TENANTS.c.id == bindparam("b_tenant_id"))
)


@dataclass(frozen=True)
class RedemptionTerms:
    """What a redemption is asked (plain data: it may go to the writer process)."""

    tenant_id: int
    code: str
    algorithm: str
    issuer: str
    deadline_seconds: int
    # The new order's other columns (`profile`, `replaces_certificate_id`).
    order_extras: dict[str, Any]
    max_pending: int
    join_seconds: float
    now: dt.datetime


@dataclass(frozen=True)
class Redemption:
    """What redeeming a code came to (plain data: it may come back from the writer process)."""

    order_id: int | None
    created: bool
    refused: str | None = None
    disabled: bool = False


def refusal(pending: int, max_pending: int) -> str:
    """Why a redemption at the tenant's pending cap starts nothing."""
    return (
        f"this tenant has {pending} orders pending, the most it may have at once "
        f"(tenant_max_pending_orders = {max_pending}): apply again once one of them has "
        "finished (poll their codes to see when)"
    )
