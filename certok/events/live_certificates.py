"""A live certificate, as the event scans mean it: not revoked, not replaced, not expired."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func

from certok.db.models import Certificate

C = Certificate.__table__


def live(now: Any) -> Any:
    """The condition on `certificates` rows live at `now` (a value or a bound parameter)."""
    # revoked_at inside coalesce(): SQLite, without statistics, would take "revoked_at IS
    # NULL" (true of every live certificate) to the revoked_at index, and a scan for the
    # few certificates due an event would walk every live one.
    return and_(
        func.coalesce(C.c.revoked_at, C.c.revoked_at).is_(None),
        C.c.replaced_by_id.is_(None),
        C.c.not_after > now,
    )
