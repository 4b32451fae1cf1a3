"""Webhooks and the POST API against a real `certok serve` on the rig.

- A delivery in flight when certok is killed with SIGKILL is sent again after the restart,
  with the same webhook-id and body (the outbox row survives; its lease is freed at start).
- httpsok's POST API end to end: POST dv, the owner's CNAME, POST apply with a notifyUrl,
  Pebble issues, the receiver is told (signed: standardwebhooks verifies it with the secret
  GET /v1/webhooks shows), and GET /v1/cert/apply/{id} answers the certificate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.e2e.flow import check_issued, delegate
from tests.functional.webhook_receiver import Receiver
from tests.rig import Rig
from tests.rig.certok_server import CertokServer


def call(
    server: CertokServer,
    method: str,
    path: str,
    token: str,
    header: str = "httpsok-token",
    **kw: Any,
) -> Any:
    response = httpx.request(
        method, server.base_url + path, headers={header: token}, timeout=30, trust_env=False, **kw
    )
    body = response.json()
    assert response.status_code == 200 and body["code"] == 0, response.text
    return body["data"]


def test_a_delivery_killed_mid_flight_is_sent_again_with_the_same_id(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server
) -> None:
    receiver = Receiver()
    receiver.behave("stall")
    try:
        server: CertokServer = certok_server(
            precheck_allow_loopback=True, precheck_allowed_ports=[receiver.port]
        )
        token = server.create_tenant("alpha")
        hook = call(server, "POST", "/v1/webhooks", token, json={"url": receiver.url()})
        sent = call(server, "POST", f"/v1/webhooks/{hook['id']}/test", token)
        assert receiver.stalled.wait(30), "the delivery never arrived"
        server.kill()  # SIGKILL while the receiver holds the request unanswered
        receiver.release()
        server.start()
        first, second = receiver.wait_for(2, timeout=60)
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == sent["messageId"]
        assert first.body == second.body
        Webhook(hook["secret"]).verify(second.body, second.headers)
        deadline = time.monotonic() + 30
        while True:
            log = call(server, "GET", f"/v1/webhooks/{hook['id']}/deliveries", token)
            if log["list"][0]["status"] == "delivered" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert log["total"] == 1
        assert log["list"][0]["status"] == "delivered", log
        time.sleep(1)  # nothing more arrives: delivered once after the restart
        assert len(receiver.requests) == 2
    finally:
        receiver.close()


def test_post_api_with_a_notify_url(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, tmp_path: Path
) -> None:
    receiver = Receiver()
    try:
        server: CertokServer = certok_server(
            precheck_allow_loopback=True,
            precheck_allowed_ports=[receiver.port],
            event_scan_seconds=0.5,  # the revoked event below, without waiting minutes
        )
        token = server.create_tenant("alpha")
        hook = call(server, "POST", "/v1/webhooks", token, json={"url": receiver.url("/hook")})
        names = ["www.customer.test", "customer.test"]
        dv = call(server, "POST", "/v1/cert/dv", token, "OpenApiKey", json={"domainList": names})
        assert dv["valid"] is False
        assert {c["domain"] for c in dv["configs"]} == set(names)
        delegate(
            rig,
            customer_records,
            {"items": [{"name": c["host"], "value": c["hostValue"]} for c in dv["configs"]]},
        )
        dv = call(server, "POST", "/v1/cert/dv", token, "OpenApiKey", json={"domainList": names})
        assert dv["valid"] is True, dv
        apply_id = call(
            server,
            "POST",
            "/v1/cert/apply",
            token,
            "OpenApiKey",
            json={"domainList": names, "ca": "letsencrypt", "notifyUrl": receiver.url("/notify")},
        )
        assert isinstance(apply_id, str) and apply_id
        receiver.wait_for(2, timeout=90)
        by_path = {r.path: r for r in receiver.requests}
        told = by_path["/notify"]
        secret = call(server, "GET", "/v1/webhooks", token)["notifySecret"]
        event = Webhook(secret).verify(told.body, told.headers)
        assert event["type"] == "certificate.issued", event
        assert event["data"]["id"] == apply_id
        assert event["data"]["domains"] == names
        # The tenant's endpoint heard of it too: another message, signed with its own secret.
        hooked = Webhook(hook["secret"]).verify(by_path["/hook"].body, by_path["/hook"].headers)
        assert hooked["data"] == event["data"]
        assert by_path["/hook"].headers["webhook-id"] != told.headers["webhook-id"]
        certificate_id = event["data"]["certificateId"]
        assert isinstance(certificate_id, int)
        answer = call(server, "GET", f"/v1/cert/apply/{apply_id}", token, "OpenApiKey")
        check_issued(rig, answer, names, "ECC", tmp_path)
        # Polling again at once: 429 with Retry-After, in the envelope.
        again = httpx.get(
            f"{server.base_url}/v1/cert/apply/{apply_id}",
            headers={"OpenApiKey": token},
            timeout=30,
            trust_env=False,
        )
        assert again.status_code == 429 and int(again.headers["Retry-After"]) <= 10
        assert json.loads(again.text)["code"] != 0
        # Revoked at the CA (Pebble): certificate.revoked follows, once.
        call(
            server,
            "POST",
            f"/v1/cert/{certificate_id}/revoke",
            token,
            json={"reason": "superseded"},
        )
        receiver.wait_for(3, timeout=60)
        revoked = Webhook(hook["secret"]).verify(
            receiver.requests[2].body, receiver.requests[2].headers
        )
        assert revoked["type"] == "certificate.revoked", revoked
        assert revoked["data"]["certificateId"] == certificate_id
        assert revoked["data"]["reason"] == 4  # superseded (RFC 5280)
        time.sleep(1.5)  # three more scans: nothing more is sent
        assert len(receiver.requests) == 3
    finally:
        receiver.close()
