"""httpsok.sh v1.18.2, unmodified but for its BASE_API_URL line, deploys and renews certificates
from certok into a real nginx: the real script, the real nginx, certok serving, Pebble issuing
through the tenant's DNS delegation (NSD + unbound).

One story, in the order a host lives it: a self-signed certificate replaced by a Pebble one; a
run with nothing to do; the renewal time passing (the server's renewal clock shifted) and the
next certificate deployed; a CNAME removed (`12`, nginx keeps its certificate); a broken nginx
configuration reported through `/log` and visible to the tenant. Throughout: the configuration
text is never stored or logged by certok.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.e2e.agent_host import CustomerHost, compat_script
from tests.e2e.flow import User, database_path, delegate, delegation_lines, verify_chain
from tests.rig import Rig
from tests.rig.certok_server import CertokServer

NAMES = ["www.customer.test", "shop.customer.test"]
CONFIG_MARKER = "CERTOK-CONFIG-MARKER-7e2f"
PEBBLE_ISSUER = "Pebble Intermediate"


@pytest.fixture
def host(rig: Rig) -> Iterator[Callable[[str, str], CustomerHost]]:
    compat_script()  # skip (or fail under CI) before starting anything
    made: list[CustomerHost] = []

    def make(api_url: str, token: str) -> CustomerHost:
        customer = CustomerHost(rig.allocate_port("agent-nginx"), NAMES, api_url, token)
        made.append(customer)
        customer.start_nginx()
        return customer

    yield make
    for customer in made:
        customer.stop_nginx()


def host_log(server: CertokServer, token: str, uuid: str) -> list[dict]:  # type: ignore[type-arg]
    response = httpx.get(
        f"{server.base_url}/v1/agents/hosts/{uuid}/log",
        params={"limit": "500"},
        headers={"httpsok-token": token},
        trust_env=False,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return list(response.json()["data"]["entries"])


def kinds(entries: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return [entry["type"] for entry in entries]


def sans(leaf: x509.Certificate) -> list[str]:
    extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sorted(extension.value.get_values_for_type(x509.DNSName))


def issuer_cn(leaf: x509.Certificate) -> str:
    return leaf.issuer.rfc4514_string()


def renewal_offset(leaf: x509.Certificate) -> int:
    """Seconds to shift the server's renewal clock so that `leaf` is due (a day past)."""
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    due = start + (end - start) * 2 / 3
    return int((due - dt.datetime.now(dt.UTC)).total_seconds()) + 86400


def restart_with_offset(server: CertokServer, seconds: int) -> None:
    server.env["CERTOK_CLOCK_OFFSET_SECONDS"] = str(seconds)
    server.restart()


def test_httpsok_sh_deploys_renews_and_reports(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, host, tmp_path: Path
) -> None:
    server: CertokServer = certok_server(agent_check_wait_seconds=30)
    token = server.create_tenant("agent-corp")
    user = User(server, token)
    dv = user.dv(",".join(NAMES))
    delegate(rig, customer_records, dv)
    assert user.dv(",".join(NAMES))["valid"] is True

    customer = host(f"{server.base_url}/v1/nginx", token)
    self_signed = customer.served()
    self_signed_pem = customer.cert.read_text()
    assert sans(self_signed) == sorted(NAMES) and PEBBLE_ISSUER not in issuer_cn(self_signed)

    # --- 1: the self-signed certificate is replaced by a Pebble one ------------------------
    first = customer.run_agent()
    assert first.returncode == 0, first.output
    assert "New cert updated" in first.output and "Nginx reload success" in first.output, (
        first.output
    )
    uuid = customer.uuid
    issued_leaf = x509.load_pem_x509_certificates(customer.cert.read_bytes())[0]
    leaf = customer.wait_served(issued_leaf.serial_number)
    assert leaf.serial_number == issued_leaf.serial_number
    assert PEBBLE_ISSUER in issuer_cn(leaf) and sans(leaf) == sorted(NAMES)
    verify_chain(rig, customer.wait_served_pem(leaf.serial_number), tmp_path, eab=True)
    for name in NAMES:
        served_for_name = customer.wait_served_pem(leaf.serial_number, name=name)
        assert x509.load_pem_x509_certificates(served_for_name.encode())[0] == leaf
    backups = customer.backups()
    assert [b.split(".")[0:2] for b in backups] == [["site", "key"], ["site", "pem"]], backups
    backup_dir = customer.home / ".httpsok" / "backups"
    assert (backup_dir / backups[1]).read_text() == self_signed_pem  # what was there before
    log = host_log(server, token, uuid)
    assert {"preparse", "certificate-issued", "cert-updated-success"} <= set(kinds(log))
    assert kinds(log).count("nginx-reload-success") == 1
    preparse = next(e for e in log if e["type"] == "preparse")
    assert "skipped _: the catch-all placeholder" in preparse["message"]

    # --- 2: nothing to do: nothing changes, no reload ------------------------------------------
    workers = customer.worker_pids()
    second = customer.run_agent()
    assert "Cert valid" in second.output and "Nginx reload needless" in second.output, second.output
    assert customer.worker_pids() == workers
    assert customer.served().serial_number == leaf.serial_number
    assert customer.backups() == backups
    assert kinds(host_log(server, token, uuid)).count("nginx-reload-success") == 1

    # --- 3: the renewal time passes: the next certificate is deployed ---------------------------
    offset = renewal_offset(leaf)
    restart_with_offset(server, offset)
    third = customer.run_agent()
    assert "New cert updated" in third.output and "Nginx reload success" in third.output, (
        third.output
    )
    renewed_leaf = x509.load_pem_x509_certificates(customer.cert.read_bytes())[0]
    assert renewed_leaf.serial_number != leaf.serial_number
    renewed = customer.wait_served(renewed_leaf.serial_number)
    assert renewed.serial_number == renewed_leaf.serial_number and sans(renewed) == sorted(NAMES)
    assert len(customer.backups()) == 4
    with sqlite3.connect(database_path(server)) as db:
        orders = db.execute("SELECT state, domains FROM orders ORDER BY id").fetchall()
        records = db.execute(
            "SELECT id, replaces_id, replaced_by_id FROM certificates ORDER BY id"
        ).fetchall()
    assert orders == [("issued", ",".join(NAMES))] * 2
    # a renewal replaces the previous certificate record
    (first_id, _, first_replaced_by), (second_id, second_replaces, _) = records
    assert (first_replaced_by, second_replaces) == (second_id, first_id)

    # --- 4: a CNAME removed: 12 (long before the renewal), nginx keeps its certificate --------
    restart_with_offset(server, 0)
    shop_lines = [line for line in delegation_lines(dv) if line.startswith("_acme-challenge.shop")]
    customer_records([line for line in delegation_lines(dv) if line not in shop_lines])
    fourth = customer.run_agent()
    assert "DNS CNAME invalid" in fourth.output, fourth.output
    assert "_acme-challenge.shop" in fourth.output  # /checkDns names the CNAME to add
    assert "Nginx reload needless" in fourth.output
    assert customer.served().serial_number == renewed.serial_number
    assert len(customer.backups()) == 4

    # --- 5: a broken nginx configuration: reported through /log, visible to the tenant ---------
    customer_records(delegation_lines(dv))
    restart_with_offset(server, renewal_offset(renewed))
    (customer.site / "conf.d" / "zz-broken.conf").write_text("this_is_no_directive on;\n")
    fifth = customer.run_agent()
    assert "New cert updated" in fifth.output and "Nginx test failed" in fifth.output, fifth.output
    entries = host_log(server, token, uuid)
    failed = [e for e in entries if e["type"] == "nginx-test-failed"]
    assert failed and "this_is_no_directive" in failed[0]["message"]
    # nginx was not reloaded: it still serves the certificate of step 3
    assert customer.served().serial_number == renewed.serial_number

    # --- throughout: the configuration text was parsed and dropped ------------------------------
    server.stop()
    data_dir = Path(server.env["CERTOK_DATA_DIR"])
    for path in data_dir.glob("certok.db*"):
        assert CONFIG_MARKER.encode() not in path.read_bytes(), path
    assert CONFIG_MARKER not in server.log_text()
    assert "PRIVATE KEY" not in server.log_text()
