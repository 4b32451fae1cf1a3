"""A tenant's webhooks: add (the signing secret shown once), rotate the secret, send a test,
the delivery log, delete. The same jobs as /v1/webhooks (certok/events/endpoints.py), every
one scoped by the tenant: another tenant's webhook id answers like an unknown one."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

from starlette.responses import Response

from certok.console.web import Page, Refused, redirect, render
from certok.db.writes import write
from certok.errors import Conflict, NotFound
from certok.events import endpoints
from certok.events.delivery import endpoint_secret_owner, notify_secret
from certok.events.types import EVENT_TYPES

DELIVERY_ROWS = 50


def _public_id(page: Page) -> str:
    value: str = page.request.path_params["id"]
    if not value.startswith("wh_") or len(value) > 40 or not value[3:].isalnum():
        raise Refused(404, "error.not_found")
    return value


async def _read(page: Page, function: Callable[..., Any], *args: Any) -> Any:
    def run() -> Any:
        with page.services.sessions() as session:
            return function(session.connection(), *args)

    try:
        return await asyncio.to_thread(run)
    except NotFound:
        raise Refused(404, "error.not_found") from None


async def _write(page: Page, job: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(
            write, page.services.sessions, functools.partial(job, **kwargs)
        )
    except NotFound:
        raise Refused(404, "error.not_found") from None


async def _audit(page: Page, action: str, public_id: str) -> None:
    # The webhook jobs run in the write channel on a Connection: their audit row follows in
    # a transaction of its own.
    tenant_id = page.tenant_id
    await page.write(lambda s: page.audit(s, action, f"webhook {public_id}", tenant_id))


async def webhooks(
    page: Page,
    *,
    error: str | None = None,
    created: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    tenant_id = page.tenant_id
    rows = await _read(page, endpoints.list_endpoints, tenant_id)
    return render(
        page,
        "webhooks.html",
        status,
        rows=rows,
        event_types=EVENT_TYPES,
        created=created,
        error=error,
        notify_secret=notify_secret(page.services.box, tenant_id),
    )


async def webhooks_get(page: Page) -> Response:
    return await webhooks(page)


async def add_webhook(page: Page) -> Response:
    tenant_id, events = page.tenant_id, page.services.events
    if events is None:
        raise Refused(404, "error.not_found")
    form = page.form
    description = form.get("description", "").strip()[:200]
    wanted = [e for e in EVENT_TYPES if form.get(f"event_{e}") == "on"]
    try:
        url = events.check_url(form.get("url", "").strip())
    except Exception as exc:  # FetchRefused and its kin: the URL's rule it breaks
        detail = str(getattr(exc, "message", exc))
        return await webhooks(page, error=page.t("error.webhook_url", detail=detail), status=400)
    count = await _read(page, endpoints.count_endpoints, tenant_id)
    if count >= endpoints.MAX_ENDPOINTS_PER_TENANT:
        return await webhooks(page, error=page.t("error.webhook_limit"), status=409)
    public_id = endpoints.new_public_id()
    secret, encrypted = endpoints.encrypt_new_secret(page.services.box, public_id)
    await _write(
        page,
        endpoints.create_endpoint_job,
        tenant_id=tenant_id,
        public_id=public_id,
        url=url,
        description=description,
        event_types=",".join(wanted),
        secret_encrypted=encrypted,
        now=page.services.clock(),
    )
    await _audit(page, "webhook.create", public_id)
    # Rendered, not redirected: the secret is in this answer only.
    return await webhooks(page, created={"id": public_id, "secret": secret}, status=201)


async def webhook(
    page: Page, *, secret: str | None = None, until: dt.datetime | None = None, status: int = 200
) -> Response:
    tenant_id, public_id = page.tenant_id, _public_id(page)
    found = [
        r for r in await _read(page, endpoints.list_endpoints, tenant_id) if r["id"] == public_id
    ]
    if not found:
        raise Refused(404, "error.not_found")
    total, deliveries = await _read(
        page, endpoints.list_deliveries, tenant_id, public_id, 1, DELIVERY_ROWS
    )
    return render(
        page,
        "webhook.html",
        status,
        hook=found[0],
        deliveries=deliveries,
        total=total,
        secret=secret,
        until=until,
    )


async def webhook_get(page: Page) -> Response:
    return await webhook(page)


async def rotate_webhook(page: Page) -> Response:
    tenant_id, public_id, events = page.tenant_id, _public_id(page), page.services.events
    if events is None:
        raise Refused(404, "error.not_found")
    box = page.services.box
    current = await _read(page, endpoints.current_secret_ciphertext, tenant_id, public_id)
    old = box.decrypt(current, endpoint_secret_owner(public_id))
    secret, encrypted = endpoints.encrypt_new_secret(box, public_id)
    until = events.clock() + dt.timedelta(seconds=events.rotation_overlap_seconds)
    try:
        await _write(
            page,
            endpoints.rotate_secret_job,
            tenant_id=tenant_id,
            public_id=public_id,
            expected_current=current,
            secret_encrypted=encrypted,
            previous_reencrypted=box.encrypt(old, endpoint_secret_owner(public_id, "previous")),
            previous_until=until,
        )
    except Conflict:
        raise Refused(409, "error.webhook_rotated") from None
    await _audit(page, "webhook.rotate", public_id)
    return await webhook(page, secret=secret, until=until)


async def test_webhook(page: Page) -> Response:
    tenant_id, public_id, events = page.tenant_id, _public_id(page), page.services.events
    if events is None:
        raise Refused(404, "error.not_found")
    await _write(
        page, endpoints.queue_test_job, tenant_id=tenant_id, public_id=public_id, now=events.clock()
    )
    events.wake()
    return redirect(page, f"/console/webhooks/{public_id}?done=webhook_test")


async def delete_webhook(page: Page) -> Response:
    tenant_id, public_id = page.tenant_id, _public_id(page)
    if page.form.get("confirm") != "yes":
        raise Refused(400, "error.webhook_confirm")
    await _write(page, endpoints.delete_endpoint_job, tenant_id=tenant_id, public_id=public_id)
    await _audit(page, "webhook.delete", public_id)
    return redirect(page, "/console/webhooks?done=webhook_deleted")


ROUTES = [
    ("/webhooks", webhooks_get, "tenant", ["GET"]),
    ("/webhooks", add_webhook, "tenant", ["POST"]),
    ("/webhooks/{id}", webhook_get, "tenant", ["GET"]),
    ("/webhooks/{id}/rotate", rotate_webhook, "tenant", ["POST"]),
    ("/webhooks/{id}/test", test_webhook, "tenant", ["POST"]),
    ("/webhooks/{id}/delete", delete_webhook, "tenant", ["POST"]),
]
