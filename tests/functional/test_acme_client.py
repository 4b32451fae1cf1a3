"""The ACME adapter against a real Pebble on loopback, driven one step at a time."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certok.crypto import generate_private_key, make_csr, private_key_to_pem
from certok.issuance import (
    STATUS_PENDING,
    STATUS_PROCESSING,
    STATUS_READY,
    STATUS_VALID,
    AcmeProblem,
    AcmeSession,
    OrderInfo,
    ProblemKind,
    dns01_txt_value,
    new_account_key,
    valid_token,
)
from certok.issuance.problems import TRANSPORT_ERROR
from tests.functional.pebble_fixture import (
    BLOCKED_DOMAIN,
    EAB_KEYS,
    PebbleInstance,
    pebble_eab_server,  # noqa: F401 - the `pebble_eab` fixture
    pebble_server,  # noqa: F401 - the `pebble` fixture
)
from tests.kit.ports import free_port

POLL_SECONDS = 0.02
STEP_DEADLINE_SECONDS = 10.0


def new_session(instance: PebbleInstance, **kwargs: object) -> AcmeSession:
    return AcmeSession(
        instance.directory_url, new_account_key(), ca_bundle=instance.ca_bundle, **kwargs
    )


def registered_session(instance: PebbleInstance) -> AcmeSession:
    session = new_session(instance)
    session.register(contact_email=None, eab_kid=None, eab_hmac_key=None)
    return session


def accounts_in_pebble(instance: PebbleInstance) -> int:
    counts = re.findall(r"There are now (\d+) accounts in memory", instance.log_text())
    return int(counts[-1]) if counts else 0


def new_account_requests(instance: PebbleInstance) -> int:
    """newAccount POSTs Pebble has logged (its newAccount path is /sign-me-up)."""
    return instance.log_text().count("POST /sign-me-up")


def poll_until(session: AcmeSession, order: OrderInfo, waiting: set[str]) -> OrderInfo:
    deadline = time.monotonic() + STEP_DEADLINE_SECONDS
    while order.status in waiting:
        assert time.monotonic() < deadline, f"order stuck in {order.status}"
        time.sleep(POLL_SECONDS)
        order = session.fetch_order(order.url)
    return order


def issue(session: AcmeSession, csr_pem: bytes) -> tuple[OrderInfo, str]:
    """The worker's path: new order → answer dns-01 → ready → finalize → valid → download."""
    order = session.new_order(csr_pem)
    assert order.status == STATUS_PENDING
    assert order.authorizations, "a new order has authorizations to satisfy"
    for authz in order.authorizations:
        challenge = next(c for c in authz.challenges if c.type == "dns-01")
        assert valid_token(challenge.token)
        # What certok's DNS server would publish (Pebble's VA is told to accept anything).
        assert dns01_txt_value(session.account_key, challenge.token)
        answered = session.answer_challenge(challenge.url)
        assert answered.url == challenge.url
    order = poll_until(session, order, {STATUS_PENDING})
    assert order.status == STATUS_READY, order
    order = session.finalize(order, csr_pem)
    order = poll_until(session, order, {STATUS_READY, STATUS_PROCESSING})
    assert order.status == STATUS_VALID, order
    assert order.certificate_url is not None
    return order, session.download_certificate(order.certificate_url)


def leaf_and_chain(chain_pem: str) -> list[x509.Certificate]:
    certificates = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    assert len(certificates) >= 2, "leaf first, then the intermediate"
    return certificates


def leaf_names(leaf: x509.Certificate) -> set[str]:
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


# --- accounts --------------------------------------------------------------------------------


def test_register_is_idempotent_and_account_url_skips_new_account(pebble: PebbleInstance) -> None:
    key = new_account_key()
    session = AcmeSession(pebble.directory_url, key, ca_bundle=pebble.ca_bundle)
    assert session.external_account_required() is False
    assert session.account_url is None
    url = session.register(contact_email="ops@example.com", eab_kid=None, eab_hmac_key=None)
    assert url.startswith(pebble.directory_url.rsplit("/", 1)[0])
    assert session.account_url == url
    assert session.register(contact_email=None, eab_kid=None, eab_hmac_key=None) == url
    assert accounts_in_pebble(pebble) >= 1
    new_account_posts = new_account_requests(pebble)
    assert new_account_posts >= 2

    # A later run: the saved URL is enough, no newAccount is sent.
    resumed = AcmeSession(pebble.directory_url, key, account_url=url, ca_bundle=pebble.ca_bundle)
    csr = make_csr(generate_private_key("ECC"), ["resume.example.test"]).encode("ascii")
    order = resumed.new_order(csr)
    assert order.status == STATUS_PENDING
    assert new_account_requests(pebble) == new_account_posts


def test_order_without_an_account_is_refused_locally(pebble: PebbleInstance) -> None:
    session = new_session(pebble)
    csr = make_csr(generate_private_key("ECC"), ["noaccount.test"]).encode("ascii")
    with pytest.raises(AcmeProblem, match="register"):
        session.new_order(csr)


def test_eab_is_not_sent_to_a_ca_that_does_not_ask(pebble: PebbleInstance) -> None:
    session = new_session(pebble)
    # A wrong HMAC would be refused if it were sent (Pebble checks any EAB it receives).
    url = session.register(contact_email=None, eab_kid="kid-1", eab_hmac_key="AAAA")
    assert url


def test_eab_required_without_eab_is_rejected(pebble_eab: PebbleInstance) -> None:
    session = new_session(pebble_eab)
    assert session.external_account_required() is True
    with pytest.raises(AcmeProblem) as caught:
        session.register(contact_email=None, eab_kid=None, eab_hmac_key=None)
    problem = caught.value
    assert (problem.kind, problem.type) == (ProblemKind.REJECTED, "externalAccountRequired")
    assert "eab_kid" in problem.detail and "eab_hmac_key" in problem.detail
    assert session.account_url is None


def test_eab_with_the_right_key_makes_an_account(pebble_eab: PebbleInstance) -> None:
    session = new_session(pebble_eab)
    url = session.register(contact_email=None, eab_kid="kid-1", eab_hmac_key=EAB_KEYS["kid-1"])
    assert "/my-account/" in url
    # The account exists now: registering again needs no binding and finds the same URL.
    assert session.register(contact_email=None, eab_kid=None, eab_hmac_key=None) == url
    order = session.new_order(make_csr(generate_private_key("ECC"), ["eab.test"]).encode())
    assert order.status == STATUS_PENDING


def test_eab_with_a_wrong_hmac_is_a_clear_rejection(pebble_eab: PebbleInstance) -> None:
    session = new_session(pebble_eab)
    wrong_hmac = "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH"
    with pytest.raises(AcmeProblem) as caught:
        session.register(contact_email=None, eab_kid="kid-1", eab_hmac_key=wrong_hmac)
    problem = caught.value
    assert problem.kind is ProblemKind.REJECTED
    assert problem.type == "unauthorized"
    assert "kid-1" in problem.detail and "eab_hmac_key" in problem.detail
    assert "external account binding" in problem.detail
    assert session.account_url is None


# --- issuance --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "names"),
    [
        ("ECC", ["www.shop.test"]),
        ("RSA", ["rsa.shop.test", "api.shop.test"]),
        ("ECC", ["*.wild.test", "wild.test"]),
        ("RSA", ["*.rsawild.test", "rsawild.test"]),
    ],
)
def test_full_issuance_step_by_step(
    pebble: PebbleInstance, algorithm: str, names: list[str]
) -> None:
    session = registered_session(pebble)
    key = generate_private_key(algorithm)
    csr = make_csr(key, names).encode("ascii")

    order, chain_pem = issue(session, csr)

    wanted = {(n.removeprefix("*."), n.startswith("*.")) for n in names}
    assert {(a.identifier, a.wildcard) for a in order.authorizations} == wanted
    assert {a.name for a in order.authorizations} == set(names)
    wildcard_authz = [a for a in order.authorizations if a.wildcard]
    for authz in wildcard_authz:  # RFC 8555 §7.1.3: wildcards are dns-01 only
        assert {c.type for c in authz.challenges} == {"dns-01"}
    leaf, issuer = leaf_and_chain(chain_pem)[:2]
    assert leaf_names(leaf) == set(names)
    assert leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    leaf.verify_directly_issued_by(issuer)


def test_fetch_order_without_authorizations(pebble: PebbleInstance) -> None:
    session = registered_session(pebble)
    csr = make_csr(generate_private_key("ECC"), ["light.test"]).encode("ascii")
    created = session.new_order(csr)
    light = session.fetch_order(created.url, include_authorizations=False)
    assert light.authorizations == ()
    assert (light.url, light.status, light.finalize_url) == (
        created.url,
        created.status,
        created.finalize_url,
    )
    first = created.authorizations[0]
    authz = session.fetch_authorization(first.url)
    assert (authz.url, authz.identifier, authz.status) == (first.url, first.identifier, "pending")
    # Pebble lists the challenges in a new order on every fetch.
    assert set(authz.challenges) == set(first.challenges)


def test_an_order_read_alone_lists_its_authorizations_to_fetch_later(
    pebble: PebbleInstance,
) -> None:
    session = registered_session(pebble)
    csr = make_csr(generate_private_key("ECC"), ["*.later.test", "later.test"]).encode("ascii")
    created = session.new_order(csr)
    light = session.fetch_order(created.url, include_authorizations=False)
    # Pebble lists them in another order on every fetch.
    assert sorted(light.authorization_urls) == sorted(a.url for a in created.authorizations)
    assert len(light.authorization_urls) == 2
    full = session.fetch_authorizations(light)
    assert [a.url for a in full.authorizations] == list(light.authorization_urls)
    assert sorted((a.url, a.identifier, a.wildcard, a.status) for a in full.authorizations) == (
        sorted((a.url, a.identifier, a.wildcard, "pending") for a in created.authorizations)
    )


@pytest.mark.parametrize("pebble", [{"nonce_reject": 90}], indirect=True)
def test_ten_orders_succeed_when_most_nonces_are_rejected(pebble: PebbleInstance) -> None:
    session = registered_session(pebble)
    for number in range(10):
        names = [f"n{number}.nonce.test"]
        _order, chain_pem = issue(session, make_csr(generate_private_key("ECC"), names).encode())
        assert leaf_names(leaf_and_chain(chain_pem)[0]) == set(names)
    # Each order takes at least 7 exchanges; Pebble logs every POST it receives, the ones
    # whose nonce it rejected included: at 90% there are about ten tries per exchange.
    log_text = pebble.log_text()
    assert log_text.count("POST /") > 10 * 7 * 4
    # Every retry reuses the nonce that came with the badNonce answer: newNonce is asked
    # once per thread, not once per rejection.
    assert log_text.count("HEAD /nonce-plz") <= 2


@pytest.mark.parametrize("pebble", [{"nonce_reject": 90}], indirect=True)
def test_bad_nonce_gives_up_after_the_configured_retries(pebble: PebbleInstance) -> None:
    session = registered_session(pebble)
    stubborn = AcmeSession(
        pebble.directory_url,
        session.account_key,
        account_url=session.account_url,
        ca_bundle=pebble.ca_bundle,
        nonce_retries=0,
    )
    csr = make_csr(generate_private_key("ECC"), ["stubborn.test"]).encode()
    failures = []
    for _ in range(20):
        try:
            stubborn.new_order(csr)
        except AcmeProblem as problem:
            failures.append(problem)
    # 90% rejection and no retries: almost every attempt fails, as a retryable badNonce.
    assert len(failures) >= 10
    assert {(p.kind, p.type) for p in failures} == {(ProblemKind.RETRYABLE, "badNonce")}


def test_one_session_serves_many_threads(pebble: PebbleInstance) -> None:
    session = registered_session(pebble)
    thread_names: set[str] = set()
    lock = threading.Lock()

    def one(number: int) -> set[str]:
        with lock:
            thread_names.add(threading.current_thread().name)
        names = [f"t{number}.threads.test"]
        _order, chain_pem = issue(session, make_csr(generate_private_key("ECC"), names).encode())
        return leaf_names(leaf_and_chain(chain_pem)[0])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(8)))
    assert results == [{f"t{n}.threads.test"} for n in range(8)]
    assert len(thread_names) > 1
    session.close()


# --- problems from the CA ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "problem_type", "named"),
    [
        ([BLOCKED_DOMAIN], "rejectedIdentifier", BLOCKED_DOMAIN),
        (["ok.test", f"www.{BLOCKED_DOMAIN}"], "rejectedIdentifier", f"www.{BLOCKED_DOMAIN}"),
        (["bad_name.test"], "malformed", "illegal character"),
    ],
)
def test_a_refused_name_is_rejected_with_the_ca_detail(
    pebble: PebbleInstance, names: list[str], problem_type: str, named: str
) -> None:
    session = registered_session(pebble)
    csr = make_csr(generate_private_key("ECC"), names).encode()
    with pytest.raises(AcmeProblem) as caught:
        session.new_order(csr)
    problem = caught.value
    assert (problem.kind, problem.type) == (ProblemKind.REJECTED, problem_type)
    assert named in problem.detail
    assert problem.http_status == 400


def test_finalize_with_a_csr_for_other_names_is_rejected(pebble: PebbleInstance) -> None:
    session = registered_session(pebble)
    key = generate_private_key("ECC")
    order = session.new_order(make_csr(key, ["mine.test"]).encode())
    for authz in order.authorizations:
        session.answer_challenge(next(c for c in authz.challenges if c.type == "dns-01").url)
    order = poll_until(session, order, {STATUS_PENDING})
    assert order.status == STATUS_READY
    with pytest.raises(AcmeProblem) as caught:
        session.finalize(order, make_csr(key, ["mine.test", "theirs.test"]).encode())
    assert caught.value.kind is ProblemKind.REJECTED
    assert "CSR" in caught.value.detail


def test_unknown_order_url_is_not_retried_forever(pebble: PebbleInstance) -> None:
    session = registered_session(pebble)
    base = pebble.directory_url.rsplit("/", 1)[0]
    with pytest.raises(AcmeProblem) as caught:
        session.fetch_order(f"{base}/my-order/does-not-exist")
    assert caught.value.kind is ProblemKind.REJECTED
    assert caught.value.http_status == 404


def test_invalid_csr_is_refused_before_the_ca_sees_it(pebble: PebbleInstance) -> None:
    session = registered_session(pebble)
    with pytest.raises(AcmeProblem) as caught:
        session.new_order(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert (caught.value.kind, caught.value.type) == (ProblemKind.REJECTED, "badCSR")


# --- transport --------------------------------------------------------------------------------


def test_closed_port_is_a_retryable_transport_problem() -> None:
    port = free_port()  # nothing listens there
    session = AcmeSession(f"https://127.0.0.1:{port}/dir", new_account_key(), timeout=2)
    with pytest.raises(AcmeProblem) as caught:
        session.external_account_required()
    assert (caught.value.kind, caught.value.type) == (ProblemKind.RETRYABLE, TRANSPORT_ERROR)
    assert str(port) in caught.value.detail


def test_untrusted_ca_certificate_is_a_retryable_problem_naming_ca_bundle(
    pebble: PebbleInstance,
) -> None:
    # No ca_bundle: the system store does not trust the test CA.
    session = AcmeSession(pebble.directory_url, new_account_key(), timeout=2)
    with pytest.raises(AcmeProblem) as caught:
        session.register(contact_email=None, eab_kid=None, eab_hmac_key=None)
    assert (caught.value.kind, caught.value.type) == (ProblemKind.RETRYABLE, TRANSPORT_ERROR)
    assert "ca_bundle" in caught.value.detail


# --- revocation ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ECC", "RSA"])
def test_another_account_revokes_with_the_certificate_key(
    pebble: PebbleInstance, algorithm: str
) -> None:
    # Account A orders; the issuer's account is then B (the operator registered a new one).
    ordering, current = registered_session(pebble), registered_session(pebble)
    key = generate_private_key(algorithm)
    names = [f"rotated-{algorithm.lower()}.revoke.test"]
    _, chain_pem = issue(ordering, make_csr(key, names).encode("ascii"))
    serial = leaf_and_chain(chain_pem)[0].serial_number
    assert pebble.certificate_status(serial) == "Valid"

    # B's own signature is not enough: it did not order the certificate.
    with pytest.raises(AcmeProblem) as refused:
        current.revoke(chain_pem, 1)
    assert refused.value.type == "unauthorized", refused.value
    assert pebble.certificate_status(serial) == "Valid"

    # Signed with the certificate's own key, through B's session (no account needed).
    key_pem = private_key_to_pem(key)
    current.revoke_with_certificate_key(chain_pem, key_pem, 1)
    assert pebble.certificate_status(serial) == "Revoked"
    with pytest.raises(AcmeProblem) as again:
        current.revoke_with_certificate_key(chain_pem, key_pem, 1)
    assert again.value.type == "alreadyRevoked", again.value
    # B's session still orders with B's account afterwards.
    assert current.new_order(make_csr(key, ["after.revoke.test"]).encode()).status == (
        STATUS_PENDING
    )


def test_revoking_with_a_key_that_is_not_the_certificates_is_refused_before_the_ca(
    pebble: PebbleInstance,
) -> None:
    session = registered_session(pebble)
    key = generate_private_key("ECC")
    _, chain_pem = issue(session, make_csr(key, ["wrongkey.revoke.test"]).encode("ascii"))
    other_key = private_key_to_pem(generate_private_key("ECC"))
    with pytest.raises(AcmeProblem, match="not the certificate's") as refused:
        session.revoke_with_certificate_key(chain_pem, other_key, 0)
    assert refused.value.kind is ProblemKind.REJECTED
    with pytest.raises(AcmeProblem, match="cannot sign a revocation"):
        session.revoke_with_certificate_key(chain_pem, "not a key", 0)
    serial = leaf_and_chain(chain_pem)[0].serial_number
    assert pebble.certificate_status(serial) == "Valid"
