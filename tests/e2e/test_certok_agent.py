"""certok-agent on a customer's host, end to end: installed with the one-line installer, the
real certok server, Pebble issuing through the tenant's DNS delegation, a real nginx (and, for
the explicit-entries mode, a small TLS server of the test's own).

One story in the order a host lives it: not delegated yet (the CNAMEs to add, nothing
touched); the first run deploys and proves the served certificate; a run with nothing due
writes and reloads nothing; the server's renewal time passing deploys the next certificate;
a syntax error in an unrelated included file makes `nginx -t` fail (files restored, nginx
still serving the previous certificate, the failure in the host's log); a kill -9 between
writing and reloading leaves a whole pair, and the next run finishes the job.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.e2e.agent_host import CustomerHost
from tests.e2e.flow import User, delegate, verify_chain
from tests.kit.certs import self_signed_pem
from tests.rig import Rig
from tests.rig.certok_server import CertokServer

NAMES = ["app.customer.test", "api.customer.test"]
ENTRY_NAME = "mail.customer.test"
PEBBLE_ISSUER = "Pebble Intermediate"

TLS_SERVER = """
import signal, socket, ssl, sys, threading
cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
state = {}
def load(*_):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    state["context"] = context
load()
signal.signal(signal.SIGHUP, load)
listener = socket.create_server(("127.0.0.1", port))
print("ready", flush=True)
while True:
    connection, _ = listener.accept()
    try:
        with state["context"].wrap_socket(connection, server_side=True) as tls:
            tls.recv(1)
    except (OSError, ssl.SSLError):
        pass
"""


class Agent:
    """certok-agent as the installer put it under a throwaway root, with a config for the host."""

    def __init__(self, server: CertokServer, token: str, root: Path) -> None:
        script = httpx.get(f"{server.base_url}/v1/agent/install.sh", trust_env=False).text
        env = {"PATH": os.environ["PATH"], "CERTOK_AGENT_ROOT": str(root)}
        done = subprocess.run(
            ["sh", "-s", "--", "--token", token],
            input=script,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.install_output = done.stdout
        self.root = root
        self.archive = root / "usr/local/lib/certok-agent/certok-agent.pyz"
        self.config = root / "etc/certok-agent/agent.ini"
        self.state_dir = root / "var/lib/certok-agent"
        self.server = server

    def configure(self, nginx: str, *, mode: str = "nginx", extra: str = "") -> None:
        self.config.write_text(
            "[agent]\n"
            f"server = {self.server.base_url}\n"
            f"token_file = {self.root}/etc/certok-agent/token\n"
            f"mode = {mode}\n"
            f"nginx = {nginx}\n"
            f"state_dir = {self.state_dir}\n"
            "verify_seconds = 20\n" + extra
        )

    def command(self, *args: str) -> list[str]:
        return [sys.executable, str(self.archive), "--config", str(self.config), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*(args or ("run",))),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        print(f"--- certok-agent {' '.join(args)} (exit {done.returncode}) ---")
        print(done.stdout + done.stderr)
        return done

    @property
    def uuid(self) -> str:
        return (self.state_dir / "uuid").read_text().strip()


@pytest.fixture
def customer(rig: Rig) -> Iterator[Callable[[str], CustomerHost]]:
    made: list[CustomerHost] = []

    def make(token: str) -> CustomerHost:
        host = CustomerHost(rig.allocate_port("own-agent-nginx"), NAMES, "", token)
        made.append(host)
        host.start_nginx()
        return host

    yield make
    for host in made:
        host.stop_nginx()


def leaf_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def host_log(server: CertokServer, token: str, uuid: str) -> list[str]:
    response = httpx.get(
        f"{server.base_url}/v1/agents/hosts/{uuid}/log",
        headers={"httpsok-token": token},
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return [f"{e['type']}: {e['message']}" for e in response.json()["data"]["entries"]]


def test_certok_agent_deploys_proves_renews_rolls_back_and_recovers(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, customer, tmp_path: Path
) -> None:
    server: CertokServer = certok_server()
    token = server.create_tenant("own-agent")
    user = User(server, token)
    host: CustomerHost = customer(token)
    agent = Agent(server, token, tmp_path / "root")
    assert "cron entry" in agent.install_output  # no systemd in the throwaway root
    agent.configure(str(host.bin / "nginx"))
    self_signed = host.cert.read_bytes()
    host.key.chmod(0o640)  # the operator's choice of mode: kept across deployments

    # --- not delegated yet: the CNAMEs to add, exit 3, nothing touched ------------------------
    first = agent.run()
    assert first.returncode == 3, first.stdout
    dv = user.dv(",".join(NAMES))
    for item in dv["items"]:
        assert f"_acme-challenge.{item['domain']}. CNAME {item['value']}." in first.stdout
    assert host.cert.read_bytes() == self_signed

    # --- delegated: the first run deploys, and nginx is seen serving it -----------------------
    delegate(rig, customer_records, dv)
    deployed = agent.run()
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "deployed certificate" in deployed.stdout
    leaf = leaf_of(host.cert)
    served = host.wait_served(leaf.serial_number)
    assert served.serial_number == leaf.serial_number
    assert PEBBLE_ISSUER in served.issuer.rfc4514_string()
    for name in NAMES:
        served_for_name = host.wait_served_pem(leaf.serial_number, name=name)
        assert x509.load_pem_x509_certificates(served_for_name.encode())[0] == leaf
    verify_chain(rig, host.wait_served_pem(leaf.serial_number), tmp_path, eab=True)
    assert oct(host.key.stat().st_mode & 0o777) == "0o640"
    (backup,) = list((agent.state_dir / "backups").iterdir())
    assert (next(backup.iterdir()) / "cert.pem").read_bytes() == self_signed

    # --- nothing due: no write, no reload ------------------------------------------------------
    workers, mtimes = (
        host.worker_pids(),
        (host.cert.stat().st_mtime_ns, host.key.stat().st_mtime_ns),
    )
    quiet = agent.run()
    assert quiet.returncode == 0 and "up to date" in quiet.stdout, quiet.stdout
    assert host.worker_pids() == workers
    assert (host.cert.stat().st_mtime_ns, host.key.stat().st_mtime_ns) == mtimes
    status = subprocess.run(agent.command("status"), capture_output=True, text=True, check=True)
    assert str(host.cert) in status.stdout and "unchanged" in status.stdout

    # --- the server's renewal time passes: the next certificate is deployed ---------------------
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    shift = (leaf.not_valid_before_utc + lifetime * 0.9) - leaf.not_valid_before_utc
    server.env["CERTOK_CLOCK_OFFSET_SECONDS"] = str(int(shift.total_seconds()))
    server.restart()
    renewed = agent.run()
    assert renewed.returncode == 0 and "renewal time" in renewed.stdout, renewed.stdout
    second = leaf_of(host.cert)
    assert second.serial_number != leaf.serial_number
    assert host.wait_served(second.serial_number).serial_number == second.serial_number
    server.env.pop("CERTOK_CLOCK_OFFSET_SECONDS")
    server.restart()

    # --- an unrelated included file breaks `nginx -t`: restored, still serving, reported --------
    broken = host.site / "conf.d" / "zz-unrelated.conf"
    broken.write_text("this_is_not_a_directive on;\n")
    before = (host.cert.read_bytes(), host.key.read_bytes())
    refused = agent.run("run", "--force")
    assert refused.returncode == 1, refused.stdout
    assert "nginx -t failed" in refused.stdout and "restored" in refused.stdout
    assert (host.cert.read_bytes(), host.key.read_bytes()) == before
    assert host.served().serial_number == second.serial_number
    log = host_log(server, token, agent.uuid)
    assert any(line.startswith("deploy.failed:") and "nginx -t failed" in line for line in log)
    assert any(line.startswith("deploy.succeeded:") for line in log)
    broken.unlink()

    # --- kill -9 between writing and reloading: a whole pair, finished by the next run ----------
    marker, reached = tmp_path / "pause", tmp_path / "reached"
    pausing = host.bin / "nginx-pausing"
    pausing.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-s" ] && [ -e {marker} ]; then touch {reached}; exec sleep 300; fi\n'
        f'exec {host.bin / "nginx"} "$@"\n'
    )
    pausing.chmod(0o755)
    marker.touch()
    agent.configure(str(pausing))
    process = subprocess.Popen(
        agent.command("run", "--force"),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not reached.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the agent never reloaded"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    pair_leaf = leaf_of(host.cert)  # a whole PEM, and the key beside it matches it
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(host.key.read_bytes(), None)
    assert key.public_key().public_numbers() == pair_leaf.public_key().public_numbers()  # type: ignore[union-attr]
    assert host.served().serial_number == second.serial_number  # never reloaded
    marker.unlink()
    repaired = agent.run()
    assert repaired.returncode == 0, repaired.stdout
    assert "stopped before it proved" in repaired.stdout
    assert leaf_of(host.cert).serial_number == pair_leaf.serial_number
    assert host.wait_served(pair_leaf.serial_number).serial_number == pair_leaf.serial_number


def test_certok_agent_explicit_entries_deploy_to_any_tls_service(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, tmp_path: Path
) -> None:
    server: CertokServer = certok_server()
    token = server.create_tenant("own-agent-entries")
    user = User(server, token)
    delegate(rig, customer_records, user.dv(ENTRY_NAME))
    cert, key = tmp_path / "mail" / "fullchain.pem", tmp_path / "mail" / "privkey.pem"
    cert.parent.mkdir()
    from certok.crypto import generate_private_key, private_key_to_pem

    first_key = generate_private_key("ECC")
    key.write_text(private_key_to_pem(first_key))
    cert.write_text(self_signed_pem(first_key, [ENTRY_NAME], lifetime=dt.timedelta(days=30)))
    port = rig.allocate_port("own-agent-tls")
    tls = subprocess.Popen(
        [sys.executable, "-c", TLS_SERVER, str(cert), str(key), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert tls.stdout is not None and tls.stdout.readline().strip() == "ready"
        agent = Agent(server, token, tmp_path / "root")
        agent.configure(
            "false",
            mode="entries",
            extra=(
                f"[certificate mail]\nnames = {ENTRY_NAME}\ncert = {cert}\nkey = {key}\n"
                f"reload = kill -HUP {tls.pid}\ncheck = 127.0.0.1:{port}\n"
            ),
        )
        done = agent.run()
        assert done.returncode == 0 and "deployed certificate" in done.stdout, done.stdout
        served = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", ENTRY_NAME],
            input="",
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        served_leaf = x509.load_pem_x509_certificate(
            served[served.index("-----BEGIN CERTIFICATE-----") :].encode()
        )
        assert served_leaf.serial_number == leaf_of(cert).serial_number
        assert PEBBLE_ISSUER in served_leaf.issuer.rfc4514_string()
    finally:
        tls.kill()
        tls.wait(timeout=10)
        if tls.stdout is not None:
            tls.stdout.close()
