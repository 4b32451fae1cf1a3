"""Disabling a tenant stops its running orders, end to end.

The CA is held at the fault proxy while it has both of a tenant's challenge answers (one
dns-01 order, one http-01 order): the TXT value and the key authorization are being served.
The operator disables the tenant. Before the CA goes on, certok stops serving both, and when
the CA validates, nothing is found: no order is finalized or issued, both end `failure`
saying the tenant was disabled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import dns.rdatatype
import httpx
import pytest

from tests.e2e.flow import User, codes_for, delegate, query
from tests.e2e.test_crashes import _wait_for_pebble_validation
from tests.e2e.test_http_flow import http_settings
from tests.rig import Rig
from tests.rig.certok_server import CertokServer
from tests.rig.dns_probe import answer_texts, ask
from tests.rig.fault_proxy import FaultProxy, Rule, stall

CHALLENGE = r"^/chalZ/"
DNS_NAME = "www.customer.test"
HTTP_NAME = "customer.test"


def _served_txt(rig: Rig, label: str) -> frozenset[str]:
    name = f"{label}.{rig.certok_zone}."
    return answer_texts(ask(rig.certok_dns_port, name, "TXT"), name, dns.rdatatype.TXT)


def _served_key_authorization(server: CertokServer, record_name: str) -> httpx.Response:
    host, token = record_name.split("/", 1)
    return httpx.get(f"{server.base_url}/v1/dv/{host}/{token}", timeout=5, trust_env=False)


def _until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_disabling_a_tenant_while_the_ca_holds_its_answers_stops_its_orders(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, fault_proxy: FaultProxy
) -> None:
    release = threading.Event()
    fault_proxy.add_rule(Rule(method="POST", path=CHALLENGE, action=stall(60, until=release)))
    server = certok_server(
        **http_settings(rig),
        apply_wait_seconds=0,
        issuers__letsencrypt__directory=fault_proxy.directory_url,
    )
    user = User(server, server.create_tenant("acme-corp"))
    delegate(rig, customer_records, user.dv(DNS_NAME))
    dns_code = codes_for(user, [DNS_NAME])[DNS_NAME]
    http = user.dv(HTTP_NAME, type="http")
    assert http["valid"] is True, http
    try:
        assert user.apply(dns_code, issuer="letsencrypt")["status"] == "pending"
        assert user.apply(http["code"], issuer="letsencrypt")["status"] == "pending"
        held = fault_proxy.wait_for(CHALLENGE, method="POST", count=2, timeout=30)

        # Both answers are at the CA: the material is being served.
        records = dict(query(server, "SELECT kind, name FROM challenge_records"))
        assert set(records) == {"dns-01", "http-01"}, records
        assert _served_txt(rig, records["dns-01"])
        assert _served_key_authorization(server, records["http-01"]).status_code == 200

        stopped = server.cli("tenant", "disable", "acme-corp")
        assert "2 running order(s) stopped" in stopped

        # Before the CA looks: neither the TXT value nor the key authorization is served.
        assert _served_key_authorization(server, records["http-01"]).status_code == 404
        _until(lambda: not _served_txt(rig, records["dns-01"]), "TXT value gone")
    finally:
        release.set()

    # The CA validates now, and finds nothing; certok's worker, back from the held answers,
    # finds its orders taken from it and lets them go.
    for record in held:
        _wait_for_pebble_validation(rig, record.path.rsplit("/", 1)[-1], timeout=30)
    _until(lambda: server.log_text().count("lease lost") >= 2, "both orders let go", 30)
    rows = query(server, "SELECT state, reason, certificate_pem FROM orders ORDER BY id")
    assert len(rows) == 2
    for state, reason, certificate in rows:
        assert state == "failure" and "disabled" in reason, (state, reason)
        assert certificate is None
    assert not [r for r in fault_proxy.requests() if r.path.startswith("/finalize-order/")]
    assert query(server, "SELECT count(*) FROM challenge_records") == [(0,)]

    # The tenant's token no longer works either: within `token_cache_seconds` (2 s by default,
    # docs/settings.md), how long a node may remember a token it accepted.
    def refused() -> bool:
        response = httpx.get(
            f"{server.base_url}/v1/cert/apply",
            params={"code": dns_code},
            headers={"httpsok-token": user.token},
            timeout=5,
            trust_env=False,
        )
        return response.status_code == 401

    _until(refused, "the disabled tenant's token refused", 2.0 + 3.0)
