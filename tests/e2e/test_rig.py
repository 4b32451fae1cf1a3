"""The rig works: Pebble over verified TLS, NSD through unbound, nginx's redirect, EAB, cleanup.

Also the CertokServer harness, driven with a stand-in server until `certok serve` exists.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import httpx
import josepy as jose
import pytest
from acme import client as acme_client
from acme import messages as acme_messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certok.demo import dns_probe
from tests.rig import Rig, RigError
from tests.rig.certok_server import CertokServer
from tests.rig.ports import PEBBLE_DEFAULT_PORTS

pytestmark = pytest.mark.e2e

STAND_IN = [sys.executable, str(Path(__file__).parents[1] / "rig" / "stand_in_server.py")]
CERTOK_SERVE_EXISTS = importlib.util.find_spec("certok.__main__") is not None


def _verified_client(rig: Rig) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(rig.ca_bundle))
    return httpx.Client(verify=context, trust_env=False, timeout=5.0)


def _acme(rig: Rig, *, eab: bool) -> tuple[acme_client.ClientV2, jose.JWKEC]:
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    net = acme_client.ClientNetwork(
        key, alg=jose.ES256, verify_ssl=str(rig.ca_bundle), user_agent="certok-rig-test"
    )
    net.session.trust_env = False  # no proxy from the environment: loopback only
    url = rig.eab_directory_url if eab else rig.directory_url
    directory = acme_client.ClientV2.get_directory(url, net)
    return acme_client.ClientV2(directory, net), key


def _answer(rig: Rig, name: str, rdtype: str) -> set[str]:
    response = rig.resolve(name, rdtype)
    wanted = dns.rdatatype.from_text(rdtype)
    found = [rrset for rrset in response.answer if rrset.rdtype == wanted]
    return {rdata.to_text() for rrset in found for rdata in rrset}


# --- Pebble ------------------------------------------------------------------------------------


def test_pebble_directory_answers_over_tls_verified_with_the_rig_ca(rig: Rig) -> None:
    with _verified_client(rig) as client:
        directory = client.get(rig.directory_url).json()
    assert directory["newAccount"].startswith(f"https://127.0.0.1:{rig.acme_port}/")
    assert directory["newOrder"]


def test_pebble_tls_is_not_trusted_without_the_rig_ca(rig: Rig) -> None:
    # The positive test above means something only if verification is really on.
    with (
        httpx.Client(verify=ssl.create_default_context(), trust_env=False) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(rig.directory_url)


def test_pebble_roots_is_a_ca_certificate_per_pebble(rig: Rig) -> None:
    plain = x509.load_pem_x509_certificate(rig.pebble_roots().encode())
    eab = x509.load_pem_x509_certificate(rig.pebble_roots(eab=True).encode())
    assert plain.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert plain.fingerprint(plain.signature_hash_algorithm) != eab.fingerprint(
        eab.signature_hash_algorithm
    )


def test_eab_pebble_requires_external_account_binding(rig: Rig) -> None:
    with _verified_client(rig) as client:
        plain_meta = client.get(rig.directory_url).json().get("meta", {})
        eab_meta = client.get(rig.eab_directory_url).json().get("meta", {})
    assert eab_meta["externalAccountRequired"] is True
    assert not plain_meta.get("externalAccountRequired", False)

    acme, _key = _acme(rig, eab=True)
    with pytest.raises(acme_messages.Error) as refused:
        acme.new_account(acme_messages.NewRegistration.from_data(terms_of_service_agreed=True))
    assert refused.value.code == "externalAccountRequired"


@pytest.mark.parametrize("kid", ["kid-1", "kid-2"])
def test_eab_pebble_accepts_the_exposed_kids(rig: Rig, kid: str) -> None:
    acme, key = _acme(rig, eab=True)
    binding = acme_messages.ExternalAccountBinding.from_data(
        account_public_key=key.public_key(),
        kid=kid,
        hmac_key=rig.eab_keys[kid],
        directory=acme.directory,
    )
    account = acme.new_account(
        acme_messages.NewRegistration.from_data(
            terms_of_service_agreed=True, external_account_binding=binding
        )
    )
    assert account.body.status == "valid"
    assert (rig.eab_kid, rig.eab_hmac_key) == ("kid-1", rig.eab_keys["kid-1"])


def test_restart_pebble_applies_nonce_reject_and_restores(rig: Rig) -> None:
    root_before = rig.pebble_roots()
    with rig.pebble_settings(nonce_reject=100, which="plain"):
        acme, _key = _acme(rig, eab=False)
        # acme retries badNonce once; with every nonce rejected the second try fails too.
        with pytest.raises(acme_messages.Error) as rejected:
            acme.new_account(acme_messages.NewRegistration.from_data(terms_of_service_agreed=True))
        assert rejected.value.code == "badNonce"
    acme, _key = _acme(rig, eab=False)
    account = acme.new_account(
        acme_messages.NewRegistration.from_data(terms_of_service_agreed=True)
    )
    assert account.body.status == "valid"
    # Pebble makes a new root at every start: callers must fetch it again.
    assert rig.pebble_roots() != root_before


# --- DNS ---------------------------------------------------------------------------------------


def test_unbound_resolves_customer_names_via_nsd(rig: Rig) -> None:
    assert _answer(rig, "www.customer.test", "A") == {"127.0.0.1"}
    assert _answer(rig, "customer.test", "A") == {"127.0.0.1"}
    missing = rig.resolve("absent.customer.test", "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN


def test_unbound_never_leaves_the_rig(rig: Rig) -> None:
    # local-zone "." refuse: a name outside the rig's zones never reaches the real root servers.
    assert rig.resolve("example.com", "A").rcode() == dns.rcode.REFUSED


def test_set_customer_records_shows_a_cname_through_unbound(
    rig: Rig, customer_records: Callable[[list[str]], None]
) -> None:
    name = "_acme-challenge.www.customer.test"
    assert rig.resolve(name, "CNAME").rcode() == dns.rcode.NXDOMAIN
    customer_records([f"_acme-challenge.www IN CNAME 0123456789abcdef.{rig.certok_zone}."])
    assert _answer(rig, name, "CNAME") == {f"0123456789abcdef.{rig.certok_zone}."}

    # A second change replaces the first one, at once.
    customer_records([f"_acme-challenge.www IN CNAME fedcba9876543210.{rig.certok_zone}."])
    assert _answer(rig, name, "CNAME") == {f"fedcba9876543210.{rig.certok_zone}."}

    customer_records([])
    assert rig.resolve(name, "CNAME").rcode() == dns.rcode.NXDOMAIN


def test_set_customer_records_replaces_base_records_of_the_same_name_and_type(
    rig: Rig, customer_records: Callable[[list[str]], None]
) -> None:
    customer_records(
        ["www IN A 127.0.0.9", 'www IN CAA 0 issue "letsencrypt.org"', "www2 IN CNAME www"]
    )
    assert _answer(rig, "www.customer.test", "A") == {"127.0.0.9"}
    assert _answer(rig, "www.customer.test", "CAA") == {'0 issue "letsencrypt.org"'}
    assert _answer(rig, "www2.customer.test", "CNAME") == {"www.customer.test."}
    # Untouched names keep the base data.
    assert _answer(rig, "www3.customer.test", "A") == {"127.0.0.1"}


def test_set_customer_records_refuses_bad_lines_and_keeps_the_zone(
    rig: Rig, customer_records: Callable[[list[str]], None]
) -> None:
    customer_records(["www IN A 127.0.0.7"])
    with pytest.raises(RigError, match="bad zone-file line"):
        customer_records(["www IN NOSUCHTYPE x"])
    assert _answer(rig, "www.customer.test", "A") == {"127.0.0.7"}


def test_flush_resolver_talks_to_unbound(rig: Rig) -> None:
    rig.flush_resolver()
    assert rig.unbound_control("status").count("is running") == 1


def test_flush_resolver_lets_a_query_in_flight_finish(rig: Rig) -> None:
    # A restarted certok may already be answering a CA's validation when the harness flushes
    # unbound: the CA's lookup must still get its answer (dropping unbound's request list left
    # it waiting until its own timeout, and the order started over).
    name = f"held.{rig.certok_zone}."
    with (
        _HeldAuthority(rig.certok_dns_port, name, "in-flight") as authority,
        ThreadPoolExecutor(1) as pool,
    ):
        lookup = pool.submit(dns_probe.ask, rig.unbound_port, name, "TXT", timeout=10)
        assert authority.holding.wait(10), "unbound never asked certok's DNS port"
        rig.flush_resolver()
        authority.release.set()
        response = lookup.result(timeout=15)
    assert response.rcode() == dns.rcode.NOERROR
    assert dns_probe.answer_texts(response, name, dns.rdatatype.TXT) == {'"in-flight"'}


class _HeldAuthority:
    """An authoritative server on certok's DNS port that holds its first answer until released."""

    def __init__(self, port: int, name: str, text: str) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self._name, self._text = dns.name.from_text(name), text
        self.holding, self.release, self._stop = (threading.Event() for _ in range(3))
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _HeldAuthority:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, client = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            if not self.holding.is_set():
                self.holding.set()
                self.release.wait(10)
            self._sock.sendto(self._answer(dns.message.from_wire(wire)).to_wire(), client)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        if question.name == self._name and question.rdtype == dns.rdatatype.TXT:
            rrset = response.find_rrset(
                response.answer, self._name, dns.rdataclass.IN, dns.rdatatype.TXT, create=True
            )
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, self._text), 0)
        return response


# --- nginx -------------------------------------------------------------------------------------


def _nginx_get(rig: Rig, host: str, path: str) -> httpx.Response:
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        return client.get(f"http://127.0.0.1:{rig.nginx_port}{path}", headers={"Host": host})


def test_nginx_redirects_the_challenge_path_to_certok(rig: Rig) -> None:
    response = _nginx_get(rig, "www.customer.test", "/.well-known/acme-challenge/abc_-1")
    assert response.status_code == 302
    assert response.headers["location"] == (
        f"https://svc.{rig.certok_zone}:{rig.certok_https_port}/v1/dv/www.customer.test/abc_-1"
    )


def test_nginx_redirect_drops_the_port_from_host_like_pebble_sees_it(rig: Rig) -> None:
    # Pebble sends Host: name:port; nginx's $host drops the port.
    response = _nginx_get(
        rig, f"www.customer.test:{rig.nginx_port}", "/.well-known/acme-challenge/tok"
    )
    assert response.headers["location"].endswith("/v1/dv/www.customer.test/tok")


def test_nginx_leaves_other_paths_and_bad_tokens_alone(rig: Rig) -> None:
    # The seed's regex allows only [-_a-zA-Z0-9]: a dot is not a token character.
    for path in ("/", "/.well-known/acme-challenge/a.b"):
        response = _nginx_get(rig, "www.customer.test", path)
        assert response.status_code == 200
        assert response.text == "customer site www.customer.test\n"


def test_nginx_production_shaped_redirect_has_no_port(rig: Rig) -> None:
    response = _nginx_get(rig, "www5.customer.test", "/.well-known/acme-challenge/t0k")
    assert response.status_code == 302
    assert response.headers["location"] == (
        f"https://svc443.{rig.certok_zone}/v1/dv/www5.customer.test/t0k"
    )


# --- lifecycle and ports -----------------------------------------------------------------------


def test_a_rig_starts_fast_and_leaves_nothing_behind() -> None:
    began = time.monotonic()
    with Rig() as second:
        runtime_dir = second.runtime_dir
        pids = list(second.service_pids.values())
        assert len(pids) == 5
        assert second.resolve("www.customer.test", "A").rcode() == dns.rcode.NOERROR
    elapsed = time.monotonic() - began
    assert elapsed < 5.0, f"rig start + stop took {elapsed:.1f} s"
    assert not runtime_dir.exists()
    for pid in pids:
        assert pid is not None
        alive = subprocess.run(
            ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
        )
        # Gone, or at most a zombie waiting for PID 1 to reap it.
        assert alive.stdout.strip() in ("", "Z"), f"pid {pid} still runs: {alive.stdout}"


def test_a_busy_port_fails_loudly() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(RigError, match=f"port 127.0.0.1:{busy} for nginx is busy"):
            Rig(ports={"nginx": busy})


def test_a_port_taken_after_allocation_fails_the_start_with_the_log_tail() -> None:
    rig = Rig()
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", rig.acme_port))
        thief.listen()
        with pytest.raises(RigError, match=r"(?s)pebble exited with code .*address already in use"):
            rig.start()
    assert not rig.started


def test_pebble_default_ports_are_refused() -> None:
    port = min(PEBBLE_DEFAULT_PORTS)
    with pytest.raises(RigError, match="Pebble's default ports"):
        Rig(ports={"acme": port})


def test_rig_ports_are_distinct_and_not_pebble_defaults(rig: Rig) -> None:
    ports = [
        rig.nsd_port,
        rig.unbound_port,
        rig.acme_port,
        rig.management_port,
        rig.eab_acme_port,
        rig.eab_management_port,
        rig.nginx_port,
        rig.tls_alpn_port,
        rig.certok_dns_port,
        rig.certok_https_port,
        rig.certok_api_port,
    ]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & PEBBLE_DEFAULT_PORTS
    assert rig.resolver_address == f"127.0.0.1:{rig.unbound_port}"


# --- CertokServer harness ----------------------------------------------------------------------


def test_env_for_points_certok_at_the_rig(rig: Rig, tmp_path: Path) -> None:
    env = CertokServer.env_for(
        rig, tmp_path / "data", apply_wait_seconds=1, CERTOK_LOG_LEVEL="DEBUG", dns_ttl=None
    )
    assert env["CERTOK_DATA_DIR"] == str(tmp_path / "data")
    assert env["CERTOK_API_PORT"] == str(rig.certok_api_port)
    assert env["CERTOK_DNS_PORT"] == str(rig.certok_dns_port)
    assert env["CERTOK_DNS_ZONE"] == "acme.svc.test"
    assert json.loads(env["CERTOK_RESOLVERS"]) == [rig.resolver_address]
    assert env["CERTOK_ISSUERS__LETSENCRYPT__DIRECTORY"] == rig.directory_url
    assert env["CERTOK_ISSUERS__ZEROSSL__DIRECTORY"] == rig.directory_url
    assert env["CERTOK_ISSUERS__GOOGLE__DIRECTORY"] == rig.eab_directory_url
    assert env["CERTOK_ISSUERS__GOOGLE__CA_BUNDLE"] == str(rig.ca_bundle)
    assert env["CERTOK_ISSUERS__GOOGLE__EAB_KID"] == "kid-1"
    assert env["CERTOK_ISSUERS__GOOGLE__EAB_HMAC_KEY"] == rig.eab_keys["kid-1"]
    assert env["CERTOK_ACME_POLL_SECONDS"] == "0.05"
    assert env["CERTOK_APPLY_WAIT_SECONDS"] == "1"
    assert env["CERTOK_LOG_LEVEL"] == "DEBUG"
    assert "CERTOK_DNS_TTL" not in env


def test_env_for_is_accepted_by_certok_settings(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variables must mean to certok's own settings loader what the harness intends.
    from certok.settings import Settings

    for key, value in CertokServer.env_for(rig, tmp_path / "data").items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.api_port == rig.certok_api_port
    assert settings.dns_port == rig.certok_dns_port
    assert settings.resolvers == [rig.resolver_address]
    assert settings.issuers["google"].eab_kid == "kid-1"
    assert settings.issuers["google"].directory == rig.eab_directory_url
    assert settings.issuers["letsencrypt"].ca_bundle == rig.ca_bundle
    assert settings.acme_poll_seconds == 0.05


def test_certok_server_harness_lifecycle_with_a_stand_in(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTOK_DNS_ZONE", "leaked.from.the.shell")
    env = CertokServer.env_for(rig, tmp_path / "data", api_port=rig.allocate_port("stand-in"))
    server = CertokServer(env, workdir=tmp_path, command=STAND_IN, rig=rig)
    with server:
        seen = httpx.get(f"{server.base_url}/env", trust_env=False).json()
        assert seen == env  # exactly the harness's variables, nothing inherited
        first_pid = server.pid

        server.kill()
        assert not server.running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base_url}/healthz", trust_env=False)

        server.restart()
        assert server.pid != first_pid
        assert httpx.get(f"{server.base_url}/healthz", trust_env=False).status_code == 200

        server.restart(hard=True)
        assert server.running
    assert not server.running
    assert "stand-in: SIGTERM, stopping" in server.log_text()
    assert server.log_text().count("stand-in: listening") == 3


def test_certok_server_that_exits_at_once_raises_with_the_log_tail(
    rig: Rig, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", "import sys; print('boom: bad setting'); sys.exit(3)"]
    server = CertokServer(CertokServer.env_for(rig, tmp_path), workdir=tmp_path, command=command)
    with pytest.raises(RigError, match=r"(?s)exited with code 3.*boom: bad setting"):
        server.start()
    assert not server.running


def test_certok_server_that_never_answers_times_out_and_is_killed(rig: Rig, tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('stuck', flush=True); import time; time.sleep(60)"]
    server = CertokServer(
        CertokServer.env_for(rig, tmp_path), workdir=tmp_path, command=command, startup_timeout=1
    )
    with pytest.raises(RigError, match=r"(?s)not answering GET .*/healthz.*stuck"):
        server.start()
    assert not server.running


@pytest.mark.skipif(not CERTOK_SERVE_EXISTS, reason="certok has no `python -m certok` yet")
def test_real_certok_with_a_bad_setting_exits_with_a_clear_error(rig: Rig, tmp_path: Path) -> None:
    env = CertokServer.env_for(rig, tmp_path / "data", default_issuer="no-such-ca")
    server = CertokServer(env, workdir=tmp_path, startup_timeout=10)
    with pytest.raises(RigError, match=r"(?s)exited with code.*no-such-ca"):
        server.start()


@pytest.mark.skipif(not CERTOK_SERVE_EXISTS, reason="certok has no `python -m certok` yet")
def test_real_certok_starts_on_the_rig(certok_server: Callable[..., CertokServer]) -> None:
    server = certok_server()
    assert httpx.get(f"{server.base_url}/healthz", trust_env=False).status_code == 200
