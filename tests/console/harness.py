"""A console in process: the real API app (console mounted), a real database, users with
passwords, and a client that signs in and submits forms the way a browser does."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.testclient import TestClient

from certok.db.engine import transaction
from certok.store import Store
from certok.tenants import service as tenants
from certok.tenants import users

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
        response = self.submit(
            "/console/sign-in", "/console/sign-in", {"email": email, "password": password}
        )
        return response
