"""A new order's terms: the certificate it renews, the ACME profile it carries and the deadline
that follows from it; one entry point (`order_terms`) for every path that starts an order (GET
and POST `/v1/cert/apply`, httpsok.sh's `check`).

The certificate it renews is the one the caller names (a `replaces` the client gave, the
certificate an agent deploys), else the tenant's newest live certificate for exactly the
order's names, else none. The profile:

1. the profile the request names (only GET apply has a parameter for it);
2. else, for a renewal, the profile of the certificate it renews, when that certificate came
   from the same issuer (profile names are the issuer's own) and the issuer still offers it;
3. else the tenant's default (`certok tenant profile NAME PROFILE`);
4. else none: the CA's default.

A named profile or the tenant's default that the issuer does not offer is refused with a
message saying what to change, before any order exists. An inherited profile the issuer has
stopped offering is dropped instead (logged): nobody asked for it on this order, and a renewal
must not stall on a choice its client cannot change. Profiles whose pending authorizations
live one hour give the order a deadline of at most that hour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, true
from sqlalchemy.orm import Session, sessionmaker

from certok.certificates.profiles import (
    SHORT_AUTHORIZATION_PROFILES,
    SHORT_PROFILE_DEADLINE_SECONDS,
    ProfileCatalog,
)
from certok.certificates.service import RENEWED_CERTIFICATE, renewal_parameters
from certok.db.cursor_statements import CursorStatement
from certok.db.engine import opened
from certok.db.models import Certificate, Tenant
from certok.errors import InvalidRequest

log = logging.getLogger(__name__)

_TENANTS = Tenant.__table__  # default_profile is mapped after the class body
_CERTIFICATES = Certificate.__table__
_TENANT_DEFAULT = select(_TENANTS.c.default_profile).where(
    _TENANTS.c.id == bindparam("b_tenant_id")
)
_RENEWED = select(_CERTIFICATES.c.profile, _CERTIFICATES.c.issuer).where(
    _CERTIFICATES.c.id == bindparam("b_id"),
    _CERTIFICATES.c.tenant_id == bindparam("b_tenant_id"),
)
_RENEWED_CERTIFICATE = RENEWED_CERTIFICATE.subquery("renewed")
# The tenant's default profile and the certificate a new order for some names renews, in one
# read: one row, with NULL certificate columns when it renews none (no row at all for an
# unknown tenant).
# On the driver's cursor (certok.db.cursor_statements): it runs for every new order, and
# SQLAlchemy's work around an execution through a session cost more than the read.
_DEFAULT_AND_RENEWED = CursorStatement(
    select(
        _TENANTS.c.default_profile,
        _RENEWED_CERTIFICATE.c.id,
        _RENEWED_CERTIFICATE.c.profile,
        _RENEWED_CERTIFICATE.c.issuer,
    )
    .select_from(_TENANTS.outerjoin(_RENEWED_CERTIFICATE, true()))
    .where(_TENANTS.c.id == bindparam("b_tenant_id"))
)
NOT_CHECKED = "this server does not check profiles: leave profile out"


@dataclass(frozen=True)
class OrderTerms:
    """What a new order is made with: the certificate it renews (None: none), its profile
    (None: the CA's default) and its deadline."""

    renews: int | None
    profile: str | None
    deadline_seconds: int

    def order_extras(self) -> dict[str, Any]:
        """The order's columns these terms set, besides its deadline."""
        extras: dict[str, Any] = {"replaces_certificate_id": self.renews}
        if self.profile is not None:
            extras["profile"] = self.profile
        return extras


def order_terms(
    sessions: sessionmaker[Session],
    catalog: ProfileCatalog | None,
    *,
    tenant_id: int,
    issuer: str,
    requested: str | None,
    deadline_seconds: int,
    renews: int | None = None,
    domains: list[str] | None = None,
) -> OrderTerms:
    """The terms of a new order of `tenant_id` at `issuer` (see the module's rule). `renews`:
    the id of the tenant's certificate the order renews, when the caller knows it; else, given
    the order's `domains`, the certificate it renews is looked up in the same read as the
    stored profiles. Raises InvalidRequest for a profile the issuer does not offer,
    Unavailable when its directory cannot be read. Blocking (a database read, maybe the
    issuer's directory): call in a thread, outside any write transaction."""
    if renews is None and domains is not None:
        renews, stored = _renewal_and_stored_choices(sessions, tenant_id, issuer, domains)
    elif requested is not None:
        stored = (None, None)  # a named profile needs nothing stored
    else:
        stored = _stored_choices(sessions, tenant_id, issuer, renews)
    return choose_profile(
        catalog,
        tenant_id=tenant_id,
        issuer=issuer,
        requested=requested,
        stored=stored,
        renews=renews,
        deadline_seconds=deadline_seconds,
    )


def choose_profile(
    catalog: ProfileCatalog | None,
    *,
    tenant_id: int,
    issuer: str,
    requested: str | None,
    stored: tuple[str | None, str | None],
    renews: int | None,
    deadline_seconds: int,
) -> OrderTerms:
    """The module's rule, given what is stored: `stored` is (the renewed certificate's
    profile if it came from `issuer`, the tenant's default)."""
    if requested is not None:
        if catalog is None:
            raise InvalidRequest(NOT_CHECKED)
        return _with_deadline(renews, catalog.check(issuer, requested), deadline_seconds)
    inherited, default = stored
    if inherited is not None:
        if _offered(catalog, issuer, inherited):
            return _with_deadline(renews, inherited, deadline_seconds)
        if catalog is not None:
            log.warning(
                "tenant %s: issuer %s no longer offers profile %r of certificate %s; its "
                "renewal uses %s",
                tenant_id,
                issuer,
                inherited,
                renews,
                f"the tenant's default {default!r}" if default else "the CA's default",
            )
    if default is None:
        return OrderTerms(renews, None, deadline_seconds)
    return _with_deadline(renews, _checked_default(catalog, issuer, default), deadline_seconds)


def _renewal_and_stored_choices(
    sessions: sessionmaker[Session], tenant_id: int, issuer: str, domains: list[str]
) -> tuple[int | None, tuple[str | None, str | None]]:
    """The certificate a new order for `domains` renews (the tenant's newest live one for
    exactly these names, or None) and what `_stored_choices` reads, in one read."""
    with opened(sessions).read_connection() as connection:
        row = _DEFAULT_AND_RENEWED.run(
            connection, {"b_tenant_id": tenant_id, **renewal_parameters(domains)}
        ).first()
    if row is None or row.id is None:
        return None, (None, None if row is None else row.default_profile)
    inherited = row.profile if row.issuer == issuer else None
    return int(row.id), (inherited, row.default_profile)


def _stored_choices(
    sessions: sessionmaker[Session], tenant_id: int, issuer: str, renews: int | None
) -> tuple[str | None, str | None]:
    """(the renewed certificate's profile if it came from `issuer`, the tenant's default)."""
    with sessions() as session:
        default = session.scalar(_TENANT_DEFAULT, {"b_tenant_id": tenant_id})
        inherited = None
        if renews is not None:
            row = session.execute(_RENEWED, {"b_id": renews, "b_tenant_id": tenant_id}).first()
            if row is not None and row.issuer == issuer:
                inherited = row.profile
    return inherited, default


def _offered(catalog: ProfileCatalog | None, issuer: str, profile: str) -> bool:
    return catalog is not None and profile in catalog.offered(issuer)


def _checked_default(catalog: ProfileCatalog | None, issuer: str, profile: str) -> str:
    """The tenant's default profile, or InvalidRequest saying who can change it: the client
    never named it, so 'leave profile out' would not help."""
    if catalog is None:
        problem = "cannot be checked by this server"
    else:
        offered = catalog.offered(issuer)
        if profile in offered:
            return profile
        problem = f"does not offer (it offers {', '.join(sorted(offered)) or 'no profiles'})"
    raise InvalidRequest(
        f"this tenant's default profile is {profile!r}, which issuer {issuer} {problem}: the "
        "operator sets another with `certok tenant profile TENANT PROFILE` or clears it with "
        "`certok tenant profile TENANT`"
    )


def _with_deadline(renews: int | None, profile: str, deadline_seconds: int) -> OrderTerms:
    if profile in SHORT_AUTHORIZATION_PROFILES:
        # Pending authorizations live one hour: finish within it, or fail and start over.
        deadline_seconds = min(deadline_seconds, SHORT_PROFILE_DEADLINE_SECONDS)
    return OrderTerms(renews, profile, deadline_seconds)
