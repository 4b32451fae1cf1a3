"""The dns-01 solver: TXT values stored for the DNS server (`certok.dnszone.zone_cache`).

A tenant's `_acme-challenge.<name>` is a CNAME to `<label>.<certok zone>`; the value goes
under that label, which the tenant's delegation of the name holds.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ARRAY, Connection, String, bindparam, column, select, text

from certok.challenge_solver import Material, Presenter, insert_material, remove_material
from certok.db.cursor_statements import CursorStatement
from certok.db.models import Delegation, Order
from certok.db.models.base import UTCDateTime
from certok.dnszone.zone_cache import DNS01_KIND
from certok.errors import CertokError

_ORDERS = Order.__table__
_DELEGATIONS = Delegation.__table__
# The lease check and the labels in one read: the order's row, joined with whichever of the
# tenant's delegations match (none, when a name lost its delegation).
_LEASE_AND_LABELS = (
    select(_ORDERS.c.lease_owner, _DELEGATIONS.c.base_name, _DELEGATIONS.c.label)
    .select_from(
        _ORDERS.outerjoin(
            _DELEGATIONS,
            (_DELEGATIONS.c.tenant_id == bindparam("b_tenant_id"))
            & _DELEGATIONS.c.base_name.in_(bindparam("b_identifiers", expanding=True)),
        )
    )
    .where(_ORDERS.c.id == bindparam("b_order_id"))
)

# On PostgreSQL the lease check, the labels and the INSERT in one statement: the values go in
# only while the worker holds the lease and every name has its delegation; the caller learns
# which (the owner, the delegated names) from the same statement.
_PRESENT_POSTGRES = CursorStatement(
    text(
        """
WITH lease AS (
    SELECT lease_owner FROM orders WHERE id = :order_id
), labels AS (
    SELECT base_name, label FROM delegations
    WHERE tenant_id = :tenant_id AND base_name = ANY(CAST(:identifiers AS text[]))
), inserted AS (
    INSERT INTO challenge_records (order_id, kind, name, value, authz_url, created_at)
    SELECT :order_id, :kind, labels.label, item.value, item.authz_url, :at
    FROM unnest(
        CAST(:identifiers AS text[]), CAST(:txt_values AS text[]), CAST(:authz_urls AS text[])
    ) WITH ORDINALITY AS item(identifier, value, authz_url, position)
    JOIN labels ON labels.base_name = item.identifier
    WHERE (SELECT lease_owner FROM lease) = :worker_id
      AND (SELECT count(*) FROM labels) = :names
    ORDER BY item.position
    RETURNING id
)
SELECT
    (SELECT lease_owner FROM lease) AS lease_owner,
    ARRAY(SELECT base_name FROM labels) AS delegated,
    (SELECT count(*) FROM inserted) AS inserted
"""
    )
    .bindparams(bindparam("at", type_=UTCDateTime()))
    .columns(column("lease_owner", String), column("delegated", ARRAY(String)), column("inserted"))
)


def txt_value(key_authorization: str) -> str:
    """base64url(SHA-256(key authorization)), unpadded (RFC 8555 §8.4)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Dns01Solver:
    # Every node's DNS server rereads the values within its refresh interval
    # (`Settings.effective_challenge_propagation_seconds`).
    settle_seconds: float
    acme_type: str = DNS01_KIND

    def value(self, key_authorization: str) -> str:
        return txt_value(key_authorization)

    def presents_in_one_statement(self) -> bool:
        return True

    def present(
        self, connection: Connection, presenter: Presenter, material: Sequence[Material]
    ) -> bool:
        if connection.dialect.name == "postgresql":
            return _present_postgres(connection, presenter, material)
        rows = connection.execute(
            _LEASE_AND_LABELS,
            {
                "b_order_id": presenter.order_id,
                "b_tenant_id": presenter.tenant_id,
                "b_identifiers": [item.identifier for item in material],
            },
        ).all()
        if not rows or rows[0].lease_owner != presenter.worker_id:
            return False
        labels = {row.base_name: row.label for row in rows if row.base_name is not None}
        named: list[tuple[str, Material]] = []
        for item in material:
            label = labels.get(item.identifier)
            if label is None:
                raise CertokError(
                    f"{item.identifier} has no delegation for this tenant: call /v1/cert/dv first"
                )
            named.append((label, item))
        insert_material(connection, presenter, DNS01_KIND, named)
        return True

    def cleanup(
        self, connection: Connection, order_id: int, authz_urls: Sequence[str] | None
    ) -> None:
        remove_material(connection, order_id, authz_urls)


def _present_postgres(
    connection: Connection, presenter: Presenter, material: Sequence[Material]
) -> bool:
    identifiers = [item.identifier for item in material]
    row = _PRESENT_POSTGRES.run(
        connection,
        {
            "order_id": presenter.order_id,
            "tenant_id": presenter.tenant_id,
            "worker_id": presenter.worker_id,
            "kind": DNS01_KIND,
            "at": presenter.at,
            "identifiers": identifiers,
            "txt_values": [item.value for item in material],
            "authz_urls": [item.authz_url for item in material],
            "names": len(set(identifiers)),
        },
    ).rows[0]
    if row.lease_owner != presenter.worker_id:
        return False
    if row.inserted != len(material):
        missing = next(name for name in identifiers if name not in set(row.delegated))
        raise CertokError(f"{missing} has no delegation for this tenant: call /v1/cert/dv first")
    return True
