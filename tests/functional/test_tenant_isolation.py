"""Tenant isolation, explored by a Hypothesis state machine with three tenants.

The machine holds the world's DNS in its own table: for each name, which tenant's label (if
any) ``_acme-challenge.<name>`` points to. A small authoritative server on loopback
(``dnsfake_server.FakeNameserver``) answers certok's resolver from that table, so the
machine can move a delegation from one tenant to another at any moment. Its rules then do
what tenants and the worker do, in any order Hypothesis finds:

- ``dv`` for some names, as any tenant;
- ``apply`` with the tenant's own codes and with other tenants' codes (fresh or redeemed);
- one driver step of an order, as the worker would, against a real Pebble that validates
  every challenge (``PEBBLE_VA_ALWAYS_VALID``): the CA checks nothing, exactly the case of
  an authorization reused at the CA, so certok's own ownership check is the only guard;
- an issued order written directly (certificate and encrypted key), as the worker writes it;
- key authorizations stored for an order's host, host bindings claimed and released, and the
  HTTP-01 responder asked through every tenant's handle and through the host-only form.

After every step the database is inspected. The properties:
- a tenant never sees another tenant's code, order, certificate or private key in an answer;
- another tenant's code is answered exactly like an unknown code (status, headers, body);
- dv gives a code only for names delegated to the caller right now;
- an ACME order is created, and a TXT value written (``challenge_records``), only for names
  delegated to the order's tenant at that moment, and only under that tenant's labels;
- the responder serves a key authorization only through the owning tenant's handle, or
  through the host-only form when the host is bound to that tenant.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select
from starlette.testclient import TestClient

from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import build_api_services, build_checks, build_driver
from certok.certificates.records import issued_certificate, record_issued
from certok.crypto import SecretBox
from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import Certificate, ChallengeRecord, Delegation, Order, VerificationCode
from certok.db.sessions import make_session_factory
from certok.domains.delegations import compute_label
from certok.http01 import store as http01_store
from certok.names import base_name
from certok.orders.driver import OrderDriver
from certok.orders.service import order_key_owner
from certok.persistence import Store
from certok.settings import IssuerSettings, Settings
from certok.tenants import service as tenants
from tests.depth import at_depth
from tests.functional.dnsfake_server import FakeNameserver
from tests.functional.pebble_fixture import PebbleInstance, pebble_server  # noqa: F401
from tests.kit.certs import self_signed
from tests.kit.dns import CERTOK_ZONE

pytestmark = pytest.mark.timeout(240)

CUSTOMER = "customer.test"
LABEL_KEY = b"isolation-test-label-key-0123456"
WORKER = "isolation-worker"
TOKEN_HEADER = "httpsok-token"
TENANTS = 3
HOOK_PORT = 9  # webhook URLs point here; nothing listens, nothing is delivered
WEBHOOK_ACTIONS = (
    ("DELETE", ""),
    ("POST", "/rotate"),
    ("POST", "/test"),
    ("GET", "/deliveries"),
)
NAMES_PER_RUN = 3
# Steps the worker takes on an order in one go; issuing takes about four with Pebble.
MAX_STEPS_PER_DRIVE = 8
# Each run of the machine gets its own tenants and names, so runs share one database.
RUNS = itertools.count(1)


@dataclass
class World:
    client: TestClient
    store: Store
    fake_dns: FakeNameserver
    driver: OrderDriver
    kek: bytes  # the key-encryption key (lives in a file or the environment, never the DB)
    database: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleInstance) -> Iterator[World]:
    with open_world(tmp_path_factory.mktemp("isolation"), pebble) as opened:
        yield opened


@contextlib.contextmanager
def open_world(tmp_path: Path, pebble: PebbleInstance) -> Iterator[World]:
    """certok's API and worker on a new SQLite database, with a fake DNS server of their own."""
    database = tmp_path / "certok.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    kek = secrets.token_bytes(32)
    store = Store(engine, make_session_factory(engine), SecretBox(kek))
    with FakeNameserver(zones=[CUSTOMER, CERTOK_ZONE]) as fake_dns:
        settings = Settings(
            data_dir=tmp_path,
            dns_zone=CERTOK_ZONE,
            resolvers=[f"127.0.0.1:{fake_dns.port}"],
            resolver_timeout_seconds=1.0,
            apply_wait_seconds=0,
            agent_check_wait_seconds=0,
            challenge_propagation_seconds=0,
            code_ttl_seconds=600,
            rate_limit_dv_per_minute=0,
            rate_limit_apply_per_minute=0,
            # Every run of the machine brings three new tenants whose first requests are token
            # lookups from the test client's one address: the per-address limit on those
            # (120 a minute by default) would answer 429 after a few dozen runs.
            rate_limit_unverified_tokens_per_minute=0,
            # A run may upload more than 10 nginx configurations for one tenant within a
            # minute (agent_preparse is one of the machine's rules): the per-tenant limit on
            # them is not what this test checks, and answered 429 on such a run.
            agent_preparse_per_minute=0,
            issuers={
                "pebble": IssuerSettings(
                    directory=pebble.directory_url, ca_bundle=Path(pebble.ca_bundle)
                )
            },
            default_issuer="pebble",
            # Webhook URLs on loopback are accepted (nothing is delivered in the machine), and
            # the POST API's poll interval does not get in the way of the rules.
            precheck_allow_loopback=True,
            precheck_allowed_ports=[HOOK_PORT],
            post_api_poll_seconds=0,
        )
        checks = build_checks(settings, store, label_key=LABEL_KEY)
        app = create_app(
            build_api_services(
                settings,
                store,
                checks,
                waiters=OrderWaiters(),
                wake_worker=lambda: None,  # the machine's `work` rule is the worker
            )
        )
        driver = build_driver(settings, store, checks, worker_id=WORKER)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield World(client, store, fake_dns, driver, kek, database)
    engine.dispose()


# --- the machine's view of the world -------------------------------------------------------------


@dataclass
class TenantInfo:
    name: str
    id: int
    token: str
    handle: str


@dataclass
class CodeInfo:
    code: str
    owner: int  # index into tenants
    domains: list[str]
    order_id: int | None = None


@dataclass
class HttpChallenge:
    host: str
    token: str
    key_authorization: str
    owner: int
    order_id: int | None = None


@dataclass
class Secrets:
    """What belongs to one tenant and must never appear in another tenant's answers."""

    codes: set[str] = field(default_factory=set)
    certificates: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    webhook_secrets: set[str] = field(default_factory=set)


def pem_body(pem: str) -> str:
    """The base64 lines of a PEM: what would give a secret away, however it is wrapped."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))[:200]


INDEX = st.integers(0, 1000)
TENANT = st.integers(0, TENANTS - 1)


class IsolationMachine(RuleBasedStateMachine):
    world: World  # set by the test before the machine runs
    # How often the interesting branches were reached, over all runs (checked at the end).
    reached: dict[str, int] = {}

    def __init__(self) -> None:
        super().__init__()
        run = next(RUNS)
        self.tenants: list[TenantInfo] = []
        with transaction(self.world.store.sessions) as session:
            for index in range(TENANTS):
                ref = tenants.create_tenant(session, f"iso-{run}-{index}")
                token = tenants.issue_token(session, ref.name)
                self.tenants.append(TenantInfo(ref.name, ref.id, token, ref.http_handle))
        self.bases = [f"n{i}.r{run}.{CUSTOMER}" for i in range(NAMES_PER_RUN)]
        # base → index of the tenant its _acme-challenge CNAME points to, or None.
        self.delegated: dict[str, int | None] = dict.fromkeys(self.bases)
        self.codes: list[CodeInfo] = []
        self.challenges: list[HttpChallenge] = []
        self.bindings: dict[str, int] = {}  # host → tenant index (host-only form)
        self.secrets = [Secrets() for _ in self.tenants]
        self.webhooks: list[tuple[str, int]] = []  # (public id, owner index)
        # Orders whose ACME order was created while a name was not the tenant's: must stay empty.
        self.unowned_acme_orders: list[str] = []
        # httpsok.sh's codes (/v1/nginx/preparse): code, owner, host uuid (hosts of different
        # tenants share uuids: a uuid names a host within one tenant only).
        self.agent_codes: list[tuple[str, int, str]] = []
        self.agent_hosts = [f"host-{run}-{index}" for index in range(2)]

    # --- helpers ------------------------------------------------------------------------------
    def get(self, path: str, tenant: int | None, **params: str) -> Any:
        headers = {TOKEN_HEADER: self.tenants[tenant].token} if tenant is not None else {}
        response = self.world.client.get(path, params=params, headers=headers)
        assert response.status_code < 500, response.text
        if tenant is not None:
            # What the request carried may come back (a code named in a 404): that is no leak.
            echoed = {value.strip().lower() for value in params.values()}
            self.assert_no_foreign_secrets(tenant, response.text, echoed)
        return response

    def assert_no_foreign_secrets(self, tenant: int, text: str, echoed: set[str]) -> None:
        for other, owned in enumerate(self.secrets):
            if other == tenant:
                continue
            for code in owned.codes - echoed:
                assert code not in text, f"tenant {tenant} was shown tenant {other}'s code"
            for pem in owned.certificates | owned.keys:
                assert pem_body(pem) not in text, f"tenant {tenant} saw tenant {other}'s PEM"
            for secret in owned.webhook_secrets:
                assert secret not in text, f"tenant {tenant} saw tenant {other}'s webhook secret"

    def label(self, tenant: int, base: str) -> str:
        return compute_label(LABEL_KEY, self.tenants[tenant].id, base)

    def owned_by(self, tenant: int, domains: list[str]) -> bool:
        return all(self.delegated[base_name(d)] == tenant for d in domains)

    def apply(self, tenant: int, code: str) -> Any:
        return self.get("/v1/cert/apply", tenant, code=code)

    # --- the world's DNS -------------------------------------------------------------------------
    @rule(base=INDEX, owner=st.one_of(st.none(), TENANT))
    def delegate(self, base: int, owner: int | None) -> None:
        """The domain owner points the CNAME at a tenant's label, or removes it."""
        name = self.bases[base % len(self.bases)]
        challenge = f"_acme-challenge.{name}"
        if owner is None:
            self.world.fake_dns.data.cnames.pop(challenge, None)
        else:
            self.world.fake_dns.add_cname(challenge, f"{self.label(owner, name)}.{CERTOK_ZONE}")
        self.delegated[name] = owner

    @initialize(
        owners=st.lists(
            st.one_of(st.none(), TENANT), min_size=NAMES_PER_RUN, max_size=NAMES_PER_RUN
        )
    )
    def delegate_all(self, owners: list[int | None]) -> None:
        for index, owner in enumerate(owners):
            self.delegate(index, owner)

    def count(self, what: str) -> None:
        self.reached[what] = self.reached.get(what, 0) + 1

    # --- the API ---------------------------------------------------------------------------------
    @rule(
        tenant=TENANT,
        picks=st.lists(st.tuples(INDEX, st.booleans()), min_size=1, max_size=3, unique=True),
    )
    def dv(self, tenant: int, picks: list[tuple[int, bool]]) -> None:
        self.check_dv(tenant, self.domains(picks))

    @rule(tenant=TENANT, wildcard=st.booleans())
    def dv_for_own_names(self, tenant: int, wildcard: bool) -> None:
        """dv for the names delegated to the caller, which should give a code."""
        own = [base for base, owner in self.delegated.items() if owner == tenant]
        if own:
            self.check_dv(tenant, own + ([f"*.{own[0]}"] if wildcard else []))

    @rule(tenant=TENANT, algorithm=st.sampled_from(["ECC", "RSA"]))
    def order_own_names(self, tenant: int, algorithm: str) -> None:
        """The happy path in one step: dv for the caller's names, apply, the worker's steps."""
        codes_before = len(self.codes)
        self.dv_for_own_names(tenant, wildcard=True)
        if len(self.codes) > codes_before:
            self.apply_own_code(len(self.codes) - 1, algorithm)
            self.drive(self.codes[-1])

    @rule(tenant=TENANT, name=INDEX, thief=st.one_of(st.none(), TENANT))
    def order_then_lose_a_name(self, tenant: int, name: int, thief: int | None) -> None:
        """The name changes hands between apply and the worker: the CA must never hear of it."""
        codes_before = len(self.codes)
        self.dv_for_own_names(tenant, wildcard=False)
        if len(self.codes) > codes_before:
            self.apply_own_code(len(self.codes) - 1, "ECC")
            self.lose_a_name_then_drive(self.codes[-1], name, thief)

    def domains(self, picks: list[tuple[int, bool]]) -> list[str]:
        return list(
            dict.fromkeys(
                ("*." if wildcard else "") + self.bases[index % len(self.bases)]
                for index, wildcard in picks
            )
        )

    def check_dv(self, tenant: int, domains: list[str]) -> None:
        response = self.get("/v1/cert/dv", tenant, domains=",".join(domains))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        for item in data["items"]:
            # Every tenant is shown its own label for a name, never another tenant's.
            assert item["value"] == f"{self.label(tenant, base_name(item['domain']))}.{CERTOK_ZONE}"
        owned = self.owned_by(tenant, domains)
        assert data["valid"] is owned, (tenant, domains, self.delegated, data)
        if owned:
            code = data["code"]
            assert isinstance(code, str) and len(code) == 16
            self.codes.append(CodeInfo(code, tenant, domains))
            self.secrets[tenant].codes.add(code)
            self.count("code")
        else:
            assert data["code"] is None

    @precondition(lambda self: self.codes)
    @rule(pick=INDEX, algorithm=st.sampled_from(["ECC", "RSA"]))
    def apply_own_code(self, pick: int, algorithm: str) -> None:
        info = self.codes[pick % len(self.codes)]
        response = self.get(
            "/v1/cert/apply", info.owner, code=info.code, algorithm=algorithm, issuer="pebble"
        )
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["status"] in ("pending", "issued", "failure")
        with self.world.store.sessions() as session:
            row = session.scalar(select(VerificationCode).where(VerificationCode.code == info.code))
            assert row is not None and row.order_id is not None
            order = session.get(Order, row.order_id)
            assert order is not None and order.tenant_id == self.tenants[info.owner].id
        assert info.order_id in (None, row.order_id)  # one code, one order
        info.order_id = row.order_id
        if data["status"] == "issued":
            assert data["domains"] == ",".join(info.domains)
            self.secrets[info.owner].certificates.add(data["certificate"])
            self.secrets[info.owner].keys.add(data["privateKey"])

    @precondition(lambda self: self.codes)
    @rule(
        pick=INDEX,
        shift=st.integers(1, TENANTS - 1),
        spelling=st.sampled_from(["as-is", "upper", "padded"]),
    )
    def apply_foreign_code(self, pick: int, shift: int, spelling: str) -> None:
        """Another tenant's code, fresh or redeemed, is answered exactly like an unknown code."""
        info = self.codes[pick % len(self.codes)]
        intruder = (info.owner + shift) % TENANTS
        sent = {"as-is": info.code, "upper": info.code.upper(), "padded": f" {info.code} "}[
            spelling
        ]
        unknown = secrets.token_hex(8)
        unknown_sent = {"as-is": unknown, "upper": unknown.upper(), "padded": f" {unknown} "}[
            spelling
        ]
        with self.world.store.sessions() as session:
            orders_before = session.scalars(select(Order.id).order_by(Order.id)).all()
        foreign = self.apply(intruder, sent)
        reference = self.apply(intruder, unknown_sent)
        assert foreign.status_code == reference.status_code == 404
        assert dict(foreign.headers) == dict(reference.headers)
        foreign_body, reference_body = foreign.json(), reference.json()
        foreign_body.pop("traceId")
        reference_body.pop("traceId")
        assert json.dumps(foreign_body).replace(info.code, "<code>") == json.dumps(
            reference_body
        ).replace(unknown, "<code>")
        with self.world.store.sessions() as session:
            assert session.scalars(select(Order.id).order_by(Order.id)).all() == orders_before

    # --- webhooks and the POST API ------------------------------------------------------------
    def call(
        self, method: str, path: str, tenant: int, header: str = TOKEN_HEADER, **kw: Any
    ) -> Any:
        headers = {header: self.tenants[tenant].token}
        response = self.world.client.request(method, path, headers=headers, **kw)
        assert response.status_code < 500, response.text
        # An id the request named may come back in a 404's message: that is no leak.
        self.assert_no_foreign_secrets(tenant, response.text, set(path.lower().split("/")))
        return response

    @rule(tenant=TENANT)
    def create_webhook(self, tenant: int) -> None:
        url = f"http://127.0.0.1:{HOOK_PORT}/t{tenant}"
        response = self.call("POST", "/v1/webhooks", tenant, json={"url": url})
        if response.status_code == 409:  # the per-tenant maximum
            return
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        self.webhooks.append((data["id"], tenant))
        self.secrets[tenant].webhook_secrets.add(data["secret"])
        self.count("webhook")

    @rule(tenant=TENANT)
    def list_webhooks(self, tenant: int) -> None:
        data = self.call("GET", "/v1/webhooks", tenant).json()["data"]
        own = {public_id for public_id, owner in self.webhooks if owner == tenant}
        assert {item["id"] for item in data["list"]} == own

    @precondition(lambda self: self.webhooks)
    @rule(pick=INDEX, shift=st.integers(1, TENANTS - 1), action=st.sampled_from(WEBHOOK_ACTIONS))
    def foreign_webhook_action(self, pick: int, shift: int, action: tuple[str, str]) -> None:
        """Another tenant's webhook id is answered exactly like an unknown id, and untouched."""
        from certok.db.models import WebhookDelivery, WebhookEndpoint

        public_id, owner = self.webhooks[pick % len(self.webhooks)]
        intruder = (owner + shift) % TENANTS
        method, suffix = action
        unknown = "wh_" + secrets.token_hex(12)

        def state() -> tuple[Any, ...]:
            with self.world.store.sessions() as session:
                row = session.scalar(
                    select(WebhookEndpoint).where(WebhookEndpoint.public_id == public_id)
                )
                assert row is not None
                queued = session.scalar(
                    select(func.count())
                    .select_from(WebhookDelivery)
                    .where(WebhookDelivery.endpoint_id == row.id)
                )
                return (row.secret_encrypted, row.previous_secret_encrypted, queued)

        before = state()
        foreign = self.call(method, f"/v1/webhooks/{public_id}{suffix}", intruder)
        reference = self.call(method, f"/v1/webhooks/{unknown}{suffix}", intruder)
        assert foreign.status_code == reference.status_code == 404
        assert dict(foreign.headers) == dict(reference.headers)
        foreign_body, reference_body = foreign.json(), reference.json()
        foreign_body.pop("traceId")
        reference_body.pop("traceId")
        assert json.dumps(foreign_body).replace(public_id, "<id>") == json.dumps(
            reference_body
        ).replace(unknown, "<id>")
        assert state() == before

    @rule(
        tenant=TENANT,
        picks=st.lists(st.tuples(INDEX, st.booleans()), min_size=1, max_size=3, unique=True),
    )
    def post_api_dv_and_apply(self, tenant: int, picks: list[tuple[int, bool]]) -> None:
        """The POST API: dv, then apply; an order only for names delegated to the caller."""
        self.post_api_order(tenant, self.domains(picks))

    @rule(tenant=TENANT)
    def post_api_for_own_names(self, tenant: int) -> None:
        own = [base for base, owner in self.delegated.items() if owner == tenant]
        if own:
            self.post_api_order(tenant, own)

    def post_api_order(self, tenant: int, domains: list[str]) -> None:
        response = self.call(
            "POST", "/v1/cert/dv", tenant, "OpenApiKey", json={"domainList": domains}
        )
        assert response.status_code == 200, response.text
        owned = self.owned_by(tenant, domains)
        data = response.json()["data"]
        assert data["valid"] is owned
        for config in data["configs"]:
            assert (
                config["hostValue"]
                == f"{self.label(tenant, base_name(config['domain']))}.{CERTOK_ZONE}"
            )
        response = self.call(
            "POST",
            "/v1/cert/apply",
            tenant,
            "OpenApiKey",
            json={"domainList": domains, "ca": "pebble"},
        )
        if not owned:
            assert response.status_code == 400, response.text
            return
        assert response.status_code == 200, response.text
        apply_id = response.json()["data"]
        with self.world.store.sessions() as session:
            row = session.scalar(select(VerificationCode).where(VerificationCode.code == apply_id))
            assert row is not None and row.tenant_id == self.tenants[tenant].id
        self.codes.append(CodeInfo(apply_id, tenant, domains, row.order_id))
        self.secrets[tenant].codes.add(apply_id)
        self.count("post api order")

    @precondition(lambda self: self.codes)
    @rule(pick=INDEX, shift=st.integers(1, TENANTS - 1))
    def post_api_status_of_a_foreign_id(self, pick: int, shift: int) -> None:
        info = self.codes[pick % len(self.codes)]
        intruder = (info.owner + shift) % TENANTS
        unknown = secrets.token_hex(8)
        foreign = self.call("GET", f"/v1/cert/apply/{info.code}", intruder, "OpenApiKey")
        reference = self.call("GET", f"/v1/cert/apply/{unknown}", intruder, "OpenApiKey")
        assert foreign.status_code == reference.status_code == 404
        assert foreign.json()["msg"].replace(info.code, "<id>") == reference.json()["msg"].replace(
            unknown, "<id>"
        )
        own = self.call("GET", f"/v1/cert/apply/{info.code}", info.owner, "OpenApiKey")
        assert own.status_code == 200, own.text

    # --- httpsok.sh's /v1/nginx ------------------------------------------------------------------
    def agent(
        self, method: str, path: str, tenant: int, uuid: str, body: bytes = b"", **params: str
    ) -> Any:
        headers = {TOKEN_HEADER: self.tenants[tenant].token, "httpsok-uuid": uuid}
        response = self.world.client.request(
            method, "/v1/nginx" + path, params=params, headers=headers, content=body
        )
        assert response.status_code < 500, response.text
        # A code named in the path may come back (in a 404's message): no leak.
        echoed = set(params.values()) | set(path.rsplit("/", 1)[-1].split("."))
        self.assert_no_foreign_secrets(tenant, response.text, echoed)
        return response

    @rule(
        tenant=TENANT,
        host=st.integers(0, 1),
        picks=st.lists(st.tuples(INDEX, st.booleans()), min_size=1, max_size=3, unique=True),
    )
    def agent_preparse(self, tenant: int, host: int, picks: list[tuple[int, bool]]) -> None:
        """A host's nginx configuration with the run's names: one code per certificate file."""
        names = " ".join(self.domains(picks))
        config = (
            "http {\n server {\n  listen 443 ssl;\n"
            f"  server_name {names} _;\n"
            "  ssl_certificate /etc/nginx/ssl/site.pem;\n"
            "  ssl_certificate_key /etc/nginx/ssl/site.key;\n }\n}\n"
        )
        uuid = self.agent_hosts[host]
        response = self.agent("POST", "/preparse", tenant, uuid, config.encode())
        assert response.status_code == 200, response.text
        (line,) = response.text.splitlines()
        code, cert, key = line.split(",")
        assert (cert, key) == ("/etc/nginx/ssl/site.pem", "/etc/nginx/ssl/site.key")
        if (code, tenant, uuid) not in self.agent_codes:
            for other_code, other, _ in self.agent_codes:
                assert other_code != code or other == tenant, "one code for two tenants"
            self.agent_codes.append((code, tenant, uuid))
            self.secrets[tenant].codes.add(code)
        self.count("agent preparse")

    @initialize(tenant=TENANT, host=st.integers(0, 1), pick=INDEX)
    def an_agent_code(self, tenant: int, host: int, pick: int) -> None:
        """Every run starts with one host's code: the rules about agent codes are enabled
        from the first step, not only after a `agent_preparse` happened to come first."""
        self.agent_preparse(tenant, host, [(pick, False)])

    @precondition(lambda self: self.agent_codes)
    @rule(pick=INDEX)
    def agent_check_own(self, pick: int) -> None:
        """The owner's agent asks for its certificate: an order only for names delegated to
        the owner right now, started from a code of the owner's."""
        code, owner, uuid = self.agent_codes[pick % len(self.agent_codes)]
        with self.world.store.sessions() as session:
            orders_before = set(session.scalars(select(Order.id)))
        lines = self.agent("GET", "/check", owner, uuid, code=code).text.splitlines()
        assert lines and lines[0] != "13", lines
        with self.world.store.sessions() as session:
            new = session.scalars(select(Order).where(Order.id.not_in(orders_before))).all()
            assert len(new) <= 1
            for order in new:
                domains = order.domains.split(",")
                assert order.tenant_id == self.tenants[owner].id
                assert self.owned_by(owner, domains), (domains, self.delegated)
                started_by = session.scalar(
                    select(VerificationCode.code).where(VerificationCode.order_id == order.id)
                )
                assert started_by is not None
                self.codes.append(CodeInfo(started_by, owner, domains, order.id))
                self.secrets[owner].codes.add(started_by)
                self.count("agent order")
        if lines[0] == "1":
            cert = self.agent("GET", f"/cert/{code}.cer", owner, uuid)
            key = self.agent("GET", f"/cert/{code}.key", owner, uuid)
            assert cert.status_code == key.status_code == 200
            self.secrets[owner].certificates.add(cert.text)
            self.secrets[owner].keys.add(key.text)
            self.count("agent certificate")

    @precondition(lambda self: self.agent_codes)
    @rule(
        pick=INDEX,
        shift=st.integers(1, TENANTS - 1),
        what=st.sampled_from(["check", "cer", "key", "upload", "log"]),
    )
    def agent_foreign_code(self, pick: int, shift: int, what: str) -> None:
        """Another tenant's code, on the owner's host uuid, is answered like an unknown code."""
        code, owner, uuid = self.agent_codes[pick % len(self.agent_codes)]
        intruder = (owner + shift) % TENANTS
        unknown = secrets.token_hex(8)
        with self.world.store.sessions() as session:
            orders_before = session.scalars(select(Order.id).order_by(Order.id)).all()

        def ask(value: str) -> tuple[int, str, str]:
            if what == "check":
                response = self.agent("GET", "/check", intruder, uuid, code=value)
            elif what in ("cer", "key"):
                response = self.agent("GET", f"/cert/{value}.{what}", intruder, uuid)
            elif what == "upload":
                response = self.agent("POST", "/upload", intruder, uuid, b"", code=value)
            else:
                path = "/log/nginx-test-failed"
                response = self.agent("PUT", path, intruder, uuid, b"failed", code=value)
            text = response.text
            if response.headers.get("content-type", "").startswith("application/json"):
                body = response.json()
                body.pop("traceId")
                text = json.dumps(body)
            return response.status_code, response.headers.get("content-type", ""), text

        foreign = ask(code)
        reference = ask(unknown)
        assert foreign[:2] == reference[:2]
        assert foreign[2].replace(code, "<code>") == reference[2].replace(unknown, "<code>")
        with self.world.store.sessions() as session:
            assert session.scalars(select(Order.id).order_by(Order.id)).all() == orders_before
        self.count("agent foreign code")

    @rule(tenant=TENANT, host=st.integers(0, 1))
    def agent_host_views(self, tenant: int, host: int) -> None:
        """The tenant's view of its hosts and a host's log: its own only (the uuids are
        shared with other tenants' hosts), and an unknown host's log like any unknown one."""
        uuid = self.agent_hosts[host]
        listing = self.get("/v1/agents/hosts", tenant)
        assert listing.status_code == 200, listing.text
        own = {code for code, owner, _ in self.agent_codes if owner == tenant}
        for listed in listing.json()["data"]["hosts"]:
            for certificate in listed["certificates"]:
                assert certificate["code"] in own
        log = self.get(f"/v1/agents/hosts/{uuid}/log", tenant)
        has_host = any(owner == tenant and at == uuid for _, owner, at in self.agent_codes)
        assert log.status_code == (200 if has_host else 404), log.text

    # --- the worker ------------------------------------------------------------------------------
    def orders(self) -> list[CodeInfo]:
        return [info for info in self.codes if info.order_id is not None]

    @precondition(lambda self: any(info.order_id is not None for info in self.codes))
    @rule(pick=INDEX)
    def work(self, pick: int) -> None:
        orders = self.orders()
        self.drive(orders[pick % len(orders)])

    @precondition(lambda self: any(info.order_id is not None for info in self.codes))
    @rule(pick=INDEX, name=INDEX, thief=st.one_of(st.none(), TENANT))
    def move_a_delegation_then_work(self, pick: int, name: int, thief: int | None) -> None:
        orders = self.orders()
        self.lose_a_name_then_drive(orders[pick % len(orders)], name, thief)

    def lose_a_name_then_drive(self, info: CodeInfo, name: int, thief: int | None) -> None:
        """The name changes hands after the code was given out: the order must not proceed."""
        base = base_name(info.domains[name % len(info.domains)])
        self.delegate(self.bases.index(base), thief)
        self.drive(info)

    @staticmethod
    def txt_record_ids(session: Any, order_id: int) -> set[int]:
        return set(
            session.scalars(
                select(ChallengeRecord.id).where(
                    ChallengeRecord.order_id == order_id, ChallengeRecord.kind == "dns-01"
                )
            )
        )

    def drive(self, info: CodeInfo) -> None:
        """Steps of one order, as the worker takes them, while the DNS stays as it is now."""
        assert info.order_id is not None
        for _ in range(MAX_STEPS_PER_DRIVE):
            with transaction(self.world.store.sessions) as session:
                order = session.get(Order, info.order_id)
                assert order is not None
                if order.state != "pending":
                    return
                acme_orders_before = order.acme_orders
                txt_before = self.txt_record_ids(session, order.id)
                order.lease_owner = WORKER
                order.lease_until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
            delay = self.world.driver.step(info.order_id)
            owned = self.owned_by(info.owner, info.domains)
            with self.world.store.sessions() as session:
                order = session.get(Order, info.order_id)
                assert order is not None
                written = self.txt_record_ids(session, order.id) - txt_before
                went_to_ca = order.acme_orders > acme_orders_before or bool(written)
                if went_to_ca and not owned:
                    self.unowned_acme_orders.append(
                        f"order {order.id} of tenant {info.owner} for {info.domains} went "
                        f"to the CA while the DNS said {self.delegated}"
                    )
                if not owned and not went_to_ca:
                    self.count("refused by the ownership check")
                if order.state != "pending":
                    # The worker drops an order's challenge material when it ends the order.
                    self.challenges = [c for c in self.challenges if c.order_id != order.id]
                if order.state == "issued":
                    self.count("issued by the CA")
                    assert order.certificate_pem and order.key_encrypted
                    key = self.world.store.box.decrypt(
                        order.key_encrypted, order_key_owner(order.id)
                    )
                    self.secrets[info.owner].certificates.add(order.certificate_pem)
                    self.secrets[info.owner].keys.add(key.decode())
            if delay is None:
                self.read_issued_record(info)
                return
            time.sleep(min(delay, 0.02))  # Pebble validates in the background

    def read_issued_record(self, info: CodeInfo) -> None:
        """An order just issued has its record: its owner reads it, the next tenant cannot."""
        with self.world.store.sessions() as session:
            certificate_id = session.scalar(
                select(Certificate.id).where(Certificate.order_id == info.order_id)
            )
        if certificate_id is not None:
            self.read_certificate(certificate_id, info.owner, info.owner, "")
            self.read_certificate(certificate_id, info.owner, (info.owner + 1) % TENANTS, "")

    @precondition(lambda self: any(info.order_id is not None for info in self.codes))
    @rule(pick=INDEX)
    def issue_directly(self, pick: int) -> None:
        """The worker's last write, without a CA: certificate and encrypted key."""
        orders = self.orders()
        info = orders[pick % len(orders)]
        certificate, key = self_signed([d.replace("*", "wild") for d in info.domains])
        with transaction(self.world.store.sessions) as session:
            order = session.get(Order, info.order_id)
            assert order is not None
            if order.state != "pending":
                return
            order.state = "issued"
            order.certificate_pem = certificate
            order.key_encrypted = self.world.store.box.encrypt(
                key.encode(), order_key_owner(order.id)
            )
            order.not_before = dt.datetime.now(dt.UTC)
            order.not_after = order.not_before + dt.timedelta(days=90)
            session.flush()
            # The record the issuing save writes with it (certok/certificates/records.py).
            record_issued(
                session.connection(),
                order.id,
                issued_certificate(certificate, order.not_before, ari=False),
            )
        self.secrets[info.owner].certificates.add(certificate)
        self.secrets[info.owner].keys.add(key)

    # --- certificate records ---------------------------------------------------------------------
    def certificate_rows(self) -> list[tuple[int, int]]:
        """(certificate id, owner index) of this run's certificate records."""
        by_id = {tenant.id: index for index, tenant in enumerate(self.tenants)}
        with self.world.store.sessions() as session:
            rows = session.execute(
                select(Certificate.id, Certificate.tenant_id).where(
                    Certificate.tenant_id.in_(self.run_tenant_ids())
                )
            ).all()
        return [(row.id, by_id[row.tenant_id]) for row in rows]

    def post(self, path: str, tenant: int, body: dict[str, Any]) -> Any:
        response = self.world.client.post(
            path, json=body, headers={TOKEN_HEADER: self.tenants[tenant].token}
        )
        assert response.status_code < 500, response.text
        self.assert_no_foreign_secrets(tenant, response.text, set())
        return response

    @rule(tenant=TENANT, status=st.sampled_from([None, "valid", "revoked"]))
    def list_certificates(self, tenant: int, status: str | None) -> None:
        params = {"size": "100", **({"status": status} if status else {})}
        response = self.get("/v1/cert/list", tenant, **params)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        own = {cid for cid, owner in self.certificate_rows() if owner == tenant}
        listed = {item["id"] for item in data["items"]}
        assert listed <= own, "a tenant's list showed another tenant's certificate"
        if status is None:
            assert listed == own and data["total"] == len(own)
        if listed:
            self.count("certificates listed")
        for certificate_id in sorted(listed)[:3]:
            self.read_certificate(certificate_id, tenant, tenant, "")
        # And one of another tenant's, asked for as if it were the caller's.
        foreign = [cid for cid, owner in self.certificate_rows() if owner != tenant]
        if foreign:
            owner = next(o for cid, o in self.certificate_rows() if cid == foreign[-1])
            self.read_certificate(foreign[-1], owner, tenant, "/privkey.pem")

    @precondition(lambda self: self.certificate_rows())
    @rule(
        pick=INDEX,
        shift=st.one_of(st.none(), st.integers(1, TENANTS - 1)),
        what=st.sampled_from(["", "/fullchain.pem", "/privkey.pem"]),
    )
    def get_certificate(self, pick: int, shift: int | None, what: str) -> None:
        """Its owner reads it (shift None); anyone else is answered exactly as for an unknown
        id."""
        rows = self.certificate_rows()
        certificate_id, owner = rows[pick % len(rows)]
        as_tenant = owner if shift is None else (owner + shift) % TENANTS
        self.read_certificate(certificate_id, owner, as_tenant, what)

    def read_certificate(self, certificate_id: int, owner: int, as_tenant: int, what: str) -> None:
        response = self.get(f"/v1/cert/{certificate_id}{what}", as_tenant)
        if as_tenant == owner:
            assert response.status_code == 200, response.text
            self.count("own certificate read")
            return
        # An unknown id of as many digits, so even the answers' lengths must agree.
        with self.world.store.sessions() as session:
            taken = set(session.scalars(select(Certificate.id)))
        digits = len(str(certificate_id))
        unknown_id = next(
            (i for i in range(10**digits - 1, 10 ** (digits - 1) - 1, -1) if i not in taken),
            max(taken) + 1,  # every id of that length is taken: lengths may then differ
        )
        unknown = self.get(f"/v1/cert/{unknown_id}{what}", as_tenant)
        assert response.status_code == unknown.status_code == 404
        same_length = len(str(unknown_id)) == digits
        skip = set() if same_length else {"content-length"}
        assert {k: v for k, v in response.headers.items() if k not in skip} == {
            k: v for k, v in unknown.headers.items() if k not in skip
        }
        mine, theirs = response.json(), unknown.json()
        mine.pop("traceId")
        theirs.pop("traceId")
        mine_text = json.dumps(mine).replace(f"certificate {certificate_id} ", "<id>")
        assert mine_text == json.dumps(theirs).replace(f"certificate {unknown_id} ", "<id>")
        self.count("foreign certificate refused")

    @precondition(lambda self: self.certificate_rows())
    @rule(pick=INDEX, as_tenant=TENANT, reason=st.sampled_from([0, 1, "superseded"]))
    def revoke_certificate(self, pick: int, as_tenant: int, reason: Any) -> None:
        """Only the owner's request is recorded (no worker here: it stays requested)."""
        rows = self.certificate_rows()
        certificate_id, owner = rows[pick % len(rows)]
        with self.world.store.sessions() as session:
            before = session.scalar(
                select(Certificate.revoke_requested_at).where(Certificate.id == certificate_id)
            )
        response = self.post(f"/v1/cert/{certificate_id}/revoke", as_tenant, {"reason": reason})
        with self.world.store.sessions() as session:
            after = session.scalar(
                select(Certificate.revoke_requested_at).where(Certificate.id == certificate_id)
            )
        if as_tenant == owner:
            assert response.status_code == 200, response.text
            assert after is not None
        else:
            assert response.status_code == 404, response.text
            assert after == before, "another tenant's revoke request was recorded"

    # --- HTTP-01 ---------------------------------------------------------------------------------
    @precondition(lambda self: any(info.order_id is not None for info in self.codes))
    @rule(pick=INDEX)
    def present_key_authorization(self, pick: int) -> None:
        """A key authorization stored for an order's host, as the worker stores it."""
        orders = self.orders()
        info = orders[pick % len(orders)]
        host = base_name(info.domains[0])
        token = secrets.token_urlsafe(16)
        value = f"{token}.{secrets.token_urlsafe(32)}"
        with transaction(self.world.store.sessions) as session:
            session.add(
                ChallengeRecord(
                    order_id=info.order_id,
                    kind=http01_store.HTTP01_KIND,
                    name=http01_store.record_name(host, token),
                    value=value,
                    authz_url=f"https://ca.test/authz/{token}",
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
        self.challenges.append(HttpChallenge(host, token, value, info.owner, info.order_id))

    @rule(base=INDEX, owner=st.one_of(st.none(), TENANT))
    def bind_host(self, base: int, owner: int | None) -> None:
        """A host verified through the host-only block (or released by the operator)."""
        host = self.bases[base % len(self.bases)]
        with transaction(self.world.store.sessions) as session:
            if owner is None:
                http01_store.release_host(session, host)
                self.bindings.pop(host, None)
            else:
                bound = http01_store.claim_host(session, host, self.tenants[owner].id)
                # The first tenant keeps the host: claiming a bound host changes nothing.
                expected = self.bindings.setdefault(host, owner)
                assert bound == self.tenants[expected].id

    @precondition(lambda self: self.challenges)
    @rule(pick=INDEX, via=st.one_of(st.none(), TENANT), host_case=st.booleans())
    def ask_responder(self, pick: int, via: int | None, host_case: bool) -> None:
        challenge = self.challenges[pick % len(self.challenges)]
        host = challenge.host.upper() if host_case else challenge.host
        if via is None:
            path = f"/v1/dv/{host}/{challenge.token}"
            serves = self.bindings.get(challenge.host) == challenge.owner
        else:
            path = f"/v1/dv/{self.tenants[via].handle}/{host}/{challenge.token}"
            serves = via == challenge.owner
        # Only running orders' material is served (a finished or stopped order's never is).
        with self.world.store.sessions() as session:
            state = session.scalar(select(Order.state).where(Order.id == challenge.order_id))
        serves = serves and state == "pending"
        response = self.get(path, None)
        if serves:
            assert response.status_code == 200 and response.text == challenge.key_authorization
        else:
            assert response.status_code == 404
            assert challenge.key_authorization not in response.text

    # --- the database ----------------------------------------------------------------------------
    @invariant()
    def no_acme_order_for_names_of_another_tenant(self) -> None:
        assert self.unowned_acme_orders == []

    # Runs share the database; each run's invariants look at its own tenants' rows only, so a
    # failure in one run cannot make the next runs fail too (and confuse the shrinker).
    def run_tenant_ids(self) -> list[int]:
        return [tenant.id for tenant in self.tenants]

    @invariant()
    def txt_values_only_under_the_order_tenants_own_labels(self) -> None:
        with self.world.store.sessions() as session:
            rows = session.execute(
                select(ChallengeRecord.name, Order.tenant_id, Order.domains)
                .join(Order, Order.id == ChallengeRecord.order_id)
                .where(ChallengeRecord.kind == "dns-01", Order.tenant_id.in_(self.run_tenant_ids()))
            ).all()
            for label, tenant_id, domains in rows:
                delegation = session.scalar(select(Delegation).where(Delegation.label == label))
                assert delegation is not None, f"TXT under {label}, which no delegation has"
                assert delegation.tenant_id == tenant_id, "TXT under another tenant's label"
                assert delegation.base_name in {base_name(d) for d in domains.split(",")}

    @invariant()
    def codes_and_orders_belong_to_one_tenant(self) -> None:
        ids = self.run_tenant_ids()
        with self.world.store.sessions() as session:
            for code, order in session.execute(
                select(VerificationCode, Order)
                .join(Order, Order.id == VerificationCode.order_id)
                .where(VerificationCode.tenant_id.in_(ids) | Order.tenant_id.in_(ids))
            ).all():
                assert code.tenant_id == order.tenant_id, "a code started another tenant's order"
            orphans = session.scalars(
                select(Order.id).where(
                    Order.tenant_id.in_(ids),
                    ~Order.id.in_(
                        select(VerificationCode.order_id).where(
                            VerificationCode.order_id.is_not(None)
                        )
                    ),
                )
            ).all()
            assert orphans == [], "an order that no code of its tenant started"

    def teardown(self) -> None:
        # Names of finished runs answer NXDOMAIN again; their rows stay (invariants cover all).
        for base in self.bases:
            self.world.fake_dns.data.cnames.pop(f"_acme-challenge.{base}", None)


# Sequences run on one database: the invariants' queries read more of it the more runs it
# holds, so the deep run (10,000 sequences) would slow down quadratically on a single one.
SEQUENCES_PER_WORLD = 500
# A long run says how far it got: a failing sequence ends the run at once (no shrinking), so
# each line vouches for every sequence before it.
PROGRESS_EVERY = 100


@pytest.fixture
def machines(
    world: World, tmp_path_factory: pytest.TempPathFactory, pebble: PebbleInstance
) -> Iterator[Callable[[], IsolationMachine]]:
    """The machine factory: machines run in ``world``, then every SEQUENCES_PER_WORLD
    sequences in a fresh one (a new database, fake DNS server and app; the same Pebble)."""
    made = 0
    opened = contextlib.ExitStack()
    started = time.monotonic()

    def machine() -> IsolationMachine:
        nonlocal made
        if made and made % PROGRESS_EVERY == 0:
            print(
                f"tenant isolation: {made} sequences run in {time.monotonic() - started:.0f} s,"
                f" no violation; reached {IsolationMachine.reached}",
                flush=True,
            )
        if made and made % SEQUENCES_PER_WORLD == 0:
            opened.close()
            fresh = open_world(tmp_path_factory.mktemp("isolation"), pebble)
            IsolationMachine.world = opened.enter_context(fresh)
        made += 1
        return IsolationMachine()

    IsolationMachine.world = world
    with opened:
        yield machine
    IsolationMachine.world = world


@pytest.mark.deep
def test_tenants_never_see_or_use_each_others_names_codes_and_certificates(
    machines: Callable[[], IsolationMachine],
) -> None:
    IsolationMachine.reached = {}
    first_run = next(RUNS)
    run_state_machine_as_test(
        machines,
        settings=settings(
            max_examples=at_depth(ci=30, deep=10_000),
            stateful_step_count=25,
            deadline=None,
            database=None,
            # No shrinking: each step talks to a real CA, so shrinking a failure takes minutes;
            # the failing run's steps (at most 25) are printed as they are.
            phases=[Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    # The exploration reached the interesting places, not only the refusals.
    reached = IsolationMachine.reached
    print(f"tenant isolation: {next(RUNS) - first_run - 1} machines started, reached {reached}")
    for what in (
        "code",
        "issued by the CA",
        "refused by the ownership check",
        "webhook",
        "post api order",
        "agent preparse",
        "agent foreign code",
        "own certificate read",
        "foreign certificate refused",
    ):
        assert reached.get(what, 0) > 0, f"never reached: {what} ({reached})"


# --- at rest and in the log ------------------------------------------------------------------


def issued_order(world: World, tenant: int = 0) -> tuple[IsolationMachine, CodeInfo, str]:
    """A machine whose tenant ``tenant`` got a certificate from Pebble; its key PEM too."""
    IsolationMachine.world = world
    machine = IsolationMachine()
    machine.delegate(0, tenant)
    machine.order_own_names(tenant, "ECC")
    info = machine.codes[-1]
    with world.store.sessions() as session:
        order = session.get(Order, info.order_id)
        assert order is not None and order.state == "issued", order and order.reason
        assert order.key_encrypted is not None
        key = world.store.box.decrypt(order.key_encrypted, order_key_owner(order.id)).decode()
    return machine, info, key


def database_bytes(world: World) -> bytes:
    # SQLite may hold recent pages in its write-ahead log: read both files.
    files = [world.database, world.database.with_name(world.database.name + "-wal")]
    return b"".join(path.read_bytes() for path in files if path.exists())


def test_tokens_and_keys_are_stored_only_as_digests_and_ciphertext(world: World) -> None:
    """Someone who copies the database gets no token, no private key and no KEK."""
    machine, _, key = issued_order(world)
    stored = database_bytes(world)
    for tenant in machine.tenants:
        assert tenant.token.encode() not in stored
        # The scan does see the tokens table: the digest is there.
        assert tenants.token_digest(tenant.token).encode() in stored
    assert b"PRIVATE KEY" not in stored
    assert pem_body(key).encode() not in stored
    for encoded in (world.kek, base64.b64encode(world.kek), world.kek.hex().encode()):
        assert encoded not in stored


def test_a_key_moved_to_another_tenants_order_does_not_decrypt(world: World) -> None:
    """The ciphertext is bound to its order (AES-GCM associated data): a row edited to carry
    tenant 0's key under tenant 1's order yields nothing to tenant 1."""
    machine, theirs, key = issued_order(world, tenant=0)
    machine.delegate(1, 1)
    machine.order_own_names(1, "ECC")
    mine = machine.codes[-1]
    assert mine.owner == 1 and mine.order_id is not None and theirs.order_id is not None
    with transaction(world.store.sessions) as session:
        victim = session.get(Order, theirs.order_id)
        thief = session.get(Order, mine.order_id)
        assert victim is not None and thief is not None and thief.state == "issued"
        blob = victim.key_encrypted
        assert blob is not None
        with pytest.raises(InvalidTag):
            world.store.box.decrypt(blob, order_key_owner(thief.id))
        thief.key_encrypted = blob
    response = world.client.get(
        "/v1/cert/apply",
        params={"code": mine.code},
        headers={TOKEN_HEADER: machine.tenants[1].token},
    )
    # It fails closed: an internal error (logged with its traceId), no key.
    assert response.status_code == 500
    assert pem_body(key) not in response.text and "PRIVATE KEY" not in response.text


def test_no_token_code_or_key_reaches_the_log(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    machine, info, key = issued_order(world)
    machine.apply_own_code(0, "ECC")  # the owner reads the certificate and key
    machine.apply_foreign_code(0, 1, "as-is")  # another tenant tries the code
    machine.delegate(1, 2)
    machine.order_then_lose_a_name(2, 1, 0)  # an order refused by the ownership check
    for token in ("0" * 32, "not-a-token"):
        world.client.get(
            "/v1/cert/dv", params={"domains": info.domains[0]}, headers={TOKEN_HEADER: token}
        )
    # Everything logged on the server side: certok, the ACME library (at DEBUG it logs whole
    # JWS payloads), SQLAlchemy, asyncio. Not httpx: here that is the test's own client
    # logging the URLs it requests (certok serves with uvicorn's access log off).
    logged = "\n".join(
        record.getMessage() + (record.exc_text or "")
        for record in caplog.records
        if not record.name.startswith("httpx")
    )
    assert "issued" in logged and "failed" in logged  # the log was captured
    secrets_ = [tenant.token for tenant in machine.tenants]
    secrets_ += [code.code for code in machine.codes]
    secrets_ += [pem_body(key), base64.b64encode(world.kek).decode(), world.kek.hex()]
    for secret in secrets_:
        assert secret not in logged
    assert "PRIVATE KEY" not in logged


def test_a_key_authorization_stops_being_served_when_the_worker_ends_its_order(
    world: World,
) -> None:
    """Found by the deep run (4,100 sequences in): a key authorization stored for a pending
    order, then the order failed by the worker (its name changed hands). The worker drops the
    order's challenge material, so the responder answers 404 even through the owner's handle;
    the machine expected it served."""
    IsolationMachine.world = world
    machine = IsolationMachine()
    machine.delegate(0, 0)
    machine.dv_for_own_names(0, wildcard=False)
    machine.apply_own_code(0, "ECC")  # pending: no worker step yet
    machine.present_key_authorization(0)
    (challenge,) = machine.challenges
    path = f"/v1/dv/{machine.tenants[0].handle}/{challenge.host}/{challenge.token}"
    assert world.client.get(path).text == challenge.key_authorization
    machine.move_a_delegation_then_work(0, 0, None)  # the CNAME is removed: the order fails
    with world.store.sessions() as session:
        order = session.get(Order, challenge.order_id)
        assert order is not None and order.state == "failure", order and order.state
    assert world.client.get(path).status_code == 404
    assert machine.challenges == []  # the machine knows it is no longer served
