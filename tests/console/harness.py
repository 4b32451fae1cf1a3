"""A console in process: the real API app (console mounted), a real database, users with
passwords, and a client that signs in and submits forms the way a browser does."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from starlette.testclient import TestClient

from certok.certificates.records import issued_certificate, record_issued
from certok.db.engine import transaction
from certok.db.models import AgentHost, AgentLogEntry, Certificate, ManagedCertificate, Order
from certok.orders.service import order_key_owner
from certok.persistence import Store
from certok.tenants import service as tenants
from certok.tenants import users
from tests.kit.certs import self_signed
from tests.kit.rows import order_row

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def add_user(store: Store, email: str, tenant: str | None, password: str = PASSWORD) -> int:
    with transaction(store.sessions) as session:
        tenant_id = tenants.find_tenant(session, tenant).id if tenant else None
        user_id, _ = users.create_user(session, email, tenant_id=tenant_id, invite_hours=1)
        user = users.find_user(session, user_id, tenant_id)
        users.accept_invite(session, user, password)
        return user_id


@dataclass
class Browser:
    """A TestClient with its own cookie jar; `submit` sends a form with the page's CSRF token."""

    client: TestClient
    last: httpx.Response | None = field(default=None)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        self.last = self.client.get(path, **kwargs)
        return self.last

    def submit(
        self, form_page: str, action: str, data: dict[str, str], **kwargs: Any
    ) -> httpx.Response:
        page = self.client.get(form_page)
        assert page.status_code == 200, (form_page, page.status_code, page.text[:300])
        body = {"csrf": csrf_of(page.text), **data}
        self.last = self.client.post(action, data=body, **kwargs)
        return self.last

    def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        # Signed in already, the sign-in page sends the browser on: take the form token from a
        # page that shows one.
        signed_in = self.client.get("/console/sign-in").status_code == 303
        return self.submit(
            "/console/account" if signed_in else "/console/sign-in",
            "/console/sign-in",
            {"email": email, "password": password},
        )


def add_order(
    store: Store,
    tenant: str,
    domains: list[str],
    state: str,
    *,
    reason: str | None = None,
    issuer: str = "letsencrypt",
    days: int = 90,
) -> int:
    """An order row as the worker leaves it (issued ones with a certificate and its key)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with transaction(store.sessions) as session:
        tenant_id = tenants.find_tenant(session, tenant).id
        order = Order(
            **order_row(
                tenant_id,
                now,
                issuer=issuer,
                domains=",".join(domains),
                state=state,
                reason=reason,
                attempts=1,
                finished_at=None if state == "pending" else now,
            )
        )
        session.add(order)
        session.flush()
        if state == "issued":
            chain, key = self_signed(
                domains, not_before=now - dt.timedelta(days=1), lifetime=dt.timedelta(days=days)
            )
            order.certificate_pem = chain
            order.not_before = now - dt.timedelta(days=1)
            order.not_after = now - dt.timedelta(days=1) + dt.timedelta(days=days)
            order.key_encrypted = store.box.encrypt(key.encode(), order_key_owner(order.id))
            session.flush()
            # The certificate record, written as the worker writes it when an order is issued.
            record_issued(session.connection(), order.id, issued_certificate(chain, now, ari=False))
        return order.id


def certificate_of(store: Store, order_id: int) -> int:
    with store.sessions() as session:
        found = session.scalar(select(Certificate.id).where(Certificate.order_id == order_id))
    assert found is not None
    return found


def add_host(store: Store, tenant: str, uuid: str, seen_days_ago: float = 0) -> int:
    """An agent's host as certok/agents/ records it, with one managed certificate and a log."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    seen = now - dt.timedelta(days=seen_days_ago)
    with transaction(store.sessions) as session:
        tenant_id = tenants.find_tenant(session, tenant).id
        host = AgentHost(
            tenant_id=tenant_id,
            uuid=uuid,
            agent_version="1.17.0",
            os_name="Debian 12",
            nginx_version="1.22.1",
            created_at=seen,
            last_seen_at=seen,
            last_done_at=seen,
        )
        session.add(host)
        session.flush()
        session.add(
            ManagedCertificate(
                tenant_id=tenant_id,
                host_id=host.id,
                code=uuid[:8] + "0" * 8,
                cert_path=f"/etc/nginx/ssl/{uuid}.pem",
                key_path=f"/etc/nginx/ssl/{uuid}.key",
                names=f"{uuid}.example.com",
                skipped="[]",
                active=True,
                created_at=seen,
                updated_at=seen,
            )
        )
        session.add(
            AgentLogEntry(
                tenant_id=tenant_id,
                host_id=host.id,
                kind="deploy",
                message=f"nginx reloaded with {uuid}.pem",
                created_at=seen,
            )
        )
        return host.id
