"""Sign in (password, then the second factor when set), sign out, invites, the language
switch, and the user's own account (password, TOTP)."""

from __future__ import annotations

from starlette.responses import Response

from certok.console.i18n import LANGUAGES
from certok.console.web import (
    LANG_COOKIE,
    SESSION_COOKIE,
    Page,
    Refused,
    clear_cookie,
    redirect,
    render,
    safe_next,
    set_cookie,
)
from certok.errors import RateLimited
from certok.tenants import console_sessions, users
from certok.tenants.console_sessions import SignedIn

SIGN_IN_KIND = "console_sign_in"


def _client(page: Page) -> str:
    client = page.request.client
    return client.host if client is not None else "unknown"


async def _started(page: Page, user_id: int, *, mfa_pending: bool, target: str) -> Response:
    hours = page.services.settings.console_session_hours
    old = page.request.cookies.get(SESSION_COOKIE)

    def job(session) -> str:  # type: ignore[no-untyped-def]
        if old:
            console_sessions.end_session(session, old)
        # Expired sessions are swept here: sign-ins are rare, the table small.
        console_sessions.purge_expired(session, page.services.clock)
        return console_sessions.start_session(
            session, user_id, hours, mfa_pending=mfa_pending, clock=page.services.clock
        )

    secret = await page.write(job)
    response = redirect(page, target)
    set_cookie(page, response, SESSION_COOKIE, secret, max_age=int(hours * 3600))
    return response


async def sign_in_form(page: Page) -> Response:
    if page.user is not None and not page.user.mfa_pending:
        return redirect(page, safe_next(page.request.query_params.get("next")))
    return render(page, "sign_in.html", next=safe_next(page.request.query_params.get("next")))


async def sign_in(page: Page) -> Response:
    form = page.form
    email = form.get("email", "").strip().lower()[:254]
    target = safe_next(form.get("next"))
    limiter = page.services.limiter
    try:
        limiter.check(("address", _client(page)), SIGN_IN_KIND)  # type: ignore[arg-type]
        limiter.check(("account", email), SIGN_IN_KIND)  # type: ignore[arg-type]
    except RateLimited as limited:
        return render(
            page,
            "sign_in.html",
            429,
            next=target,
            email=email,
            error=page.t("error.too_many_sign_ins", seconds=limited.retry_after or 60),
        )
    password = form.get("password", "")

    def check(session):  # type: ignore[no-untyped-def]
        user = users.check_password(session, email, password)
        return None if user is None else (user.id, user.totp_encrypted is not None)

    found = await page.write(check)
    if found is None:
        return render(
            page, "sign_in.html", 400, next=target, email=email, error=page.t("error.sign_in")
        )
    user_id, has_totp = found
    if has_totp:
        return await _started(
            page,
            user_id,
            mfa_pending=True,
            target="/console/sign-in/second-factor?next=" + _quoted(target),
        )
    return await _started(page, user_id, mfa_pending=False, target=target)


def _quoted(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _pending(page: Page) -> SignedIn:
    if page.user is None or not page.user.mfa_pending:
        raise Refused(403, "error.signed_out")
    return page.user


async def second_factor_form(page: Page) -> Response:
    if page.user is None or not page.user.mfa_pending:
        return redirect(page, "/console/sign-in")
    return render(page, "second_factor.html", next=safe_next(page.request.query_params.get("next")))


async def second_factor(page: Page) -> Response:
    pending = _pending(page)
    target = safe_next(page.form.get("next"))
    try:
        page.services.limiter.check(("account", pending.email), SIGN_IN_KIND)  # type: ignore[arg-type]
    except RateLimited as limited:
        return render(
            page,
            "second_factor.html",
            429,
            next=target,
            error=page.t("error.too_many_sign_ins", seconds=limited.retry_after or 60),
        )
    code = page.form.get("code", "")[:64]
    box, clock = page.services.box, page.services.clock
    ok = await page.write(lambda s: users.check_second_factor(s, pending.user_id, code, box, clock))
    if not ok:
        return render(page, "second_factor.html", 400, next=target, error=page.t("error.code"))
    return await _started(page, pending.user_id, mfa_pending=False, target=target)


async def sign_out(page: Page) -> Response:
    secret = page.request.cookies.get(SESSION_COOKIE)
    if secret:
        await page.write(lambda s: console_sessions.end_session(s, secret))
    response = redirect(page, "/console/sign-in?done=signed_out")
    clear_cookie(page, response, SESSION_COOKIE)
    return response


async def language(page: Page) -> Response:
    lang = page.form.get("lang", "")
    response = redirect(page, safe_next(page.form.get("next")))
    if lang in LANGUAGES:
        set_cookie(page, response, LANG_COOKIE, lang, max_age=365 * 86400)
    return response


# --- invites -------------------------------------------------------------------------------
async def invite_form(page: Page) -> Response:
    secret = page.request.path_params["secret"]
    clock = page.services.clock
    user = await page.db(lambda s: users.invited_user(s, secret, clock))
    if user is None:
        raise Refused(404, "error.invite")
    return render(page, "invite.html", email=user.email)


async def invite_accept(page: Page) -> Response:
    secret = page.request.path_params["secret"]
    password = page.form.get("password", "")
    problem = users.password_problem(password)
    if problem is None and password != page.form.get("confirm", ""):
        problem = "error.password_mismatch"
    clock = page.services.clock

    def accept(session):  # type: ignore[no-untyped-def]
        user = users.invited_user(session, secret, clock)
        if user is None:
            return None
        if problem is None:
            users.accept_invite(session, user, password)
        return user.id, user.email

    found = await page.write(accept)
    if found is None:
        raise Refused(404, "error.invite")
    if problem is not None:
        return render(page, "invite.html", 400, email=found[1], error=page.t(problem))
    return await _started(page, found[0], mfa_pending=False, target="/console/")


# --- the user's own account ------------------------------------------------------------------
async def account(page: Page) -> Response:
    return render(page, "account.html")


async def change_password(page: Page) -> Response:
    assert page.user is not None
    user = page.user
    new = page.form.get("new", "")
    problem = users.password_problem(new)
    if problem is None and new != page.form.get("confirm", ""):
        problem = "error.password_mismatch"
    current = page.form.get("current", "")

    def change(session):  # type: ignore[no-untyped-def]
        if users.check_password(session, user.email, current) is None:
            return "error.password_wrong"
        if problem is not None:
            return problem
        users.set_password(session, user.user_id, new)
        # Every browser signed in as this user is signed out; this one gets a new session.
        console_sessions.end_user_sessions(session, user.user_id)
        return None

    error = await page.write(
        change, audit=("user.password", user.email, user.tenant_id), done=lambda e: e is None
    )
    if error is not None:
        return render(page, "account.html", 400, error=page.t(error))
    return await _started(
        page, user.user_id, mfa_pending=False, target="/console/account?done=password_changed"
    )


async def totp_start(page: Page) -> Response:
    assert page.user is not None
    secret = users.new_totp_secret()
    return render(
        page, "account.html", totp_secret=secret, totp_uri=users.totp_uri(secret, page.user.email)
    )


async def totp_confirm(page: Page) -> Response:
    assert page.user is not None
    user = page.user
    secret = page.form.get("secret", "")
    step = None
    if len(secret) == 32 and secret.isalnum():
        step = users.matching_step(secret, page.form.get("code", ""), page.services.clock())
    if step is None:
        return render(
            page,
            "account.html",
            400,
            totp_secret=secret if len(secret) == 32 and secret.isalnum() else None,
            totp_uri=users.totp_uri(secret, user.email) if secret.isalnum() else None,
            error=page.t("error.code"),
        )
    box = page.services.box
    codes = await page.write(
        lambda s: users.enable_totp(s, user.user_id, secret, box, step),
        audit=("user.totp_enable", user.email, user.tenant_id),
    )
    return render(page, "account.html", recovery_codes=codes, totp_now=True)


async def totp_disable(page: Page) -> Response:
    assert page.user is not None
    user = page.user
    current = page.form.get("current", "")

    def disable(session) -> bool:  # type: ignore[no-untyped-def]
        if users.check_password(session, user.email, current) is None:
            return False
        users.disable_totp(session, user.user_id)
        return True

    if not await page.write(
        disable, audit=("user.totp_disable", user.email, user.tenant_id), done=bool
    ):
        return render(page, "account.html", 400, error=page.t("error.password_wrong"))
    return redirect(page, "/console/account?done=totp_disabled")


ROUTES = [
    ("/sign-in", sign_in_form, "anyone", ["GET"]),
    ("/sign-in", sign_in, "anyone", ["POST"]),
    ("/sign-in/second-factor", second_factor_form, "anyone", ["GET"]),
    ("/sign-in/second-factor", second_factor, "anyone", ["POST"]),
    ("/sign-out", sign_out, "anyone", ["POST"]),
    ("/language", language, "anyone", ["POST"]),
    ("/invite/{secret}", invite_form, "anyone", ["GET"]),
    ("/invite/{secret}", invite_accept, "anyone", ["POST"]),
    ("/account", account, "user", ["GET"]),
    ("/account/password", change_password, "user", ["POST"]),
    ("/account/totp", totp_start, "user", ["POST"]),
    ("/account/totp/confirm", totp_confirm, "user", ["POST"]),
    ("/account/totp/disable", totp_disable, "user", ["POST"]),
]
