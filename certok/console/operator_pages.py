"""Operator pages: tenants (create, disable/enable, their users and invites), every tenant's
orders and certificates, and the health of each configured CA."""

from __future__ import annotations

from starlette.responses import Response

from certok import audit
from certok.console import cert_queries, queries
from certok.console.tenant_pages import after_param, before_param, invite_link, path_id, state_param
from certok.console.web import Page, Refused, redirect, render
from certok.db.models import Tenant
from certok.errors import Conflict, InvalidRequest, NotFound
from certok.order_states import ORDER_STATES
from certok.tenants import console_sessions, users
from certok.tenants.service import create_tenant

AUDIT_ROWS = 200


async def tenants(
    page: Page, error: str | None = None, status: int = 200, invite: str | None = None
) -> Response:
    rows = await page.db(queries.tenants)
    return render(page, "operator_tenants.html", status, rows=rows, error=error, invite=invite)


async def tenants_get(page: Page) -> Response:
    return await tenants(page)


async def add_tenant(page: Page) -> Response:
    name = page.form.get("name", "")
    clock = page.services.clock
    try:
        await page.write(
            lambda s: create_tenant(s, name, clock),
            audit=("tenant.create", f"tenant {name.strip().lower()[:64]}", None),
        )
    except InvalidRequest:
        return await tenants(page, page.t("error.tenant_name"), 400)
    except Conflict:
        return await tenants(page, page.t("error.tenant_taken"), 409)
    return redirect(page, "/console/operator/tenants?done=tenant_created")


async def _set_tenant(page: Page, disabled: bool) -> Response:
    tenant_id = path_id(page)

    def change(session) -> bool:  # type: ignore[no-untyped-def]
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            return False
        tenant.disabled = disabled
        if disabled:
            console_sessions.end_tenant_sessions(session, tenant_id)
        return True

    verb = "disable" if disabled else "enable"
    if not await page.write(
        change, audit=(f"tenant.{verb}", f"tenant #{tenant_id}", tenant_id), done=bool
    ):
        raise Refused(404, "error.not_found")
    done = "tenant_disabled" if disabled else "tenant_enabled"
    return redirect(page, f"/console/operator/tenants/{tenant_id}?done={done}")


async def disable_tenant(page: Page) -> Response:
    return await _set_tenant(page, True)


async def enable_tenant(page: Page) -> Response:
    return await _set_tenant(page, False)


async def tenant(
    page: Page, invite: str | None = None, error: str | None = None, status: int = 200
) -> Response:
    tenant_id = path_id(page)

    def read(session):  # type: ignore[no-untyped-def]
        row = session.get(Tenant, tenant_id)
        if row is None:
            return None
        return row.name, row.disabled, users.list_users(session, tenant_id)

    found = await page.db(read)
    if found is None:
        raise Refused(404, "error.not_found")
    name, disabled, rows = found
    return render(
        page,
        "operator_tenant.html",
        status,
        tenant_id=tenant_id,
        name=name,
        disabled=disabled,
        rows=rows,
        invite=invite,
        error=error,
    )


async def tenant_get(page: Page) -> Response:
    return await tenant(page)


async def invite_tenant_user(page: Page) -> Response:
    tenant_id = path_id(page)
    hours, clock = page.services.settings.console_invite_hours, page.services.clock
    email = page.form.get("email", "")

    def create(session):  # type: ignore[no-untyped-def]
        if session.get(Tenant, tenant_id) is None:
            raise NotFound("no such tenant")
        return users.create_user(
            session, email, tenant_id=tenant_id, invite_hours=hours, clock=clock
        )

    try:
        _, secret = await page.write(
            create, audit=("user.invite", email.strip().lower()[:254], tenant_id)
        )
    except NotFound:
        raise Refused(404, "error.not_found") from None
    except InvalidRequest:
        return await tenant(page, error=page.t("error.email"), status=400)
    except Conflict:
        return await tenant(page, error=page.t("error.email_taken"), status=409)
    return await tenant(page, invite=invite_link(page, secret), status=201)


async def _set_tenant_user(page: Page, disabled: bool) -> Response:
    tenant_id, user_id = path_id(page), path_id(page, "user")

    def change(session) -> None:  # type: ignore[no-untyped-def]
        users.find_user(session, user_id, tenant_id)
        users.set_user_disabled(session, user_id, disabled)

    verb = "disable" if disabled else "enable"
    try:
        await page.write(change, audit=(f"user.{verb}", f"user #{user_id}", tenant_id))
    except NotFound:
        raise Refused(404, "error.not_found") from None
    done = "user_disabled" if disabled else "user_enabled"
    return redirect(page, f"/console/operator/tenants/{tenant_id}?done={done}")


async def disable_tenant_user(page: Page) -> Response:
    return await _set_tenant_user(page, True)


async def enable_tenant_user(page: Page) -> Response:
    return await _set_tenant_user(page, False)


async def all_orders(page: Page) -> Response:
    state, before = state_param(page), before_param(page)
    rows = await page.db(lambda s: queries.orders(s, None, state, before))
    return render(page, "orders.html", rows=rows, state=state, states=ORDER_STATES, operator=True)


async def any_order(page: Page) -> Response:
    order_id = path_id(page)
    row = await page.db(lambda s: queries.order(s, None, order_id))
    if row is None:
        raise Refused(404, "error.not_found")
    cert = await page.db(lambda s: cert_queries.certificate_of_order(s, None, order_id))
    return render(page, "order.html", order=row, certificate_id=cert, operator=True)


async def all_certificates(page: Page) -> Response:
    after, now = after_param(page), page.services.clock()
    rows = await page.db(lambda s: cert_queries.certificate_records(s, None, now, after, False))
    return render(
        page, "certificates.html", rows=rows, paged=after is not None, operator=True, show_all=True
    )


async def any_certificate(page: Page) -> Response:
    certificate_id, now = path_id(page), page.services.clock()
    row = await page.db(lambda s: cert_queries.certificate_record(s, None, certificate_id, now))
    if row is None:
        raise Refused(404, "error.not_found")
    return render(page, "certificate.html", cert=row, operator=True, reasons=[], error=None)


async def issuers(page: Page) -> Response:
    names = sorted(page.services.settings.issuers)
    rows = await page.db(lambda s: queries.issuer_health(s, names))
    return render(page, "operator_issuers.html", rows=rows)


async def audit_log(page: Page) -> Response:
    rows = await page.db(lambda s: audit.list_events(s, limit=AUDIT_ROWS))
    return render(page, "audit.html", rows=list(reversed(rows)), operator=True)


ROUTES = [
    ("/operator/tenants", tenants_get, "operator", ["GET"]),
    ("/operator/tenants", add_tenant, "operator", ["POST"]),
    ("/operator/tenants/{id}", tenant_get, "operator", ["GET"]),
    ("/operator/tenants/{id}/disable", disable_tenant, "operator", ["POST"]),
    ("/operator/tenants/{id}/enable", enable_tenant, "operator", ["POST"]),
    ("/operator/tenants/{id}/invite", invite_tenant_user, "operator", ["POST"]),
    ("/operator/tenants/{id}/users/{user}/disable", disable_tenant_user, "operator", ["POST"]),
    ("/operator/tenants/{id}/users/{user}/enable", enable_tenant_user, "operator", ["POST"]),
    ("/operator/orders", all_orders, "operator", ["GET"]),
    ("/operator/orders/{id}", any_order, "operator", ["GET"]),
    ("/operator/certificates", all_certificates, "operator", ["GET"]),
    ("/operator/certificates/{id}", any_certificate, "operator", ["GET"]),
    ("/operator/issuers", issuers, "operator", ["GET"]),
    ("/operator/audit", audit_log, "operator", ["GET"]),
]
