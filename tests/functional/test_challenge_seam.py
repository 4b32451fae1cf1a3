"""A third challenge type plugs in without touching the driver.

`tls-alpn-01` (RFC 8737) stands in for the next type (dns-persist-01, which Pebble does not
offer): a solver written here, registered through the same mapping the wiring passes to
`OrderDriver`, drives an order to a certificate. Pebble validates for real: it resolves the
name through a DNS server of this test (every name → 127.0.0.1) and completes a TLS
handshake with this test's responder, which, like certok's own DNS server and HTTP-01
responder, reads the presented material from the database on every request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from sqlalchemy import Connection, func, select

from certok.challenge_solver import (
    Material,
    Presenter,
    holds_lease,
    insert_material,
    remove_material,
)
from certok.crypto import certificate_subject
from certok.db.engine import transaction
from certok.db.models import ChallengeRecord, Order
from certok.order_states import ISSUED, PENDING
from certok.orders.accounts import AccountRegistry
from certok.orders.driver import OrderDriver
from certok.orders.worker import LEASE_SECONDS
from certok.persistence import Store
from certok.settings import IssuerSettings, Settings
from certok.tenants import service as tenants
from tests.functional.pebble_fixture import PebbleInstance, run_pebble
from tests.kit.ports import free_port

TLS_ALPN01 = "tls-alpn-01"
# The solver's own `challenge_records.kind` (the column holds 8 characters).
RECORD_KIND = "alpn-01"
ACME_TLS_ALPN = "acme-tls/1"
# id-pe-acmeIdentifier (RFC 8737 §6.1).
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
NAME = "alpn.customer.test"
WORKER = "node-a"
# Bounds for a loaded machine: Pebble validates in well under a second when idle.
ISSUE_WITHIN_SECONDS = 90.0
STEP_PAUSE_SECONDS = 0.2


@dataclass(frozen=True)
class TlsAlpn01Solver:
    """Test-only: the key authorization stored for the responder below, by name."""

    acme_type: str = TLS_ALPN01
    settle_seconds: float = 0.0

    def value(self, key_authorization: str) -> str:
        return key_authorization

    def present(
        self, connection: Connection, presenter: Presenter, material: Sequence[Material]
    ) -> bool:
        if not holds_lease(connection, presenter):
            return False
        insert_material(connection, presenter, RECORD_KIND, [(m.identifier, m) for m in material])
        return True

    def cleanup(
        self, connection: Connection, order_id: int, authz_urls: Sequence[str] | None
    ) -> None:
        remove_material(connection, order_id, authz_urls)


class AddressServer:
    """DNS on loopback UDP: every name has the address 127.0.0.1 (and no other record)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self._socket.recvfrom(4096)
            except OSError:
                return
            if not data:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text(question.name, 1, "IN", "A", "127.0.0.1"))
            self._socket.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        _stop(self._socket)
        self._thread.join(5)


class AlpnResponder:
    """TLS on loopback: answers `acme-tls/1` handshakes with the certificate RFC 8737 asks
    for, built from the key authorization stored for the name the client sends (SNI)."""

    def __init__(self, store: Store, port: int, workdir: Path) -> None:
        self._store = store
        self._workdir = workdir
        self.handshakes: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _context_for(self, name: str) -> ssl.SSLContext | None:
        with self._store.sessions() as session:
            key_authorization = session.scalar(
                select(ChallengeRecord.value)
                .join(Order, Order.id == ChallengeRecord.order_id)
                .where(
                    ChallengeRecord.kind == RECORD_KIND,
                    ChallengeRecord.name == name,
                    Order.state == PENDING,
                )
            )
        if key_authorization is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols([ACME_TLS_ALPN])
        certificate, key = _validation_certificate(name, key_authorization)
        with tempfile.TemporaryDirectory(dir=self._workdir) as folder:
            cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
            cert_path.write_bytes(certificate)
            key_path.write_bytes(key)
            context.load_cert_chain(cert_path, key_path)
        return context

    def _serve(self) -> None:
        outer = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        outer.set_alpn_protocols([ACME_TLS_ALPN])

        def choose(connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
            context = self._context_for(name or "")
            if context is None:
                return None
            self.handshakes.append(name or "")
            connection.context = context
            return None

        outer.sni_callback = choose
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                with outer.wrap_socket(client, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                client.close()

    def close(self) -> None:
        _stop(self._listener)
        self._thread.join(5)


def _stop(listening: socket.socket) -> None:
    # shutdown() wakes the thread blocked in accept()/recvfrom(); close() alone would leave
    # the port bound until that call returned.
    with contextlib.suppress(OSError):
        listening.shutdown(socket.SHUT_RDWR)
    listening.close()


def _validation_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # The extension's value is the DER OCTET STRING of the digest.
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def validating_pebble(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PebbleInstance, int]]:
    dns_server = AddressServer()
    tls_port = free_port("pebble tls-alpn")
    try:
        with run_pebble(
            tmp_path_factory.mktemp("pebble"), validating=(dns_server.address, tls_port)
        ) as pebble:
            yield pebble, tls_port
    finally:
        dns_server.close()


def _pending_order(store: Store, now: dt.datetime) -> int:
    with transaction(store.sessions) as session:
        tenant = tenants.create_tenant(session, "alpn")
        order = Order(
            tenant_id=tenant.id,
            state=PENDING,
            issuer="pebble",
            algorithm="ECC",
            challenge_type="tls",
            domains=NAME,
            attempts=0,
            acme_orders=0,
            deadline_at=now + dt.timedelta(days=1),
            created_at=now,
            next_attempt_at=now,
            lease_owner=WORKER,
            lease_until=now + dt.timedelta(seconds=LEASE_SECONDS),
        )
        session.add(order)
        session.flush()
        return order.id


def test_a_solver_registered_by_the_wiring_drives_an_order_the_ca_validates(
    store: Store, tmp_path: Path, validating_pebble: tuple[PebbleInstance, int]
) -> None:
    pebble, tls_port = validating_pebble
    settings = Settings(
        data_dir=tmp_path,
        resolvers=["127.0.0.1:9"],
        issuers={
            "pebble": IssuerSettings(
                directory=pebble.directory_url, ca_bundle=Path(pebble.ca_bundle)
            )
        },
        default_issuer="pebble",
    )
    driver = OrderDriver(
        store.sessions,
        settings,
        store.box,
        AccountRegistry(store.sessions, settings, store.box),
        lambda *_: None,
        worker_id=WORKER,
        solvers={"tls": TlsAlpn01Solver()},
    )
    order_id = _pending_order(store, dt.datetime.now(dt.UTC))
    responder = AlpnResponder(store, tls_port, tmp_path)
    try:
        deadline = time.monotonic() + ISSUE_WITHIN_SECONDS
        while driver.step(order_id) is not None:
            assert time.monotonic() < deadline, pebble.log_text()
            time.sleep(STEP_PAUSE_SECONDS)
    finally:
        responder.close()

    with store.sessions() as session:
        order = session.get(Order, order_id)
        assert order is not None
        assert order.state == ISSUED, (order.reason, pebble.log_text())
        assert order.certificate_pem is not None
        leaf = x509.load_pem_x509_certificate(order.certificate_pem.encode("ascii"))
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [NAME]
        # The issuing save keeps the subject apply shows, so apply never parses for it.
        assert order.subject == certificate_subject(order.certificate_pem) == NAME
        # The solver's cleanup ran with the issuing save.
        assert session.scalar(select(func.count()).select_from(ChallengeRecord)) == 0
    # Pebble's validation met the material the solver presented.
    assert NAME in responder.handshakes
