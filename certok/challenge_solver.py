"""The seam between the order driver and a challenge type (lego's Present/CleanUp).

A solver presents an authorization's challenge material where the CA will look for it,
removes it, and says how long presented material takes to be visible on every node. The
driver keeps the RFC 8555 state machine and picks the solver by the order's challenge type
from a mapping the wiring code passes in (`certok.assembly.standard_solvers`): dns-01 is
`certok.dnszone.solver`, http-01 `certok.http01.solver`.

Presenting and removing run inside the driver's write transactions (`certok.db.writes`),
which a multi-process node sends, pickled, to its writer process: a solver is a small frozen
dataclass of plain values, and its methods do plain database work on the connection given.

Every solver keeps its material in `challenge_records`, one row per authorization: the
driver reads those rows back to know what it presented and answered. This module holds the
statements they share.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, bindparam, delete, insert, select

from certok.db.models import ChallengeRecord, Order


@dataclass(frozen=True)
class Material:
    """What to present for one authorization: `value` derives from the key authorization."""

    identifier: str
    authz_url: str
    token: str
    value: str


@dataclass(frozen=True)
class Presenter:
    """The order presenting material, and the worker that must still hold its lease."""

    order_id: int
    tenant_id: int
    worker_id: str
    at: dt.datetime


class ChallengeSolver(Protocol):
    """One ACME challenge type."""

    @property
    def acme_type(self) -> str:
        """The challenge's type in the CA's authorizations, e.g. "dns-01"."""
        ...

    @property
    def settle_seconds(self) -> float:
        """How long after presenting every node serves the material (is it visible yet)."""
        ...

    def value(self, key_authorization: str) -> str:
        """The material to present for a key authorization (RFC 8555 §8.1)."""
        ...

    def present(
        self, connection: Connection, presenter: Presenter, material: Sequence[Material]
    ) -> bool:
        """Store the material; False (nothing written) when the worker lost the lease."""
        ...

    def cleanup(
        self, connection: Connection, order_id: int, authz_urls: Sequence[str] | None
    ) -> None:
        """Remove the material of those authorizations (None: all of the order's)."""
        ...


@runtime_checkable
class PresentsInOneStatement(Protocol):
    """Optional: `present` sends one statement on PostgreSQL, so it needs no transaction
    around it there (`certok.db.writes.write_statement`)."""

    def presents_in_one_statement(self) -> bool: ...


@runtime_checkable
class ExplainsMissingChallenge(Protocol):
    """Optional: what to tell the tenant when the CA did not offer this challenge type."""

    def missing_challenge_hint(self) -> str: ...


_ORDERS = Order.__table__
_RECORDS = ChallengeRecord.__table__
_LEASE_OWNER = select(_ORDERS.c.lease_owner).where(_ORDERS.c.id == bindparam("b_order_id"))
_OF_AUTHORIZATIONS = (
    _RECORDS.c.order_id == bindparam("b_order_id"),
    _RECORDS.c.authz_url.in_(bindparam("b_authz_urls", expanding=True)),
)
_DROP_ALL = delete(_RECORDS).where(_RECORDS.c.order_id == bindparam("b_order_id"))
_DROP_SOME = delete(_RECORDS).where(*_OF_AUTHORIZATIONS)
_INSERT = insert(_RECORDS)


def holds_lease(connection: Connection, presenter: Presenter) -> bool:
    owner = connection.scalar(_LEASE_OWNER, {"b_order_id": presenter.order_id})
    return bool(owner == presenter.worker_id)


def insert_material(
    connection: Connection,
    presenter: Presenter,
    kind: str,
    named: Sequence[tuple[str, Material]],
) -> None:
    """Insert one row per (record name, material) under the solver's `kind`."""
    rows: list[dict[str, Any]] = [
        {
            "order_id": presenter.order_id,
            "kind": kind,
            "name": name,
            "value": item.value,
            "authz_url": item.authz_url,
            "created_at": presenter.at,
            "answered_at": None,
        }
        for name, item in named
    ]
    connection.execute(_INSERT, rows)


def remove_material(
    connection: Connection, order_id: int, authz_urls: Sequence[str] | None
) -> None:
    if authz_urls is None:
        connection.execute(_DROP_ALL, {"b_order_id": order_id})
    else:
        connection.execute(_DROP_SOME, {"b_order_id": order_id, "b_authz_urls": list(authz_urls)})
