"""The user story's moves, shared by the end-to-end tests: a user's two calls, the owner's
one DNS change, and what to check in the certificate and in certok's database afterwards."""

from __future__ import annotations

import base64
import collections
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from certok.crypto import private_key_from_pem
from tests.rig import Rig
from tests.rig.certok_server import CertokServer
from tests.rig.fault_proxy import FaultProxy

# How often a waiting user asks /v1/cert/apply again.
APPLY_POLL_SECONDS = 0.2


@dataclass
class User:
    """A domain owner's script: a token and two calls.

    Every `apply` answer is kept in `seen` (code → statuses in order), so a test can say what
    the user was told along the way, not only at the end.
    """

    server: CertokServer
    token: str
    seen: dict[str, list[str]] = field(default_factory=dict)

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(
            self.server.base_url + path,
            params=params,
            headers={"httpsok-token": self.token},
            timeout=30,
            trust_env=False,
        )

    def dv(self, domains: str, **params: str) -> dict:  # type: ignore[type-arg]
        response = self.get("/v1/cert/dv", domains=domains, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["code"] == 0
        return body["data"]

    def apply(self, code: str, **params: str) -> dict:  # type: ignore[type-arg]
        """One /v1/cert/apply call: its `data`."""
        response = self.get("/v1/cert/apply", code=code, **params)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        self.seen.setdefault(code, []).append(data["status"])
        return data

    def apply_until_done(self, code: str, timeout: float = 60, **params: str) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while True:
            data = self.apply(code, **params)
            if data["status"] != "pending" or time.monotonic() > deadline:
                return data
            time.sleep(APPLY_POLL_SECONDS)

    def apply_until(
        self,
        code: str,
        condition: Callable[[dict], bool],  # type: ignore[type-arg]
        what: str,
        timeout: float = 30,
    ) -> dict:  # type: ignore[type-arg]
        """Ask until an answer meets `condition`; fail naming `what` and the last answer."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.apply(code)
            if condition(data):
                return data
            assert time.monotonic() < deadline, f"no apply answer {what} in {timeout} s: {data}"
            time.sleep(APPLY_POLL_SECONDS)

    def wait_all(self, codes: Iterable[str], timeout: float) -> dict[str, dict]:  # type: ignore[type-arg]
        """Wait until no order of `codes` is pending (or `timeout`), then ask /v1/cert/apply
        once per code: code → its answer.

        The waiting reads certok's database: a user polling 50 codes five times a second
        would run into the per-tenant limit on /v1/cert/apply, which is not what the tests
        that start many orders are about.
        """
        wanted = list(codes)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = order_states(self.server, wanted)
            if len(states) == len(wanted) and "pending" not in states.values():
                break
            time.sleep(APPLY_POLL_SECONDS)
        return {code: self.apply(code) for code in wanted}


def delegate(
    rig: Rig,
    records: Callable[[list[str]], None],
    *dv_data: dict,  # type: ignore[type-arg]
    extra: Sequence[str] = (),
) -> None:
    """The owner adds the CNAMEs certok asked for (once) to the customer zone in NSD.

    `extra` zone lines (more A records, say) go in with them: the zone holds the base records
    plus exactly the lines of the latest call.
    """
    records(delegation_lines(*dv_data, extra=extra))


def delegation_lines(*dv_data: dict, extra: Sequence[str] = ()) -> list[str]:  # type: ignore[type-arg]
    """The customer-zone lines for the CNAMEs in /v1/cert/dv answers, plus `extra`, sorted."""
    lines = {
        f"{item['name']} IN CNAME {item['value']}." for data in dv_data for item in data["items"]
    }
    return sorted(lines | set(extra))


def extra_hosts(count: int, prefix: str = "n") -> tuple[list[str], list[str]]:
    """`count` more names in customer.test: their names and the A-record lines that make them."""
    labels = [f"{prefix}{i}" for i in range(1, count + 1)]
    names = [f"{label}.customer.test" for label in labels]
    return names, [f"{label} IN A 127.0.0.1" for label in labels]


def codes_for(user: User, names: Sequence[str]) -> dict[str, str]:
    """One verification code per name (each name must be delegated already): name → code."""
    codes = {}
    for name in names:
        data = user.dv(name)
        assert data["valid"] is True and data["code"], (name, data)
        codes[name] = data["code"]
    return codes


def verify_chain(rig: Rig, fullchain: str, tmp_path: Path, *, eab: bool = False) -> None:
    certs = x509.load_pem_x509_certificates(fullchain.encode())
    assert len(certs) >= 2, "full chain expected: leaf + intermediate"
    (tmp_path / "root.pem").write_text(rig.pebble_roots(eab=eab))
    (tmp_path / "leaf.pem").write_bytes(certs[0].public_bytes(Encoding.PEM))
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]))
    result = subprocess.run(
        [
            "openssl", "verify", "-CAfile", str(tmp_path / "root.pem"),
            "-untrusted", str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem"),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def check_issued(
    rig: Rig,
    data: dict,  # type: ignore[type-arg]
    names: list[str],
    algorithm: str,
    tmp_path: Path,
    *,
    eab: bool = False,
) -> None:
    assert data["status"] == "issued", data
    assert data["domains"] == ",".join(names)
    leaf = x509.load_pem_x509_certificates(data["certificate"].encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    assert data["subject"] == names[0]
    for field_name in ("notBefore", "notAfter"):
        time.strptime(data[field_name], "%Y-%m-%d %H:%M:%S")
    assert data["notAfter"] == leaf.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S")
    key = private_key_from_pem(data["privateKey"])
    expected_type = ec.EllipticCurvePrivateKey if algorithm == "ECC" else rsa.RSAPrivateKey
    assert isinstance(key, expected_type)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert key.curve.name == "secp256r1"
    else:
        assert key.key_size == 2048
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    verify_chain(rig, data["certificate"], tmp_path, eab=eab)


# --- certok's database, read the way an operator would --------------------------------------


def database_path(server: CertokServer) -> Path:
    return Path(server.env["CERTOK_DATA_DIR"]) / "certok.db"


def query(server: CertokServer, sql: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
    with sqlite3.connect(database_path(server)) as db:
        return db.execute(sql, args).fetchall()


def order_row(server: CertokServer) -> tuple[str, str | None]:
    """State and ACME order URL of the server's only (or first) order."""
    state, order_url = query(server, "SELECT state, acme_order_url FROM orders ORDER BY id")[0]
    return state, order_url


def order_states(server: CertokServer, codes: Sequence[str]) -> dict[str, str]:
    """code → state of the order it started (codes without an order are left out)."""
    marks = ",".join("?" * len(codes))
    sql = (
        "SELECT v.code, o.state FROM verification_codes v JOIN orders o ON o.id = v.order_id "
        f"WHERE v.code IN ({marks})"
    )
    return {str(code): str(state) for code, state in query(server, sql, *codes)}


def order_id_for_code(server: CertokServer, code: str) -> int:
    rows = query(server, "SELECT order_id FROM verification_codes WHERE code = ?", code)
    assert rows and rows[0][0] is not None, f"no order for code {code}"
    return int(rows[0][0])


def challenge_record_count(server: CertokServer, *, code: str | None = None) -> int:
    """Rows in `challenge_records`: all of them, or those of the order `code` started."""
    if code is None:
        return int(query(server, "SELECT count(*) FROM challenge_records")[0][0])
    order_id = order_id_for_code(server, code)
    sql = "SELECT count(*) FROM challenge_records WHERE order_id = ?"
    return int(query(server, sql, order_id)[0][0])


# --- what the CA was asked ---------------------------------------------------------------------


def print_request_log(proxy: FaultProxy, first: int = 0) -> None:
    """The proxy's log from request `first` on, one line each (pytest shows it on failure)."""
    print(f"--- fault proxy request log (from request {first}) ---")
    for r in proxy.requests()[first:]:
        print(f"{r.method} {r.path} {r.action or '-'} {r.outcome} {r.status}")


NEW_ORDER_PATH = "/order-plz"


class OrderCountingProxy(FaultProxy):
    """The fault proxy, also noting the names of every new order the CA created (201).

    The request log has paths only; which certok order a POST /order-plz belongs to is in its
    JWS payload (`identifiers`), read here as it goes upstream.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._created_lock = threading.Lock()
        self._created: list[tuple[str, ...]] = []

    def created_orders(self) -> collections.Counter[tuple[str, ...]]:
        """Name set (sorted) → how many ACME orders the CA created for it."""
        with self._created_lock:
            return collections.Counter(self._created)

    def upstream_exchange(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        answer = super().upstream_exchange(method, target, headers, body)
        if method == "POST" and target.split("?")[0] == NEW_ORDER_PATH and answer[0] == 201:
            names = _jws_identifiers(body or b"")
            with self._created_lock:
                self._created.append(names)
        return answer


def _jws_identifiers(body: bytes) -> tuple[str, ...]:
    """The identifier values of a newOrder JWS (flattened JSON serialization), sorted."""
    payload = json.loads(body)["payload"]
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return tuple(sorted(identifier["value"] for identifier in decoded["identifiers"]))
