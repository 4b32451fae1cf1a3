"""A live certificate, as the event scans mean it: not revoked, not replaced, not expired."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_

from certok.db.models import Certificate

C = Certificate.__table__


def live(now: Any) -> Any:
    """The condition on `certificates` rows live at `now` (a value or a bound parameter)."""
    return and_(C.c.revoked_at.is_(None), C.c.replaced_by_id.is_(None), C.c.not_after > now)
