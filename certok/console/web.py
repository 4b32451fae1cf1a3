"""The console's plumbing: who is signed in, CSRF tokens, forms, cookies, rendering.

Every page is rendered on the server and every action is a plain HTML form, so the console
works without JavaScript. State-changing requests are POSTs that carry a CSRF token tied to
the session (an HMAC of the session's secret); before sign-in, to a random pre-session cookie.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import jinja2
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from certok import audit
from certok.clock import Clock, utcnow
from certok.console.i18n import Translator, negotiate
from certok.crypto import SecretBox
from certok.db.engine import transaction
from certok.ratelimit import RateLimiter
from certok.settings import Settings
from certok.tenants.console_sessions import SignedIn, find_session
from certok.verification.dns_verifier import DnsVerifier
from certok.verification.http_verifier import HttpVerifier

T = TypeVar("T")

SESSION_COOKIE = "certok_console"
PRE_COOKIE = "certok_pre"
LANG_COOKIE = "certok_lang"
COOKIE_PATH = "/console"
MAX_FORM_BYTES = 64 * 1024
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# Sent with every console answer: no caching of pages that show secrets, no framing, no
# scripts or styles from anywhere but certok itself, no Referer to other sites (invite links
# carry a secret; "no-referrer" would also make browsers send `Origin: null` on our own forms).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@dataclass
class ConsoleServices:
    settings: Settings
    sessions: sessionmaker[Session]
    box: SecretBox
    verifier: DnsVerifier
    http_verifier: HttpVerifier
    limiter: RateLimiter
    clock: Clock = utcnow
    csrf_key: bytes = field(default=b"")
    # Wakes the worker's certificate tasks (a revocation asked for); no-op without a worker.
    wake_certificates: Callable[[], None] = field(default=lambda: None)
    # Webhooks (certok.api.webhooks.EventApi: URL rules, delivery wake-up, clock), or None.
    events: Any = None

    def __post_init__(self) -> None:
        if not self.csrf_key:
            self.csrf_key = self.box.derive("console-csrf")


class Refused(Exception):
    """A request the console refuses with a page: status and message id."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Page:
    """One request as the console sees it."""

    request: Request
    services: ConsoleServices
    translator: Translator
    user: SignedIn | None
    session_secret: str | None
    pre_secret: str
    new_pre: bool
    form: dict[str, str] = field(default_factory=dict)

    @property
    def lang(self) -> str:
        return self.translator.lang

    @property
    def secure(self) -> bool:
        return self.request.url.scheme == "https"

    @property
    def csrf(self) -> str:
        if self.session_secret is not None:
            basis = b"session\x00" + self.session_secret.encode()
        else:
            basis = b"pre\x00" + self.pre_secret.encode()
        return hmac.new(self.services.csrf_key, basis, hashlib.sha256).hexdigest()

    @property
    def tenant_id(self) -> int:
        if self.user is None or self.user.tenant_id is None:
            raise Refused(404, "error.not_found")
        return self.user.tenant_id

    def t(self, key: str, **values: Any) -> str:
        return self.translator(key, **values)

    async def db(self, job: Callable[[Session], T]) -> T:
        """Run a read in a thread with its own session."""

        def run() -> T:
            with self.services.sessions() as session:
                return job(session)

        return await asyncio.to_thread(run)

    async def write(
        self,
        job: Callable[[Session], T],
        audit: tuple[str, str, int | None] | None = None,
        done: Callable[[T], bool] = lambda _: True,
    ) -> T:
        """Run a write transaction in a thread. With `audit` (action, target, tenant id), the
        audit log gets its row in the same transaction when `done(result)` says it happened."""

        def run() -> T:
            with transaction(self.services.sessions) as session:
                result = job(session)
                if audit is not None and done(result):
                    self.audit(session, *audit)
                return result

        return await asyncio.to_thread(run)

    def audit(self, session: Session, action: str, target: str, tenant_id: int | None) -> None:
        """One audit row (certok/audit.py): the signed-in user, from this client address."""
        who = self.user.email if self.user is not None else "anonymous"
        client = self.request.client.host if self.request.client is not None else "unknown"
        audit.record(
            session,
            f"console:{who}",
            action,
            target,
            tenant_id,
            f"console from {client}",
            clock=self.services.clock,
        )


async def load_page(request: Request, services: ConsoleServices) -> Page:
    lang = negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))
    secret = request.cookies.get(SESSION_COOKIE)
    user = None
    if secret:

        def lookup() -> SignedIn | None:
            with services.sessions() as session:
                return find_session(session, secret, services.clock)

        user = await asyncio.to_thread(lookup)
    pre = request.cookies.get(PRE_COOKIE) or ""
    new_pre = not (16 <= len(pre) <= 100)
    if new_pre:
        pre = secrets.token_urlsafe(24)
    return Page(
        request=request,
        services=services,
        translator=Translator(lang),
        user=user,
        session_secret=secret if user is not None else None,
        pre_secret=pre,
        new_pre=new_pre,
    )


async def read_form(page: Page) -> dict[str, str]:
    """The urlencoded form of a POST, after the CSRF and origin checks; refuses anything else."""
    request = page.request
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site not in (None, "same-origin", "none"):
        raise Refused(403, "error.csrf")
    origin = request.headers.get("origin")
    if origin is not None and origin != _own_origin(request):
        raise Refused(403, "error.csrf")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise Refused(413, "error.too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "error.too_large")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and kind != "application/x-www-form-urlencoded":
        raise Refused(415, "error.form_type")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "error.form_type") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    given = form.get("csrf") or request.headers.get("x-csrf-token") or ""
    if not hmac.compare_digest(given.encode(), page.csrf.encode()):
        raise Refused(403, "error.csrf")
    page.form = form
    return form


def _own_origin(request: Request) -> str:
    url = request.url
    default = {"http": 80, "https": 443}.get(url.scheme)
    port = "" if url.port in (None, default) else f":{url.port}"
    return f"{url.scheme}://{url.hostname}{port}"


def safe_next(value: str | None, default: str = "/console/") -> str:
    """A redirect target inside the console, or the default: never another site.

    Only paths under /console/ are taken; "//host", "/\\host", schemes and control characters
    (which browsers strip or turn into slashes) are refused.
    """
    if not value or len(value) > 500:
        return default
    if any(ord(c) < 0x21 or c == "\\" for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/console/"):
        return default
    if value.startswith("//") or "/../" in parts.path or parts.path.endswith("/.."):
        return default
    return value


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(value: dt.datetime | None) -> str:
    return "—" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def day(value: dt.datetime | None) -> str:
    return "—" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d")


_env.filters["when"] = when
_env.filters["day"] = day


def render(page: Page, template: str, status: int = 200, **context: Any) -> Response:
    html = _env.get_template(template).render(
        t=page.t,
        lang=page.lang,
        user=page.user,
        csrf=page.csrf,
        path=page.request.url.path,
        query=page.request.url.query,
        notice=_notice(page),
        now=page.services.clock(),
        **context,
    )
    return finish(page, HTMLResponse(html, status_code=status))


# Messages a redirect may ask the next page to show (?done=...): a closed set of ids.
NOTICES = frozenset(
    {
        "token_revoked",
        "password_changed",
        "totp_disabled",
        "tenant_created",
        "tenant_disabled",
        "tenant_enabled",
        "user_disabled",
        "user_enabled",
        "domains_added",
        "signed_out",
        "revoke_requested",
        "webhook_test",
        "webhook_deleted",
    }
)


def _notice(page: Page) -> str | None:
    done = page.request.query_params.get("done")
    return page.t(f"notice.{done}") if done in NOTICES else None


def redirect(page: Page, target: str) -> Response:
    return finish(page, RedirectResponse(target, status_code=303))


def finish(page: Page, response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if page.new_pre:
        set_cookie(page, response, PRE_COOKIE, page.pre_secret, max_age=None)
    response.headers["Content-Language"] = page.lang
    response.headers.append("Vary", "Accept-Language, Cookie")
    return response


def set_cookie(
    page: Page, response: Response, name: str, value: str, *, max_age: int | None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=page.secure,
        httponly=True,
        samesite="lax",
    )


def clear_cookie(page: Page, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, secure=page.secure, httponly=True, samesite="lax"
    )


Handler = Callable[[Page], Awaitable[Response]]
