"""httpsok.sh's `/v1/nginx` protocol in process: real app, real database (SQLite and PostgreSQL),
a real DNS server for the CNAME checks. The worker's part (the CA) is played by writing the
issued order as the worker writes it; tests/e2e/test_agent_httpsok.py runs the real script,
the real worker, Pebble and nginx."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import func, select
from starlette.testclient import TestClient

from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import build_api_services, build_checks
from certok.certificates.profiles import ProfileCatalog
from certok.certificates.records import issued_certificate, record_issued
from certok.db.engine import transaction
from certok.db.models import (
    AgentLogEntry,
    Certificate,
    ManagedCertificate,
    Order,
    VerificationCode,
)
from certok.domains.delegations import compute_label, ensure_delegations
from certok.orders.service import order_key_owner
from certok.persistence import Store
from certok.settings import Settings
from certok.tenants import service as tenants
from tests.functional.dnsfake_server import FakeNameserver
from tests.kit.certs import FakeCa
from tests.kit.dns import CERTOK_ZONE

CUSTOMER = "customer.test"
LABEL_KEY = b"k" * 32
UUID = "4c4c4544-0042-3510-8051-b4c04f384d32"
MARKER = "CONFIG-MARKER-5d0c2a9e"

CONFIG = f"""# configuration file /etc/nginx/nginx.conf:
# {MARKER} in a comment
http {{
\tinclude conf.d/*.conf;
\tadd_header X-Secret "{MARKER}";
}}

# configuration file /etc/nginx/conf.d/site.conf:
server {{
    listen 443 ssl;
    server_name www.customer.test shop.customer.test _ 10.0.0.1;
    ssl_certificate /etc/nginx/ssl/site.pem;
    ssl_certificate_key /etc/nginx/ssl/site.key;
    location / {{ proxy_pass http://{MARKER}.internal; }}
}}
server {{
    listen 443 ssl;
    server_name www.customer.test;
    ssl_certificate /etc/nginx/ssl/site.pem;
    ssl_certificate_key /etc/nginx/ssl/site.key;
}}
server {{
    listen 443 ssl;
    server_name other.example.test;
    ssl_certificate /etc/nginx/ssl/other.pem;
    ssl_certificate_key /etc/nginx/ssl/other.key;
}}
"""


@dataclass
class Agent:
    """httpsok.sh's side of the protocol: its headers, its calls."""

    client: TestClient
    token: str
    uuid: str = UUID

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "text/plain",
            "httpsok-token": self.token,
            "httpsok-version": "1.18.2",
            "os-name": "Debian GNU/Linux 12 (bookworm)",
            "nginx-version": "nginx/1.22.1",
            "nginx-config-home": "/etc/nginx",
            "nginx-config": "/etc/nginx/nginx.conf",
            "trace-id": "0" * 32,
            "mode": "normal",
            "httpsok-uuid": self.uuid,
        }

    def get(self, path: str) -> Any:
        return self.client.get("/v1/nginx" + path, headers=self.headers())

    def preparse(self, text: str) -> Any:
        return self.client.post("/v1/nginx/preparse", content=text, headers=self.headers())

    def lines(self, text: str = CONFIG) -> dict[str, tuple[str, str]]:
        response = self.preparse(text)
        assert response.status_code == 200, response.text
        result = {}
        for row in response.text.splitlines():
            code, cert, key = row.split(",")
            result[cert] = (code, key)
        return result

    def upload(self, code: str, cert: bytes, key: bytes) -> Any:
        headers = {k: v for k, v in self.headers().items() if k != "Content-Type"}
        return self.client.post(
            f"/v1/nginx/upload?code={code}",
            files={"cert": ("site.pem", cert), "certKey": ("site.key", key)},
            headers=headers,
        )

    def check(self, code: str) -> list[str]:
        return self.get(f"/check?code={code}").text.splitlines()

    def log(self, kind: str, code: str, message: str) -> Any:
        return self.client.put(
            f"/v1/nginx/log/{kind}?code={code}", content=message, headers=self.headers()
        )


@dataclass
class Harness:
    store: Store
    client: TestClient
    tenant_ids: dict[str, int]
    tokens: dict[str, str]
    dns: FakeNameserver
    wakes: list[int]

    def agent(self, tenant: str = "alpha", uuid: str = UUID) -> Agent:
        return Agent(self.client, self.tokens[tenant], uuid)

    def delegate(self, tenant: str, *names: str, cname: bool = True) -> None:
        tenant_id = self.tenant_ids[tenant]
        with transaction(self.store.sessions) as session:
            ensure_delegations(session, tenant_id, list(names), LABEL_KEY)
        for name in names:
            owner = f"_acme-challenge.{name}"
            if cname:
                label = compute_label(LABEL_KEY, tenant_id, name)
                self.dns.data.cnames[owner] = f"{label}.{CERTOK_ZONE}"
            else:
                self.dns.data.cnames.pop(owner, None)

    def issue_pending_orders(self, days: int = 90) -> list[tuple[str, str]]:
        """The worker's last write for every pending order: (full chain, key) of each."""
        issued = []
        with transaction(self.store.sessions) as session:
            for order in session.scalars(select(Order).where(Order.state == "pending")):
                chain, key = issued_chain(order.domains.split(","), days)
                order.state = "issued"
                order.certificate_pem = chain
                order.key_encrypted = self.store.box.encrypt(
                    key.encode(), order_key_owner(order.id)
                )
                order.not_before = dt.datetime.now(dt.UTC)
                order.not_after = order.not_before + dt.timedelta(days=days)
                order.finished_at = order.not_before
                session.flush()
                # ... and its certificate record, in the same transaction as the driver does.
                record = issued_certificate(chain, order.not_before, ari=False)
                record_issued(session.connection(), order.id, record)
                issued.append((chain, key))
        return issued


def issued_chain(names: list[str], days: int) -> tuple[str, str]:
    """A leaf for `names` signed by a throwaway CA, and the CA: a full chain as a CA sends it."""
    now = dt.datetime.now(dt.UTC)
    return FakeCa.create().leaf(
        names, now, dt.timedelta(days=days), serial=x509.random_serial_number()
    )


def make_harness(
    store: Store, tmp_path: Path, profiles: ProfileCatalog | None = None, **overrides: Any
) -> Iterator[Harness]:
    """`profiles`: the issuers' meta.profiles as a stand-in serves them (by default the
    catalog reads each issuer's directory, which no test may reach)."""
    with FakeNameserver(zones=[CUSTOMER, CERTOK_ZONE]) as dns:
        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "dns_zone": CERTOK_ZONE,
            "resolvers": [f"127.0.0.1:{dns.port}"],
            "resolver_timeout_seconds": 1.0,
            "agent_check_wait_seconds": 0.2,
            "agent_preparse_max_bytes": 64 * 1024,
            "default_issuer": "letsencrypt",
        }
        values.update(overrides)
        settings = Settings(**values)
        tokens: dict[str, str] = {}
        ids: dict[str, int] = {}
        with transaction(store.sessions) as session:
            for name in ("alpha", "beta"):
                ids[name] = tenants.create_tenant(session, name).id
                tokens[name] = tenants.issue_token(session, name)
        wakes: list[int] = []
        services = build_api_services(
            settings,
            store,
            build_checks(settings, store, label_key=LABEL_KEY),
            waiters=OrderWaiters(),
            wake_worker=lambda: wakes.append(1),
        )
        if profiles is not None:
            services.profiles = profiles
        app = create_app(services)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Harness(store, client, ids, tokens, dns, wakes)


@pytest.fixture
def harness(store: Store, tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(store, tmp_path)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- the flow ----------------------------------------------------------------------------------


def test_status_and_wrong_tokens(harness: Harness) -> None:
    agent = harness.agent()
    assert agent.get("/status").text == "ok"
    for token in ("", "nope", "0" * 32):
        stranger = Agent(harness.client, token)
        answer = stranger.get("/status")
        assert answer.status_code == 401 and answer.text != "ok"
        assert answer.json()["code"] != 0
        refused = stranger.preparse(CONFIG)
        # the agent reads preparse's lines as code,cert,key: nothing to misread
        assert refused.status_code == 401 and refused.text == ""
        assert stranger.get("/check?code=abc").status_code == 401


def test_full_cycle_preparse_to_deployed(harness: Harness, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    harness.delegate("alpha", "www.customer.test", "shop.customer.test")
    agent = harness.agent()
    lines = agent.lines()
    assert set(lines) == {"/etc/nginx/ssl/site.pem", "/etc/nginx/ssl/other.pem"}
    code, key_path = lines["/etc/nginx/ssl/site.pem"]
    assert key_path == "/etc/nginx/ssl/site.key" and len(code) == 16
    assert agent.lines() == lines  # the same codes on every run

    self_chain, self_key = issued_chain(["www.customer.test"], 30)
    assert agent.upload(code, self_chain.encode(), self_key.encode()).text == "ok"

    dns_answer = agent.get("/checkDns").text.splitlines()
    assert dns_answer[0] != "3"
    assert any("skipped other.example.test: not delegated" in line for line in dns_answer)
    assert any("skipped _:" in line for line in dns_answer)

    # a new order through the normal engine; the worker is woken, the agent told to wait
    assert agent.check(code) == ["2"]
    assert harness.wakes
    with harness.store.sessions() as session:
        orders = session.scalars(select(Order)).all()
    assert [(o.domains, o.challenge_type, o.tenant_id) for o in orders] == [
        ("www.customer.test,shop.customer.test", "dns", harness.tenant_ids["alpha"])
    ]
    assert agent.check(code) == ["2"]  # the same order, not a second one
    ((chain, key),) = harness.issue_pending_orders()

    answer = agent.check(code)
    assert answer == ["1", f"{md5(chain.encode())},{md5(key.encode())}"]
    served_chain = agent.get(f"/cert/{code}.cer").content
    served_key = agent.get(f"/cert/{code}.key").content
    assert served_chain == chain.encode() and served_key == key.encode()
    assert agent.log("cert-updated-success", code, "New cert updated").text == "ok"
    assert agent.log("nginx-reload-success", code, "Nginx reload success").text == "ok"
    assert agent.get("/done?t=1").text == "ok"

    # the next run: the file on disk is certok's own for these names, not due: 3, nothing new
    agent.lines()
    assert agent.upload(code, served_chain, served_key).text == "ok"
    assert agent.check(code) == ["3"]
    with harness.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1

    # other.pem's only name is not delegated: it says so and starts nothing
    other_code = lines["/etc/nginx/ssl/other.pem"][0]
    (message,) = agent.check(other_code)
    assert "other.example.test" in message and "not delegated" in message

    listing = agent.client.get("/v1/agents/hosts", headers={"httpsok-token": agent.token})
    (host,) = listing.json()["data"]["hosts"]
    assert host["uuid"] == UUID and host["nginxVersion"] == "nginx/1.22.1"
    site = next(c for c in host["certificates"] if c["code"] == code)
    assert site["deployed"] is True and site["renewAt"] is not None
    assert {"name": "_", "reason": "the catch-all placeholder, not a name"} in site["skipped"]
    log = agent.client.get(f"/v1/agents/hosts/{UUID}/log", headers={"httpsok-token": agent.token})
    kinds = [entry["type"] for entry in log.json()["data"]["entries"]]
    assert {"preparse", "certificate-issued", "cert-updated-success", "check-dns"} <= set(kinds)

    # the configuration text was parsed and dropped: not in the database, not in the logs
    assert MARKER not in caplog.text
    assert_not_stored(harness, MARKER)
    assert self_key not in caplog.text


def assert_not_stored(harness: Harness, marker: str) -> None:
    url = harness.store.engine.url
    if url.get_backend_name() == "sqlite":
        harness.store.engine.dispose()
        data = Path(str(url.database)).read_bytes()
        for path in Path(str(url.database)).parent.glob("*.db-*"):
            data += path.read_bytes()
        assert marker.encode() not in data
        return
    with harness.store.engine.connect() as connection:
        for table in ("agent_hosts", "managed_certificates", "agent_log_entries"):
            rows = connection.exec_driver_sql(f"SELECT * FROM {table}").fetchall()
            assert marker not in repr(rows)


def test_renewal_time_reached_starts_the_next_order(store: Store, tmp_path: Path) -> None:
    # The renewal clock shifted past two thirds of a 90-day certificate.
    for harness in make_harness(store, tmp_path, clock_offset_seconds=61 * 86400):
        harness.delegate("alpha", "www.customer.test", "shop.customer.test")
        agent = harness.agent()
        code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
        assert agent.check(code) == ["2"]
        ((first_chain, first_key),) = harness.issue_pending_orders()
        assert agent.check(code)[0] == "1"  # just issued: delivered
        agent.upload(code, first_chain.encode(), first_key.encode())
        # on disk and due: a new order (the first certificate stays in place until then)
        assert agent.check(code) == ["2"]
        ((second_chain, _),) = harness.issue_pending_orders()
        assert agent.check(code)[0] == "1"
        assert agent.get(f"/cert/{code}.cer").content == second_chain.encode()
        # the renewal replaced the previous record (and its order named it for `replaces`)
        with harness.store.sessions() as session:
            first, second = session.scalars(select(Certificate).order_by(Certificate.id)).all()
            renewal = session.get(Order, second.order_id)
        assert renewal is not None and renewal.replaces_certificate_id == first.id
        assert (first.replaced_by_id, second.replaces_id) == (second.id, first.id)


def test_missing_cname_is_12_and_nothing_is_ordered(harness: Harness) -> None:
    harness.delegate("alpha", "www.customer.test")
    harness.delegate("alpha", "shop.customer.test", cname=False)
    agent = harness.agent()
    code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
    answer = agent.check(code)
    assert answer[0] == "12"
    assert "_acme-challenge.shop.customer.test" in answer[1]
    dns_answer = agent.get("/checkDns").text
    assert "CNAME: add _acme-challenge.shop CNAME " in dns_answer
    with harness.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 0


def test_unknown_and_foreign_codes_hosts_and_files_answer_alike(harness: Harness) -> None:
    harness.delegate("alpha", "www.customer.test", "shop.customer.test")
    alpha = harness.agent()
    code = alpha.lines()["/etc/nginx/ssl/site.pem"][0]
    alpha.check(code)
    harness.issue_pending_orders()
    assert alpha.check(code)[0] == "1"
    for stranger in (
        harness.agent("beta"),  # another tenant, same uuid
        harness.agent("alpha", uuid="0123456789abcdef0123456789abcdef"),  # another host
    ):
        for path in (f"/check?code={code}", "/check?code=ffffffffffffffff"):
            assert stranger.get(path).text == "13"
        unknown = stranger.get("/cert/ffffffffffffffff.cer")
        foreign = stranger.get(f"/cert/{code}.cer")
        assert (foreign.status_code, foreign.json()["msg"].replace(code, "X")) == (
            unknown.status_code,
            unknown.json()["msg"].replace("ffffffffffffffff", "X"),
        )
        assert stranger.upload(code, b"", b"").text == "13"
        assert stranger.log("nginx-test-failed", code, "x").text == "13"
    assert harness.agent("beta").get("/checkDns").text == "13"
    assert harness.agent("beta").get("/done").text == "13"
    beta_token = {"httpsok-token": harness.tokens["beta"]}
    assert harness.client.get(f"/v1/agents/hosts/{UUID}/log", headers=beta_token).status_code == (
        harness.client.get("/v1/agents/hosts/feedfeedfeedfeed/log", headers=beta_token).status_code
    )
    assert harness.client.get("/v1/agents/hosts", headers=beta_token).json()["data"] == {
        "hosts": []
    }


def test_limits_size_hosts_and_certificates(store: Store, tmp_path: Path) -> None:
    for harness in make_harness(
        store, tmp_path, agent_max_hosts_per_tenant=1, agent_max_certificates_per_host=1
    ):
        agent = harness.agent()
        too_big = agent.preparse("#" + "x" * 70_000 + "\n")
        assert too_big.status_code == 413
        assert too_big.text.count("\n") == 1 and "," not in too_big.text
        assert "agent_preparse_max_bytes" in too_big.text
        lines = agent.lines()
        assert list(lines) == ["/etc/nginx/ssl/site.pem"]
        log = agent.client.get(
            f"/v1/agents/hosts/{UUID}/log", headers={"httpsok-token": agent.token}
        )
        assert "agent_max_certificates_per_host" in log.json()["data"]["entries"][0]["message"]
        second_host = harness.agent(uuid="0123456789abcdef0123456789abcdef")
        refused = second_host.preparse(CONFIG)
        assert refused.status_code == 409 and "agent_max_hosts_per_tenant" in refused.text
        broken = agent.preparse("http { server { listen 443 ssl;\n")
        assert broken.status_code == 400 and "nginx -t" in broken.text
        assert agent.preparse("# nothing here\n").text == ""
        bad_uuid = Agent(harness.client, harness.tokens["alpha"], uuid="../etc")
        assert bad_uuid.get("/check?code=x").status_code == 400
        assert agent.log("rm-rf", "x", "x").status_code == 400


def test_concurrent_checks_start_one_order(harness: Harness) -> None:
    harness.delegate("alpha", "www.customer.test", "shop.customer.test")
    agent = harness.agent()
    code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
    answers: list[list[str]] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        answers.append(agent.check(code))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [["2"]] * 4
    with harness.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1
        (mc,) = session.scalars(
            select(ManagedCertificate).where(ManagedCertificate.code == code)
        ).all()
        assert mc.order_id is not None


def test_uninstall_forgets_the_hosts_codes(harness: Harness) -> None:
    agent = harness.agent()
    code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
    assert agent.get("/uninstall?t=1").text == "ok"
    assert agent.check(code) == ["13"]
    with harness.store.sessions() as session:
        kinds = session.scalars(select(AgentLogEntry.kind)).all()
    assert "uninstalled" in kinds


def test_a_name_added_to_the_configuration_gets_a_new_certificate(harness: Harness) -> None:
    harness.delegate("alpha", "www.customer.test", "shop.customer.test", "new.customer.test")
    agent = harness.agent()
    code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
    agent.check(code)
    ((chain, key),) = harness.issue_pending_orders()
    assert agent.check(code)[0] == "1"
    agent.lines()
    agent.upload(code, chain.encode(), key.encode())
    assert agent.check(code) == ["3"]
    # the same file now also serves new.customer.test: the next run orders a certificate
    # for the three names (and the code stays the same)
    more = CONFIG.replace("shop.customer.test _", "shop.customer.test new.customer.test _")
    assert agent.lines(more)["/etc/nginx/ssl/site.pem"][0] == code
    agent.upload(code, chain.encode(), key.encode())
    assert agent.check(code) == ["2"]
    with harness.store.sessions() as session:
        newest = session.scalars(select(Order).order_by(Order.id.desc())).first()
    assert newest is not None
    assert newest.domains == "www.customer.test,shop.customer.test,new.customer.test"


def test_a_failed_order_is_reported_and_not_retried_at_once(harness: Harness) -> None:
    harness.delegate("alpha", "www.customer.test", "shop.customer.test")
    agent = harness.agent()
    code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
    assert agent.check(code) == ["2"]
    with transaction(harness.store.sessions) as session:
        order = session.scalars(select(Order)).one()
        order.state = "failure"
        order.reason = "caa: CAA record forbids issuance"
        order.finished_at = dt.datetime.now(dt.UTC)
    for _ in range(2):
        (message,) = agent.check(code)
        assert message == "certificate order failed: caa: CAA record forbids issuance"
    with harness.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1


def test_concurrent_first_runs_of_one_host_share_its_rows(harness: Harness) -> None:
    agent = harness.agent()
    answers: list[dict[str, tuple[str, str]]] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        answers.append(agent.lines())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and all(answer == answers[0] for answer in answers)
    with harness.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ManagedCertificate)) == 2


def test_an_uninstalled_host_frees_its_place(store: Store, tmp_path: Path) -> None:
    for harness in make_harness(store, tmp_path, agent_max_hosts_per_tenant=1):
        first = harness.agent()
        first.lines()
        second = harness.agent(uuid="0123456789abcdef0123456789abcdef")
        assert second.preparse(CONFIG).status_code == 409
        assert first.get("/uninstall?t=1").text == "ok"
        assert second.preparse(CONFIG).status_code == 200


def test_configurations_per_tenant_and_minute_are_limited(store: Store, tmp_path: Path) -> None:
    for harness in make_harness(store, tmp_path, agent_preparse_per_minute=2):
        agent = harness.agent()
        assert [agent.preparse(CONFIG).status_code for _ in range(2)] == [200, 200]
        limited = agent.preparse(CONFIG)
        assert limited.status_code == 429 and "agent_preparse_per_minute" in limited.text
        assert limited.text.count("\n") == 1 and "," not in limited.text
        # another tenant has its own allowance
        assert harness.agent("beta").preparse(CONFIG).status_code == 200


def test_a_removed_cname_is_12_even_while_the_certificate_is_valid(harness: Harness) -> None:
    harness.delegate("alpha", "www.customer.test", "shop.customer.test")
    agent = harness.agent()
    code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
    agent.check(code)
    ((chain, key),) = harness.issue_pending_orders()
    agent.check(code)
    agent.lines()
    agent.upload(code, chain.encode(), key.encode())
    assert agent.check(code) == ["3"]
    harness.delegate("alpha", "shop.customer.test", cname=False)
    answer = agent.check(code)
    assert answer[0] == "12" and "_acme-challenge.shop" in answer[1]
    # nothing new is ordered; what the host has stays downloadable
    with harness.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1
    assert agent.get(f"/cert/{code}.cer").content == chain.encode()
    harness.delegate("alpha", "shop.customer.test")
    assert agent.check(code) == ["3"]


def test_the_post_api_and_the_agent_keep_to_the_tenants_pending_cap(
    store: Store, tmp_path: Path
) -> None:
    """The POST API's apply and the agent's check start orders through the same caps as the
    GET apply (certok/orders/quotas.py): at tenant_max_pending_orders they start none."""
    for harness in make_harness(store, tmp_path, tenant_max_pending_orders=1):
        harness.delegate("alpha", "www.customer.test", "shop.customer.test", "a.customer.test")
        open_api = {"OpenApiKey": harness.tokens["alpha"]}
        first = harness.client.post(
            "/v1/cert/apply", json={"domainList": ["a.customer.test"]}, headers=open_api
        )
        assert first.status_code == 200 and first.json()["code"] == 0, first.text
        second = harness.client.post(
            "/v1/cert/apply", json={"domainList": ["shop.customer.test"]}, headers=open_api
        )
        assert second.status_code == 429, second.text
        assert "tenant_max_pending_orders = 1" in second.json()["msg"]
        agent = harness.agent()
        code = agent.lines()["/etc/nginx/ssl/site.pem"][0]
        (line, *_) = agent.check(code)
        assert line.startswith("certok: ") and "tenant_max_pending_orders = 1" in line, line
        with harness.store.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Order)) == 1
            assert session.scalar(select(func.count()).select_from(VerificationCode)) == 2
