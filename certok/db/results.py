"""How many rows a DML statement changed, for callers that run it through an ORM session."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result


def rows_changed(result: Result[Any]) -> int:
    """`rowcount` of an INSERT/UPDATE/DELETE's result.

    `Session.execute` is typed to return a plain `Result`; for DML it is a `CursorResult`.
    """
    return cast(CursorResult[Any], result).rowcount
