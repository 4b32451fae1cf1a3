"""The http-01 solver: key authorizations stored for the responder (`certok.http01.store`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from certok.challenge_solver import (
    Material,
    Presenter,
    holds_lease,
    insert_material,
    remove_material,
)
from certok.http01.store import HTTP01_KIND, record_name


@dataclass(frozen=True)
class Http01Solver:
    """Presents `token.thumbprint` at `http://<name>/.well-known/acme-challenge/<token>`,
    which the customer's nginx redirects to certok's responder."""

    acme_type: str = HTTP01_KIND
    # The responder reads the database on every request: every node serves it at once.
    settle_seconds: float = 0.0

    def value(self, key_authorization: str) -> str:
        return key_authorization

    def present(
        self, connection: Connection, presenter: Presenter, material: Sequence[Material]
    ) -> bool:
        if not holds_lease(connection, presenter):
            return False
        named = [(record_name(item.identifier, item.token), item) for item in material]
        insert_material(connection, presenter, HTTP01_KIND, named)
        return True

    def cleanup(
        self, connection: Connection, order_id: int, authz_urls: Sequence[str] | None
    ) -> None:
        remove_material(connection, order_id, authz_urls)

    def missing_challenge_hint(self) -> str:
        return "wildcard names need type=dns"
