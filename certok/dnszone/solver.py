"""The dns-01 solver: TXT values stored for the DNS server (`certok.dnszone.zone_cache`).

A tenant's `_acme-challenge.<name>` is a CNAME to `<label>.<certok zone>`; the value goes
under that label, which the tenant's delegation of the name holds.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select

from certok.challenge_solver import Material, Presenter, insert_material, remove_material
from certok.db.models import Delegation, Order
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

    def present(
        self, connection: Connection, presenter: Presenter, material: Sequence[Material]
    ) -> bool:
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
