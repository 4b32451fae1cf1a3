"""Certificate records end to end: real `certok serve`, real Pebble, ARI and profiles served in
front of Pebble 2.4 by the fault proxy (tests/rig/ari_front.py) in RFC 9773's wire format.

issue → list → get → verify the chain with openssl → ARI sets renewAt inside the CA's window
→ revoke → `revoked` in certok and in Pebble's own view; renewals that send `replaces`
(accepted, then refused and retried without it); profiles checked against meta.profiles.
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.e2e.flow import User, delegate, verify_chain
from tests.rig import Rig
from tests.rig.ari_front import AriFront, ari_cert_id
from tests.rig.certok_server import CertokServer
from tests.rig.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(120)
NAME = "www.customer.test"


def post(user: User, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        user.server.base_url + path,
        headers={"httpsok-token": user.token},
        timeout=30,
        trust_env=False,
        **kwargs,
    )


def data_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 0, body
    return body["data"]


def leaf_of(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem.encode())[0]


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)


def issue(user: User, **params: str) -> dict[str, Any]:
    code = user.dv(NAME)["code"]
    assert code, "the name should be delegated by now"
    data = user.apply_until_done(code, issuer="letsencrypt", **params)
    assert data["status"] == "issued", data
    return data


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


@pytest.fixture
def front(fault_proxy: FaultProxy) -> AriFront:
    fault_proxy.front = AriFront()
    return fault_proxy.front


@pytest.fixture
def user(
    rig: Rig,
    certok_server: Callable[..., CertokServer],
    fault_proxy: FaultProxy,
    front: AriFront,
    customer_records: Callable[[list[str]], None],
) -> User:
    server = certok_server(
        issuers__letsencrypt__directory=fault_proxy.directory_url,
        certificate_scan_seconds=0.2,
        apply_wait_seconds=5,
    )
    owner = User(server, server.create_tenant("certs"))
    delegate(rig, customer_records, owner.dv(NAME))
    return owner


def pebble_status(rig: Rig, serial: int) -> dict[str, Any]:
    """Pebble's management view of a certificate (`/cert-status-by-serial/<hex>`)."""
    context = ssl.create_default_context(cafile=str(rig.ca_bundle))
    with httpx.Client(verify=context, trust_env=False, timeout=5) as client:
        response = client.get(f"{rig.management_url}/cert-status-by-serial/{serial:x}")
    assert response.status_code == 200, response.text
    return response.json()


def test_issue_list_get_verify_ari_and_revoke(
    rig: Rig, user: User, front: AriFront, tmp_path: Path
) -> None:
    data = issue(user)
    certificate_id = data["id"]
    assert isinstance(certificate_id, int) and data["renewAt"]
    listing = data_of(user.get("/v1/cert/list"))
    assert listing["total"] == 1
    [item] = listing["items"]
    assert item["id"] == certificate_id and item["status"] == "valid"
    assert item["domains"] == [NAME] and item["issuer"] == "letsencrypt"
    detail = data_of(user.get(f"/v1/cert/{certificate_id}"))
    assert detail["certificate"] == data["certificate"]
    assert detail["privateKey"] == data["privateKey"]
    assert user.get(f"/v1/cert/{certificate_id}/fullchain.pem").text == data["certificate"]
    verify_chain(rig, detail["certificate"], tmp_path)

    # ARI: certok asked for this Pebble certificate's certID and took a moment in its window.
    leaf = leaf_of(detail["certificate"])
    cert_id = ari_cert_id(leaf)
    wait_for(lambda: cert_id in front.renewal_info_requests, "a renewalInfo request")
    window = front.window_for(cert_id)
    assert window is not None

    def renew_at_in_window() -> bool:
        renew_at = parse_time(data_of(user.get(f"/v1/cert/{certificate_id}"))["renewAt"])
        return window.start - dt.timedelta(seconds=1) <= renew_at <= window.end

    wait_for(renew_at_in_window, "renewAt inside the suggested window")

    revoked = post(user, f"/v1/cert/{certificate_id}/revoke", json={"reason": "keyCompromise"})
    answer = data_of(revoked)
    assert answer["status"] == "revoked", revoked.text
    listed = data_of(user.get("/v1/cert/list", status="revoked"))["items"]
    assert [i["id"] for i in listed] == [certificate_id]
    view = pebble_status(rig, leaf.serial_number)
    assert view["Status"] == "Revoked", view


def test_renewals_send_replaces_and_fall_back_without_it(user: User, front: AriFront) -> None:
    first = issue(user)
    first_cert_id = ari_cert_id(leaf_of(first["certificate"]))
    # The same names again: a renewal, sent with `replaces`, accepted.
    second = issue(user)
    assert front.new_orders[-1].get("replaces") == first_cert_id
    assert data_of(user.get(f"/v1/cert/{first['id']}"))["status"] == "replaced"
    detail = data_of(user.get(f"/v1/cert/{second['id']}"))
    assert detail["replaces"] == first["id"] and detail["status"] == "valid"

    # The CA refuses `replaces` (409 alreadyReplaced): asked once more without it.
    front.replaces_policy = "alreadyReplaced"
    asked = len(front.new_orders)
    third = issue(user)
    tried = front.new_orders[asked:]
    assert [o.get("replaces") for o in tried] == [ari_cert_id(leaf_of(second["certificate"])), None]
    assert "refused replaces" in user.server.log_text()
    assert data_of(user.get(f"/v1/cert/{second['id']}"))["status"] == "replaced"

    # 403 (another account's certificate): the same.
    front.replaces_policy = "unauthorized"
    asked = len(front.new_orders)
    issue(user)
    assert [o.get("replaces") is not None for o in front.new_orders[asked:]] == [True, False]
    assert data_of(user.get(f"/v1/cert/{third['id']}"))["status"] == "replaced"
    assert data_of(user.get("/v1/cert/list"))["total"] == 4


def test_profiles_are_checked_against_the_directory(user: User, front: AriFront) -> None:
    code = user.dv(NAME)["code"]
    refused = user.get("/v1/cert/apply", code=code, issuer="letsencrypt", profile="forever")
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["code"] != 0 and body["data"] is None
    assert "forever" in body["msg"] and "tlsserver" in body["msg"]
    data = issue(user, profile="tlsserver")
    assert front.new_orders[-1]["profile"] == "tlsserver"
    assert data_of(user.get(f"/v1/cert/{data['id']}"))["profile"] == "tlsserver"
