"""Verification codes: what /v1/cert/dv hands out and /v1/cert/apply redeems once."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.db.models import VerificationCode
from certok.errors import NotFound, echoed

CODE_HEX_CHARS = 16
_INSERT_CODE = insert(VerificationCode.__table__)  # built once: dv's hot path


def issue_code(
    session: Session | Connection,
    tenant_id: int,
    challenge_type: str,
    domains: list[str],
    ttl_seconds: int,
    clock: Clock = utcnow,
) -> str:
    """Store a new code for these names; return it. `session` may be a Session or a Connection
    (a plain INSERT: the API's dv runs it as a write job, `certok.db.writes`)."""
    now = clock()
    code = secrets.token_hex(CODE_HEX_CHARS // 2)
    session.execute(
        _INSERT_CODE,
        {
            "code": code,
            "tenant_id": tenant_id,
            "challenge_type": challenge_type,
            "domains": ",".join(domains),
            "created_at": now,
            "expires_at": now + dt.timedelta(seconds=ttl_seconds),
        },
    )
    return code


def code_not_found(code: str) -> NotFound:
    return NotFound(
        f"verification code {echoed(code)!r} not found: call /v1/cert/dv with your token to get one"
    )
