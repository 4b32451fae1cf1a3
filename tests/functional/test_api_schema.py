"""Schemathesis against certok's own OpenAPI document, in process, against the real app.

The document (``GET /v1/openapi.json``, from ``certok/api/openapi.py``) is the contract an
httpsok client codes against. Schemathesis generates requests from it, valid ones and
deliberately invalid ones, sends them to the real Starlette app (ASGI, no socket) over a real
SQLite database, and checks every answer against the same document: the status code is one
it lists, the body matches the schema listed for that status, and nothing is ever a 5xx.

Tokens are chosen by the test, not by Schemathesis: mostly a valid token (so requests get
past authentication and reach the parameters), sometimes none, a malformed one, an unknown
one, a revoked one or a disabled tenant's; those must be 401, the valid ones never.

``dv`` checks CNAMEs through a small authoritative server on loopback
(``dnsfake_server.FakeNameserver``) that answers at once, so one name is delegated and
``dv`` can answer with a code; ``apply`` is also asked about codes that exist in every
state (pending, issued, failed, expired, another tenant's), since random codes only ever
reach the 404 branch.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import build_api_services, build_checks
from certok.certificates.profiles import ProfileCatalog
from certok.crypto import SecretBox
from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import Order
from certok.db.sessions import make_session_factory
from certok.domains.delegations import compute_label
from certok.orders.codes import issue_code
from certok.orders.service import order_key_owner, redeem_code
from certok.persistence import Store
from certok.ratelimit import RateLimiter
from certok.settings import Settings
from certok.tenants import service as tenants
from tests.depth import at_depth
from tests.functional.dnsfake_server import FakeNameserver
from tests.kit.certs import FakeCa, add_certificate, self_signed
from tests.kit.dns import CERTOK_ZONE

pytestmark = pytest.mark.timeout(120)

CUSTOMER = "customer.test"
LABEL_KEY = b"schema-test-label-key-0123456789"
TOKEN_HEADER = "httpsok-token"
ENUM_PARAMETERS = ("type", "algorithm", "issuer")


def documented_enum(case: Case, name: str) -> list[str]:
    for parameter in case.operation.definition.raw.get("parameters", []):
        if parameter["name"] == name:
            return list(parameter["schema"].get("enum", []))
    return []


def documented_leniency(case: Case) -> bool:
    """An enum value in another case than the document's: its descriptions say
    "case-insensitive", so certok accepts it and the document allows that."""
    for name in ENUM_PARAMETERS:
        value = (case.query or {}).get(name)
        enum = documented_enum(case, name)
        lowered = [choice.lower() for choice in enum]
        if isinstance(value, str) and value not in enum and value.lower() in lowered:
            return True
    return False


def undocumented_leniency(case: Case) -> bool:
    """An empty or space-padded enum value: certok takes it as the default (or strips it),
    the document does not say so. test_blank_enum_values_are_refused_as_documented tracks it."""
    return any(
        isinstance(value, str) and (value.strip() == "" or value != value.strip())
        for name, value in (case.query or {}).items()
        if name in ENUM_PARAMETERS
    )


def negative_data_rejected(ctx: Any, response: Any, case: Case) -> bool | None:
    """Schemathesis' negative_data_rejection, minus the two leniencies above."""
    if documented_leniency(case) or undocumented_leniency(case):
        return None
    return negative_data_rejection(ctx, response, case)


# What Schemathesis verifies on every answer: the contract, no server errors, and invalid
# requests refused. Not listed: positive_data_acceptance (the document types `domains` as a
# string; which strings are domain names is for certok to say, with a documented 400),
# ignored_auth (this test sets the token itself and checks every kind of bad token is a 401,
# which that check cannot tell from a token it generated), and the checks that follow links
# between operations (the document has none).
CONTRACT_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ_CHECKS = [*CONTRACT_CHECKS, negative_data_rejected]


@dataclass
class Api:
    app: Starlette
    schema: Any  # schemathesis' OpenApiSchema
    store: Store
    good_tokens: dict[str, str]  # tenant → token
    bad_tokens: dict[str, str | None]  # kind → token (None: no header at all)
    codes: dict[str, str]  # state → alpha's code in that state (plus beta's)


def build_app(store: Store, resolver_port: int, tmp_path: Path, **services: Any) -> Starlette:
    settings = Settings(
        data_dir=tmp_path,
        dns_zone=CERTOK_ZONE,
        resolvers=[f"127.0.0.1:{resolver_port}"],
        resolver_timeout_seconds=1.0,
        apply_wait_seconds=0,
        # the generated requests are the load: limits are tested on their own below
        rate_limit_dv_per_minute=0,
        rate_limit_apply_per_minute=0,
        rate_limit_unverified_tokens_per_minute=0,
    )
    return create_app(
        build_api_services(
            settings,
            store,
            build_checks(settings, store, label_key=LABEL_KEY),
            waiters=OrderWaiters(),
            wake_worker=lambda: None,  # no worker: orders stay pending unless a test says
            # The issuers' meta.profiles without asking a CA (no network in this test).
            profiles=ProfileCatalog(lambda issuer: {"classic": "90 days", "tlsserver": "45 days"}),
            **services,
        )
    )


# The seeded codes outlive the module's run: at the deep depth the tests before the one that
# redeems the fresh code take longer than an hour on a busy machine.
SEEDED_CODE_TTL_SECONDS = 7 * 24 * 3600


def seed_codes(store: Store, ids: dict[str, int]) -> dict[str, str]:
    """Alpha's codes in every state an order can be in, and one of beta's."""
    alpha = ids["alpha"]
    ttl = SEEDED_CODE_TTL_SECONDS
    with transaction(store.sessions) as session:
        codes = {
            state: issue_code(session, alpha, "dns", [f"{state}.{CUSTOMER}"], ttl)
            for state in ("fresh", "pending", "issued", "failure")
        }
        codes["expired"] = issue_code(session, alpha, "dns", [f"old.{CUSTOMER}"], -1)
        codes["other-tenant"] = issue_code(session, ids["beta"], "dns", [f"b.{CUSTOMER}"], ttl)
        orders = {}
        for state in ("pending", "issued", "failure"):
            orders[state], _ = redeem_code(
                session, alpha, codes[state], algorithm="ECC", issuer="google", deadline_seconds=60
            )
    with transaction(store.sessions) as session:
        issued = session.get(Order, orders["issued"])
        assert issued is not None
        certificate, key = self_signed([f"issued.{CUSTOMER}"])
        issued.state = "issued"
        issued.certificate_pem = certificate
        issued.not_before = dt.datetime.now(dt.UTC)
        issued.not_after = issued.not_before + dt.timedelta(days=90)
        issued.key_encrypted = store.box.encrypt(key.encode(), order_key_owner(issued.id))
        failed = session.get(Order, orders["failure"])
        assert failed is not None
        failed.state = "failure"
        failed.reason = "caa: CAA record forbids issuance"
    return codes


@pytest.fixture(scope="module")
def fake_dns() -> Iterator[FakeNameserver]:
    with FakeNameserver(zones=[CUSTOMER, CERTOK_ZONE]) as server:
        yield server


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, fake_dns: FakeNameserver) -> Iterator[Api]:
    tmp_path = tmp_path_factory.mktemp("api-schema")
    engine = make_engine(f"sqlite:///{tmp_path / 'certok.db'}")
    upgrade(engine)
    store = Store(engine, make_session_factory(engine), SecretBox(secrets.token_bytes(32)))
    ids: dict[str, int] = {}
    good: dict[str, str] = {}
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta", "gone"):
            ids[name] = tenants.create_tenant(session, name).id
            good[name] = tenants.issue_token(session, name)
        revoked = tenants.issue_token(session, "alpha")
        tenants.revoke_token(session, revoked)
        tenants.set_disabled(session, "gone", True)
    disabled = good.pop("gone")
    # Certificate records of both tenants, so generated ids hit real ones (1..6).
    ca = FakeCa.create()
    now = dt.datetime.now(dt.UTC)
    for serial in range(1, 7):
        owner = ids["alpha"] if serial % 2 else ids["beta"]
        add_certificate(
            store.sessions, store.box, ca, owner, [f"c{serial}.{CUSTOMER}"],
            not_before=now - dt.timedelta(days=serial * 20), serial=serial,
        )  # fmt: skip
    # alpha has delegated customer.test: dv for it and its wildcard answers with a code.
    label = compute_label(LABEL_KEY, ids["alpha"], CUSTOMER)
    fake_dns.add_cname(f"_acme-challenge.{CUSTOMER}", f"{label}.{CERTOK_ZONE}")
    app = build_app(store, fake_dns.port, tmp_path)
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", app)
    bad: dict[str, str | None] = {
        "missing": None,
        "malformed": "not-a-token",
        "unknown": secrets.token_hex(16),
        "revoked": revoked,
        "disabled-tenant": disabled,
    }
    yield Api(app, schema, store, good, bad, seed_codes(store, ids))
    engine.dispose()


# --- the token a case is sent with --------------------------------------------------------------


@dataclass(frozen=True)
class TokenChoice:
    kind: str  # "alpha", "beta", or a kind of bad token
    valid: bool


TOKEN_CHOICES = st.one_of(
    st.sampled_from([TokenChoice("alpha", True)] * 4 + [TokenChoice("beta", True)]),
    st.sampled_from(
        [
            TokenChoice(kind, False)
            for kind in ("missing", "malformed", "unknown", "revoked", "disabled-tenant")
        ]
    ),
    # Arbitrary header text (printable ASCII: the rest cannot travel in an HTTP header).
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=64).map(
        lambda text: TokenChoice("text:" + text, False)
    ),
)


def send(api: Api, case: Case, token: TokenChoice) -> Any:
    """Send the case with the chosen token; check it against the document; return the answer."""
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != TOKEN_HEADER}
    if token.valid:
        case.headers[TOKEN_HEADER] = api.good_tokens[token.kind]
    elif token.kind.startswith("text:"):
        case.headers[TOKEN_HEADER] = token.kind.removeprefix("text:")
    elif api.bad_tokens[token.kind] is not None:
        case.headers[TOKEN_HEADER] = api.bad_tokens[token.kind]
    response = case.call()
    case.validate_response(response, checks=FUZZ_CHECKS)
    # A text that happens to be a valid token is a valid token (it never is, in 2^128).
    if not token.valid:
        assert response.status_code == 401, (token, response.status_code, response.text)
    else:
        assert response.status_code != 401, (token, response.text)
    return response


def fuzz(strategy: st.SearchStrategy[Case], examples: int, check: Callable[[Case], None]) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=strategy)
    def run(case: Case) -> None:
        check(case)

    run()


def both_modes(operation: Any, **fixed: Any) -> st.SearchStrategy[Case]:
    return st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE, **fixed),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE, **fixed),
    )


# --- the tests ----------------------------------------------------------------------------------


def test_the_document_is_served_and_names_both_operations(api: Api) -> None:
    operations = {op.ok().label for op in api.schema.get_all_operations()}
    assert operations == {
        "GET /v1/cert/dv",
        "GET /v1/cert/apply",
        "GET /v1/cert/list",
        "GET /v1/cert/{id}",
        "GET /v1/cert/{id}/fullchain.pem",
        "GET /v1/cert/{id}/privkey.pem",
        "POST /v1/cert/{id}/revoke",
        # The POST API and webhooks (test_event_operations_get_documented_answers below).
        *EVENT_OPERATIONS,
        "GET /v1/agents/hosts",
        "GET /v1/agents/hosts/{uuid}/log",
    }


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/cert/list", "GET"),
        ("/v1/cert/{id}", "GET"),
        ("/v1/cert/{id}/fullchain.pem", "GET"),
        ("/v1/cert/{id}/privkey.pem", "GET"),
        ("/v1/cert/{id}/revoke", "POST"),
    ],
)
def test_certificate_routes_get_documented_answers(api: Api, path: str, method: str) -> None:
    operation = api.schema[path][method]
    statuses: list[int] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=both_modes(operation), token=TOKEN_CHOICES)
    def run(case: Case, token: TokenChoice) -> None:
        identifier = (case.path_parameters or {}).get("id", 1)
        if not str(identifier).isdigit():
            # No route has such a path (ids are whole numbers): 404 before any token check.
            response = case.call()
            assert response.status_code == 404, response.text
            case.validate_response(response, checks=FUZZ_CHECKS)
            return
        statuses.append(send(api, case, token).status_code)

    run()
    assert 401 in statuses and any(status < 500 for status in statuses), statuses


@pytest.mark.deep
@pytest.mark.parametrize("path", ["/v1/cert/dv", "/v1/cert/apply"])
def test_generated_requests_get_documented_answers(api: Api, path: str) -> None:
    operation = api.schema[path]["GET"]
    statuses: list[int] = []

    @settings(
        max_examples=at_depth(ci=150, deep=15_000),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=both_modes(operation), token=TOKEN_CHOICES)
    def run(case: Case, token: TokenChoice) -> None:
        statuses.append(send(api, case, token).status_code)

    run()
    print(f"schemathesis: {path}: {len(statuses)} requests, statuses {sorted(set(statuses))}")
    # The run reached past authentication into the parameters, not only the 401 branch.
    assert 401 in statuses and 400 in statuses, sorted(set(statuses))
    if path == "/v1/cert/apply":
        assert 404 in statuses  # random codes are unknown codes


def test_dv_for_delegated_and_undelegated_names_gets_documented_answers(api: Api) -> None:
    operation = api.schema["/v1/cert/dv"]["GET"]
    seen: dict[str, set[bool]] = {"dns": set(), "http": set()}
    names = st.sampled_from(
        [
            f"{CUSTOMER},*.{CUSTOMER}",  # delegated to alpha: a code for alpha, not for beta
            f"www.{CUSTOMER}",  # not delegated
            f"WWW.{CUSTOMER},{CUSTOMER}",
            "bücher.example.com",
        ]
    )

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        domains=names,
        kind=st.sampled_from(["dns", "http", "DNS", "Http"]),
        tenant=st.sampled_from(["alpha", "beta"]),
    )
    def run(domains: str, kind: str, tenant: str) -> None:
        case = operation.Case(query={"domains": domains, "type": kind})
        response = send(api, case, TokenChoice(tenant, True))
        if "*" in domains and kind.lower() == "http":
            assert response.status_code == 400  # wildcards need dns
            return
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        seen[data["type"]].add(data["valid"])
        delegated = domains == f"{CUSTOMER},*.{CUSTOMER}" and kind.lower() == "dns"
        assert data["valid"] is (delegated and tenant == "alpha"), data
        assert (data["code"] is not None) is data["valid"]

    run()
    assert seen["dns"] == {True, False} and seen["http"] == {False}


@pytest.mark.deep
@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("fresh", 200),
        ("pending", 200),
        ("issued", 200),
        ("failure", 200),
        ("expired", 410),
        ("other-tenant", 404),
    ],
)
def test_apply_with_codes_in_every_state_gets_documented_answers(
    api: Api, state: str, status: int
) -> None:
    operation = api.schema["/v1/cert/apply"]["GET"]
    code = api.codes[state]

    def check(case: Case) -> None:
        response = send(api, case, TokenChoice("alpha", True))
        # Parameters Schemathesis made invalid (algorithm, issuer) are refused first.
        assert response.status_code in (status, 400), response.text
        if response.status_code != 200:
            return
        assert response.headers["cache-control"] == ["no-store"]
        data = response.json()["data"]
        expected = {"fresh": "pending", "pending": "pending"}.get(state, state)
        assert data["status"] == expected
        if state == "issued":
            assert data["certificate"].startswith("-----BEGIN CERTIFICATE-----")
            assert data["privateKey"].startswith("-----BEGIN EC PRIVATE KEY-----")

    fuzz(both_modes(operation, query={"code": code}), at_depth(ci=40, deep=2_000), check)


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1/cert/dv", {"domains": f"www.{CUSTOMER}", "type": ""}),
        ("/v1/cert/dv", {"domains": f"www.{CUSTOMER}", "type": " dns"}),
        ("/v1/cert/apply", {"code": "pending", "algorithm": ""}),
        ("/v1/cert/apply", {"code": "pending", "issuer": " google "}),
    ],
)
def test_blank_enum_values_are_refused_as_documented(
    api: Api, path: str, query: dict[str, str]
) -> None:
    if "code" in query:
        query = {**query, "code": api.codes[query["code"]]}
    case = api.schema[path]["GET"].Case(query=query)
    response = send(api, case, TokenChoice("alpha", True))
    assert response.status_code == 400, response.text


def test_rate_limited_answers_are_documented(
    api: Api, fake_dns: FakeNameserver, tmp_path: Path
) -> None:
    """429 is a documented answer of both operations, and its body and headers conform."""
    limited = build_app(
        api.store,
        fake_dns.port,
        tmp_path,
        limiter=RateLimiter({"dv": 2, "apply": 2}),
    )
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", limited)
    for path, query in [
        ("/v1/cert/dv", {"domains": f"www.{CUSTOMER}"}),
        ("/v1/cert/apply", {"code": api.codes["pending"]}),
    ]:
        operation = schema[path]["GET"]
        statuses = []
        for _ in range(4):
            case = operation.Case(query=query, headers={TOKEN_HEADER: api.good_tokens["alpha"]})
            response = case.call()
            case.validate_response(response, checks=CONTRACT_CHECKS)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"][0]) >= 1
                assert response.json()["code"] == 1429
        assert statuses == [200, 200, 429, 429], (path, statuses)


def test_the_contract_checks_can_fail(api: Api) -> None:
    """Answers the document does not allow are caught, so a passing run means something."""
    operation = api.schema["/v1/cert/apply"]["GET"]

    def unknown_code_answer() -> tuple[Case, Any]:
        case = operation.Case(
            query={"code": "0" * 16}, headers={TOKEN_HEADER: api.good_tokens["alpha"]}
        )
        response = case.call()
        assert response.status_code == 404
        return case, response

    case, response = unknown_code_answer()
    case.validate_response(response, checks=CONTRACT_CHECKS)  # as served: it conforms
    case, response = unknown_code_answer()
    response.status_code = 418  # a status the document does not list
    with pytest.raises(FailureGroup, match="Undocumented status code"):
        case.validate_response(response, checks=CONTRACT_CHECKS)
    case, response = unknown_code_answer()
    response.content = b'{"code": "1404", "msg": "x", "data": null, "traceId": null}'
    with pytest.raises(FailureGroup, match="Response violates schema"):
        case.validate_response(response, checks=CONTRACT_CHECKS)


# --- the POST API and webhooks (certok/api/post_api.py, certok/api/webhooks.py) ---------------

EVENT_OPERATIONS = {
    "POST /v1/cert/dv": "OpenApiKey",
    "POST /v1/cert/apply": "OpenApiKey",
    "GET /v1/cert/apply/{id}": "OpenApiKey",
    "GET /v1/webhooks": TOKEN_HEADER,
    "POST /v1/webhooks": TOKEN_HEADER,
    "DELETE /v1/webhooks/{id}": TOKEN_HEADER,
    "POST /v1/webhooks/{id}/rotate": TOKEN_HEADER,
    "POST /v1/webhooks/{id}/test": TOKEN_HEADER,
    "GET /v1/webhooks/{id}/deliveries": TOKEN_HEADER,
}


@pytest.mark.parametrize("label", sorted(EVENT_OPERATIONS))
def test_event_operations_get_documented_answers(api: Api, label: str) -> None:
    """Generated requests (valid and invalid bodies and ids) with a valid token, and with
    none: every answer is one the document lists, in its schema, never a 5xx."""
    method, path = label.split(" ", 1)
    operation = api.schema[path][method]
    header = EVENT_OPERATIONS[label]
    statuses: list[int] = []

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=both_modes(operation), with_token=st.booleans())
    def run(case: Case, with_token: bool) -> None:
        case.headers = {
            k: v
            for k, v in (case.headers or {}).items()
            if k.lower() not in (TOKEN_HEADER, "openapikey")
        }
        if with_token:
            case.headers[header] = api.good_tokens["alpha"]
        response = case.call()
        case.validate_response(response, checks=CONTRACT_CHECKS)
        assert (response.status_code == 401) is (not with_token), response.text
        statuses.append(response.status_code)

    run()
    assert 401 in statuses and any(status != 401 for status in statuses), statuses


@pytest.mark.parametrize("path", ["/v1/agents/hosts", "/v1/agents/hosts/{uuid}/log"])
def test_agent_host_routes_get_documented_answers(api: Api, path: str) -> None:
    operation = api.schema[path]["GET"]
    statuses: list[int] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=both_modes(operation), token=TOKEN_CHOICES)
    def run(case: Case, token: TokenChoice) -> None:
        statuses.append(send(api, case, token).status_code)

    run()
    assert 401 in statuses and any(status < 500 for status in statuses), statuses
