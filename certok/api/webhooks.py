"""`/v1/webhooks`: a tenant's webhook endpoints, secret rotation, test messages and the
delivery log (the delivery itself is `certok.events.delivery`'s)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from certok.api.envelope import NO_STORE, envelope
from certok.clock import Clock, utcnow
from certok.db.writes import write
from certok.errors import Conflict, InvalidRequest
from certok.events import endpoints
from certok.events.delivery import endpoint_secret_owner, notify_secret
from certok.events.types import EVENT_TYPES
from certok.prechecks.safe_http import FetchRefused
from certok.tenants.service import TenantRef

if TYPE_CHECKING:
    from certok.api.services import ApiServices

TenantOf = Callable[[Request], Awaitable[TenantRef]]
MAX_BODY_BYTES = 16 * 1024
MAX_PAGE_SIZE = 100
MAX_URL_CHARS = 2000


def _no_check(url: str) -> str:
    return url


@dataclass
class EventApi:
    """What the webhook and POST API routes need besides the common services."""

    # The canonical URL if the SSRF rules allow it (SafeFetcher.check_url), else FetchRefused.
    check_url: Callable[[str], str] = _no_check
    # Tell this process's delivery worker that something was queued.
    wake: Callable[[], None] = lambda: None
    # How long a rotated-out secret keeps signing (a second signature) after a rotation.
    rotation_overlap_seconds: float = 24 * 3600
    clock: Clock = field(default=utcnow)


async def read_json_object(
    request: Request, fields: Collection[str] | None = None, *, strict: bool = True
) -> dict[str, Any]:
    """The request's JSON object body, or InvalidRequest saying what is wrong with it.

    With `fields`, a key that is not one of them is refused by name (a misspelt field would
    otherwise be dropped silently: `"event"` for `"events"` subscribes to everything). Not
    `strict` (httpsok's POST API, whose clients may send fields of their own), only a key
    that is one of `fields` in other letter case is refused."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body too large: at most {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise InvalidRequest("missing JSON body: send a JSON object with Content-Type json")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the body is not valid JSON ({error}): send a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidRequest('the body must be a JSON object, e.g. {"url": "https://..."}')
    if fields is not None:
        by_case = {field.lower(): field for field in fields}
        for key in value:
            if key in fields:
                continue
            if strict or key.lower() in by_case:
                meant = by_case.get(key.lower())
                hint = f"did you mean {meant!r}? " if meant else ""
                raise InvalidRequest(
                    f"unknown field {key[:40]!r}: {hint}the fields are {', '.join(fields)}"
                )
    return value


def checked_url(events: EventApi, value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be an http(s) URL string, e.g. https://example.com/hook")
    value = value.strip()
    if len(value) > MAX_URL_CHARS:
        raise InvalidRequest(f"{name} is too long: at most {MAX_URL_CHARS} characters")
    try:
        return events.check_url(value)
    except FetchRefused as refusal:
        raise InvalidRequest(f"{name} is not allowed: {refusal.reason}") from None


def _page(request: Request, name: str, default: int, largest: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= largest:
        raise InvalidRequest(f"{name}={raw!r} is not valid: use a whole number 1-{largest}")
    return int(raw)


def webhook_routes(services: ApiServices, tenant_of: TenantOf) -> list[Route]:
    events: EventApi = services.events
    sessions = services.sessions
    box = services.box

    def read(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        def run() -> Any:
            with sessions() as session:
                return function(session.connection(), *args)

        return asyncio.to_thread(run)

    def writing(job: Callable[..., Any], **kwargs: Any) -> Awaitable[Any]:
        return asyncio.to_thread(write, sessions, functools.partial(job, **kwargs))

    async def list_webhooks(request: Request) -> Response:
        tenant = await tenant_of(request)
        items = await read(endpoints.list_endpoints, tenant.id)
        data = {
            "list": items,
            "total": len(items),
            # Signs this tenant's notifyUrl deliveries (POST /v1/cert/apply): see docs/webhooks.md.
            "notifySecret": notify_secret(box, tenant.id),
        }
        return envelope(request, data, headers=NO_STORE)

    async def create_webhook(request: Request) -> Response:
        tenant = await tenant_of(request)
        body = await read_json_object(request, ("url", "description", "events"))
        url = checked_url(events, body.get("url"), "url")
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > 200:
            raise InvalidRequest("description must be a string of at most 200 characters")
        wanted = body.get("events", [])
        if not isinstance(wanted, list) or not all(isinstance(e, str) for e in wanted):
            raise InvalidRequest("events must be a list of event types, or left out for all")
        unknown = [e for e in wanted if e not in EVENT_TYPES]
        if unknown:
            raise InvalidRequest(
                f"unknown event type {unknown[0]!r}: use any of {', '.join(EVENT_TYPES)}"
            )
        count = await read(endpoints.count_endpoints, tenant.id)
        if count >= endpoints.MAX_ENDPOINTS_PER_TENANT:
            raise Conflict(f"this tenant has {count} webhooks, the most allowed: delete one first")
        public_id = endpoints.new_public_id()
        secret, encrypted = endpoints.encrypt_new_secret(box, public_id)
        await writing(
            endpoints.create_endpoint_job,
            tenant_id=tenant.id,
            public_id=public_id,
            url=url,
            description=description,
            event_types=",".join(dict.fromkeys(wanted)),
            secret_encrypted=encrypted,
            now=events.clock(),
        )
        data = {"id": public_id, "url": url, "secret": secret, "events": wanted}
        return envelope(request, data, headers=NO_STORE)

    async def delete_webhook(request: Request) -> Response:
        tenant = await tenant_of(request)
        public_id = request.path_params["id"]
        await writing(endpoints.delete_endpoint_job, tenant_id=tenant.id, public_id=public_id)
        return envelope(request, {"id": public_id, "deleted": True})

    async def rotate_secret(request: Request) -> Response:
        tenant = await tenant_of(request)
        public_id = request.path_params["id"]
        current = await read(endpoints.current_secret_ciphertext, tenant.id, public_id)
        old = box.decrypt(current, endpoint_secret_owner(public_id))
        secret, encrypted = endpoints.encrypt_new_secret(box, public_id)
        until = events.clock() + dt.timedelta(seconds=events.rotation_overlap_seconds)
        await writing(
            endpoints.rotate_secret_job,
            tenant_id=tenant.id,
            public_id=public_id,
            expected_current=current,
            secret_encrypted=encrypted,
            previous_reencrypted=box.encrypt(old, endpoint_secret_owner(public_id, "previous")),
            previous_until=until,
        )
        data = {
            "id": public_id,
            "secret": secret,
            "previousSecretValidUntil": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return envelope(request, data, headers=NO_STORE)

    async def test_webhook(request: Request) -> Response:
        tenant = await tenant_of(request)
        public_id = request.path_params["id"]
        message_id = await writing(
            endpoints.queue_test_job, tenant_id=tenant.id, public_id=public_id, now=events.clock()
        )
        events.wake()
        return envelope(request, {"id": public_id, "messageId": message_id})

    async def deliveries(request: Request) -> Response:
        tenant = await tenant_of(request)
        public_id = request.path_params["id"]
        page = _page(request, "page", 1, 1_000_000)
        size = _page(request, "size", 20, MAX_PAGE_SIZE)
        total, items = await read(endpoints.list_deliveries, tenant.id, public_id, page, size)
        return envelope(request, {"list": items, "total": total, "page": page, "size": size})

    return [
        Route("/v1/webhooks", list_webhooks, methods=["GET"]),
        Route("/v1/webhooks", create_webhook, methods=["POST"]),
        Route("/v1/webhooks/{id}", delete_webhook, methods=["DELETE"]),
        Route("/v1/webhooks/{id}/rotate", rotate_secret, methods=["POST"]),
        Route("/v1/webhooks/{id}/test", test_webhook, methods=["POST"]),
        Route("/v1/webhooks/{id}/deliveries", deliveries, methods=["GET"]),
    ]
