"""A tenant's pages: dashboard, domains and delegations, certificates, orders, API tokens and
users. Every read and write names the signed-in user's tenant."""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update
from starlette.responses import JSONResponse, Response

from certok import audit
from certok.certificates.service import (
    REVOCATION_REASONS,
    request_revocation,
    revocation_reason,
)
from certok.console import agent_pages, cert_queries, queries
from certok.console.web import Page, Refused, finish, redirect, render
from certok.crypto import order_key_owner
from certok.db.models import ApiToken, DelegationCheck
from certok.errors import Conflict, InvalidRequest, NotFound
from certok.names import base_name, challenge_name, parse_domains
from certok.order_states import ORDER_STATES
from certok.tenants import users
from certok.tenants.service import TenantRef, new_token, token_digest
from certok.verification.http_verifier import nginx_block

TOKEN_NAME_CHARS = 64
AUDIT_ROWS = 200


def path_id(page: Page, name: str = "id") -> int:
    raw = page.request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise Refused(404, "error.not_found")
    return int(raw)


async def dashboard(page: Page) -> Response:
    if page.user is not None and page.user.operator:
        return redirect(page, "/console/operator/tenants")
    tenant_id, now = page.tenant_id, page.services.clock()
    board = await page.db(lambda s: queries.dashboard(s, tenant_id, now))
    silent = await page.db(lambda s: agent_pages.silent_hosts(s, tenant_id, now))
    return render(page, "dashboard.html", board=board, silent=silent)


# --- domains -------------------------------------------------------------------------------
def _zone(page: Page) -> str:
    return page.services.settings.dns_zone


async def domains(page: Page, error: str | None = None, status: int = 200) -> Response:
    tenant_id = page.tenant_id
    rows = await page.db(lambda s: queries.delegations(s, tenant_id))
    hosts = await page.db(lambda s: queries.http_hosts(s, tenant_id))
    user = page.user
    assert user is not None
    tenant = TenantRef(tenant_id, user.tenant_name or "", user.tenant_handle or "")
    return render(
        page,
        "domains.html",
        status,
        rows=rows,
        hosts=hosts,
        zone=_zone(page),
        challenge_name=challenge_name,
        nginx=nginx_block(page.services.http_verifier.bound_target(tenant)),
        error=error,
    )


async def domains_get(page: Page) -> Response:
    return await domains(page)


async def add_domains(page: Page) -> Response:
    raw = page.form.get("names", "").replace("\n", ",").replace(" ", ",")
    raw = ",".join(part for part in raw.split(",") if part.strip())
    if not raw:
        return await domains(page, page.t("error.names_missing"), 400)
    try:
        names = parse_domains(raw, max_names=page.services.settings.max_domains)
    except InvalidRequest as exc:
        return await domains(page, page.t("error.names_invalid", detail=exc.message), 400)
    bases = sorted({base_name(n) for n in names})
    await asyncio.to_thread(page.services.verifier.labels, page.tenant_id, bases)
    return redirect(page, "/console/domains?done=domains_added")


async def check_domain(page: Page) -> Response:
    tenant_id, delegation_id = page.tenant_id, path_id(page)
    row = await page.db(lambda s: queries.delegation(s, tenant_id, delegation_id))
    if row is None:
        raise Refused(404, "error.not_found")
    # The real check: the resolver certok's worker uses, the same CNAME it requires.
    problem = await asyncio.to_thread(
        page.services.verifier.ownership_problem, tenant_id, [row.base_name]
    )
    now = page.services.clock()

    def save(session) -> None:  # type: ignore[no-untyped-def]
        check = session.get(DelegationCheck, delegation_id)
        if check is None:
            check = DelegationCheck(delegation_id=delegation_id, tenant_id=tenant_id)
            session.add(check)
        check.valid, check.detail, check.checked_at = problem is None, problem, now

    await page.write(save)
    if "application/json" in page.request.headers.get("accept", ""):
        return finish(
            page,
            JSONResponse(
                {
                    "valid": problem is None,
                    "label": page.t("domains.valid" if problem is None else "domains.invalid"),
                    "detail": problem or "",
                    "checked": now.strftime("%Y-%m-%d %H:%M UTC"),
                }
            ),
        )
    return redirect(page, f"/console/domains#d{delegation_id}")


# --- certificates (records: certok/certificates/) ---------------------------------------
def after_param(page: Page) -> int | None:
    raw = page.request.query_params.get("after", "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


async def certificates(page: Page) -> Response:
    tenant_id, after, now = page.tenant_id, after_param(page), page.services.clock()
    show_all = page.request.query_params.get("show") == "all"
    rows = await page.db(
        lambda s: cert_queries.certificate_records(s, tenant_id, now, after, not show_all)
    )
    return render(
        page,
        "certificates.html",
        rows=rows,
        paged=after is not None,
        operator=False,
        show_all=show_all,
    )


async def certificate(page: Page, error: str | None = None, status: int = 200) -> Response:
    tenant_id, certificate_id, now = page.tenant_id, path_id(page), page.services.clock()
    row = await page.db(
        lambda s: cert_queries.certificate_record(s, tenant_id, certificate_id, now)
    )
    if row is None:
        raise Refused(404, "error.not_found")
    return render(
        page,
        "certificate.html",
        status,
        cert=row,
        operator=False,
        reasons=list(REVOCATION_REASONS),
        error=error,
    )


async def certificate_get(page: Page) -> Response:
    return await certificate(page)


async def _files(page: Page) -> tuple[str, bytes, int]:
    tenant_id, certificate_id = page.tenant_id, path_id(page)
    found = await page.db(lambda s: cert_queries.certificate_files(s, tenant_id, certificate_id))
    if found is None:
        raise Refused(404, "error.not_found")
    return found


def _attachment(page: Page, body: str | bytes, filename: str) -> Response:
    return finish(
        page,
        Response(
            body,
            media_type="application/x-pem-file",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        ),
    )


async def certificate_chain(page: Page) -> Response:
    chain, _, _ = await _files(page)
    return _attachment(page, chain, f"certificate-{path_id(page)}-fullchain.pem")


async def certificate_key(page: Page) -> Response:
    """The private key, only on this explicit POST (a button with the CSRF token)."""
    _, blob, order_id = await _files(page)
    # The key is the order's ciphertext, bound to the order's id (certificates/records.py).
    pem = page.services.box.decrypt(blob, order_key_owner(order_id))
    return _attachment(page, pem, f"certificate-{path_id(page)}-privkey.pem")


async def revoke_certificate(page: Page) -> Response:
    tenant_id, certificate_id, now = page.tenant_id, path_id(page), page.services.clock()
    if page.form.get("confirm") != "yes":
        return await certificate(page, page.t("error.revoke_confirm"), 400)
    try:
        reason = revocation_reason(page.form.get("reason") or "unspecified")
    except InvalidRequest:
        return await certificate(page, page.t("error.revoke_reason"), 400)

    def record(session) -> bool:  # type: ignore[no-untyped-def]
        return request_revocation(session, tenant_id, certificate_id, reason, now)

    try:
        wake = await page.write(
            record, audit=("certificate.revoke", f"certificate {certificate_id}", tenant_id)
        )
    except NotFound:
        raise Refused(404, "error.not_found") from None
    except InvalidRequest:
        return await certificate(page, page.t("error.revoke_expired"), 400)
    if wake:
        page.services.wake_certificates()
    return redirect(page, f"/console/certificates/{certificate_id}?done=revoke_requested")


# --- orders --------------------------------------------------------------------------------
def before_param(page: Page) -> int | None:
    raw = page.request.query_params.get("before", "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def state_param(page: Page) -> str | None:
    state = page.request.query_params.get("state")
    return state if state in ORDER_STATES else None


async def orders(page: Page) -> Response:
    tenant_id, state, before = page.tenant_id, state_param(page), before_param(page)
    rows = await page.db(lambda s: queries.orders(s, tenant_id, state, before))
    return render(page, "orders.html", rows=rows, state=state, states=ORDER_STATES, operator=False)


async def order(page: Page) -> Response:
    tenant_id, order_id = page.tenant_id, path_id(page)
    row = await page.db(lambda s: queries.order(s, tenant_id, order_id))
    if row is None:
        raise Refused(404, "error.not_found")
    cert = await page.db(lambda s: cert_queries.certificate_of_order(s, tenant_id, order_id))
    return render(page, "order.html", order=row, certificate_id=cert, operator=False)


# --- API tokens ----------------------------------------------------------------------------
async def tokens(page: Page, new: str | None = None, status: int = 200) -> Response:
    tenant_id = page.tenant_id
    rows = await page.db(lambda s: queries.tokens(s, tenant_id))
    return render(page, "tokens.html", status, rows=rows, new_token=new)


async def tokens_get(page: Page) -> Response:
    return await tokens(page)


async def create_token(page: Page) -> Response:
    tenant_id, now = page.tenant_id, page.services.clock()
    name = " ".join(page.form.get("name", "").split())[:TOKEN_NAME_CHARS] or None
    token = new_token()
    await page.write(
        lambda s: s.add(
            ApiToken(
                tenant_id=tenant_id,
                digest=token_digest(token),
                hint=token[:6],
                name=name,
                created_at=now,
            )
        ),
        audit=("token.create", f"token {token[:6]}", tenant_id),
    )
    # Rendered, not redirected: the token is in this answer only (Cache-Control: no-store).
    return await tokens(page, new=token, status=201)


async def revoke_token(page: Page) -> Response:
    tenant_id, token_id, now = page.tenant_id, path_id(page), page.services.clock()

    def revoke(session) -> bool:  # type: ignore[no-untyped-def]
        found = session.scalar(
            select(ApiToken.id).where(ApiToken.id == token_id, ApiToken.tenant_id == tenant_id)
        )
        if found is None:
            return False
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return True

    if not await page.write(
        revoke, audit=("token.revoke", f"token #{token_id}", tenant_id), done=bool
    ):
        raise Refused(404, "error.not_found")
    return redirect(page, "/console/tokens?done=token_revoked")


# --- users of the tenant (operators: of the operators) -------------------------------------
def _users_scope(page: Page) -> int | None:
    assert page.user is not None
    return None if page.user.operator else page.tenant_id


def invite_link(page: Page, secret: str) -> str:
    return f"{page.services.settings.public_url.rstrip('/')}/console/invite/{secret}"


async def users_page(
    page: Page, invite: str | None = None, error: str | None = None, status: int = 200
) -> Response:
    scope = _users_scope(page)
    rows = await page.db(lambda s: users.list_users(s, scope))
    return render(page, "users.html", status, rows=rows, invite=invite, error=error)


async def users_get(page: Page) -> Response:
    return await users_page(page)


async def invite_user(page: Page) -> Response:
    scope = _users_scope(page)
    hours, clock = page.services.settings.console_invite_hours, page.services.clock
    email = page.form.get("email", "")
    try:
        _, secret = await page.write(
            lambda s: users.create_user(s, email, tenant_id=scope, invite_hours=hours, clock=clock),
            audit=("user.invite", email.strip().lower()[:254], scope),
        )
    except InvalidRequest:
        return await users_page(page, error=page.t("error.email"), status=400)
    except Conflict:  # the address is taken (by this tenant or another)
        return await users_page(page, error=page.t("error.email_taken"), status=409)
    return await users_page(page, invite=invite_link(page, secret), status=201)


async def _set_user(page: Page, disabled: bool) -> Response:
    assert page.user is not None
    scope, user_id = _users_scope(page), path_id(page)
    if user_id == page.user.user_id:
        raise Refused(400, "error.self")

    def change(session) -> None:  # type: ignore[no-untyped-def]
        users.find_user(session, user_id, scope)  # NotFound for another tenant's user
        users.set_user_disabled(session, user_id, disabled)

    verb = "disable" if disabled else "enable"
    try:
        await page.write(change, audit=(f"user.{verb}", f"user #{user_id}", scope))
    except NotFound:
        raise Refused(404, "error.not_found") from None
    return redirect(page, f"/console/users?done=user_{'disabled' if disabled else 'enabled'}")


async def disable_user(page: Page) -> Response:
    return await _set_user(page, True)


async def enable_user(page: Page) -> Response:
    return await _set_user(page, False)


async def audit_log(page: Page) -> Response:
    tenant_id = page.tenant_id
    rows = await page.db(lambda s: audit.list_events(s, tenant_id=tenant_id, limit=AUDIT_ROWS))
    return render(page, "audit.html", rows=list(reversed(rows)), operator=False)


ROUTES = [
    ("/", dashboard, "user", ["GET"]),
    ("/domains", domains_get, "tenant", ["GET"]),
    ("/domains", add_domains, "tenant", ["POST"]),
    ("/domains/{id}/check", check_domain, "tenant", ["POST"]),
    ("/certificates", certificates, "tenant", ["GET"]),
    ("/certificates/{id}", certificate_get, "tenant", ["GET"]),
    ("/certificates/{id}/fullchain.pem", certificate_chain, "tenant", ["GET"]),
    ("/certificates/{id}/privkey.pem", certificate_key, "tenant", ["POST"]),
    ("/certificates/{id}/revoke", revoke_certificate, "tenant", ["POST"]),
    ("/orders", orders, "tenant", ["GET"]),
    ("/orders/{id}", order, "tenant", ["GET"]),
    ("/tokens", tokens_get, "tenant", ["GET"]),
    ("/tokens", create_token, "tenant", ["POST"]),
    ("/tokens/{id}/revoke", revoke_token, "tenant", ["POST"]),
    ("/audit", audit_log, "tenant", ["GET"]),
    ("/users", users_get, "user", ["GET"]),
    ("/users", invite_user, "user", ["POST"]),
    ("/users/{id}/disable", disable_user, "user", ["POST"]),
    ("/users/{id}/enable", enable_user, "user", ["POST"]),
]
