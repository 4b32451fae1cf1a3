"""apply → issued latency on the loopback rig, next to the floor and two real clients, in one run.

    python bench/issuance_latency.py [--runs 20] [--peer-runs 5] [--peer-cases one,wildcard]
                                     [--skip-peers] [--json FILE]

Starts the rig (Pebble with PEBBLE_VA_NOSLEEP=1, nonce reject 0, unbound, NSD), then measures two
cases, dns-01 for one name and a wildcard with its apex in one certificate
(`*.customer.test,customer.test`, one `_acme-challenge` CNAME for both, so two TXT values at one
name while the order runs):
- floor: a minimal client on certbot's `acme` library (0.1 s polls) driving the same Pebble in
  this process, its TXT values served from memory by a minimal dnspython responder in a
  process of its own (`ChallengeDns`: no database, no API) on the port the rig's unbound sends
  the certok zone to;
- certbot 2.1 and lego 4.9 (Debian packages, `apt-get install certbot lego`), one name by
  default: certbot `--manual` with auth/cleanup hooks, lego with its `exec` DNS provider. Both
  hooks are one small script that hands the TXT value to this process over a loopback HTTP
  endpoint, which puts it into the same in-memory responder the floor uses. Timed as the wall
  time of the whole command (process start included) with the ACME account already registered.
  Both run with their defaults: for a wildcard with its apex, lego's exec provider solves the
  two challenges one after the other, `EXEC_SEQUENCE_INTERVAL` (60 s) apart;
- certok: the real `certok serve`, timing from the first `GET /v1/cert/apply` of a fresh code
  to the response that says `issued` (ECC, letsencrypt issuer; the API holds the request open,
  `apply_wait_seconds=10`).
Each client gets one unmeasured warm-up issuance first (account registration, connections).
Prints median / p90 of each, the ratio to the floor, and the exact peer command lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx
import josepy
from acme import challenges, client, messages
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    Measurement,
    Report,
    Target,
    bench_parser,
    clean_environment,
    describe_machine,
    finish,
    free_port,
    invocation,
    percentile,
    run_subcommand,
    script_command,
    start_process,
)

from certok.crypto import generate_private_key, make_csr
from tests.rig import Rig
from tests.rig.certok_server import CertokServer
from tests.rig.process import ManagedProcess

BENCH = "issuance_latency"
POLL = 0.1
WARMUP = 1
# Labels in certok's zone the in-process DNS server answers for (certok allocates its own).
FLOOR_LABEL = "f100rf100rf100r0"
CERTBOT_LABEL = "ce27b07ce27b07c0"
LEGO_LABEL = "1e901e901e901e90"
FLOOR_NAME = "www3.customer.test"
CERTBOT_NAME = "www4.customer.test"
LEGO_NAME = "www5.customer.test"
CERTOK_NAME = "www.customer.test"
APEX = "customer.test"
WILDCARD_AND_APEX = ("*.customer.test", APEX)
# Targets from the issue (p50 of apply → issued).
TARGET_ONE_NAME_SECONDS = 0.5
TARGET_WILDCARD_SECONDS = 0.6
PEER_TIMEOUT_SECONDS = 180
CASES = {"one": "dns-01, one name", "wildcard": "dns-01, *.customer.test + customer.test"}


# --- TXT values from memory, on the certok zone's port ------------------------------------------


class TxtZone:
    """Answers for certok's zone from TXT values held in memory: the logic of `ChallengeDns`.

    Allocated labels answer NODATA without a value (as certok's zone does), other names in the
    zone NXDOMAIN, names outside it REFUSED; AA set, TTL 0 throughout.
    """

    def __init__(self, zone: str, labels: Iterable[str]) -> None:
        self.zone = dns.name.from_text(zone)
        self.labels = {label.lower() for label in labels}
        self.values: dict[str, list[str]] = {}
        self._soa = dns.rrset.from_text(
            self.zone, 0, "IN", "SOA", f"ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 0"
        )
        self._ns = dns.rrset.from_text(self.zone, 0, "IN", "NS", f"ns1.{zone}.")

    def add(self, label: str, value: str) -> None:
        values = self.values.setdefault(label.lower(), [])
        if value not in values:
            values.insert(0, value)

    def remove(self, label: str, value: str) -> None:
        values = self.values.get(label.lower(), [])
        if value in values:
            values.remove(value)

    def answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if not question.name.is_subdomain(self.zone):
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        response.flags |= dns.flags.AA
        relative = question.name.relativize(self.zone).to_text().lower()
        if question.name == self.zone and question.rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            response.answer.append(self._soa if question.rdtype == dns.rdatatype.SOA else self._ns)
        elif relative in self.labels or question.name == self.zone:
            values = self.values.get(relative, [])
            if question.rdtype == dns.rdatatype.TXT and values:
                quoted = [f'"{value}"' for value in values]
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 0, "IN", "TXT", quoted)
                )
            else:
                response.authority.append(self._soa)  # NODATA
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa)
        return response.to_wire()


def serve_txt(argv: list[str]) -> None:
    """`issuance_latency.py serve-txt --port P --control C --zone Z --labels FILE`: DNS on P
    (UDP), and on C (UDP) the commands `add <label> <value>` / `remove <label> <value>`, each
    answered `ok` once the next query sees the change. Run by `ChallengeDns`."""
    parser = argparse.ArgumentParser(prog="issuance_latency.py serve-txt")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--labels", type=Path, required=True)
    args = parser.parse_args(argv)
    zone = TxtZone(args.zone, json.loads(args.labels.read_text()))
    dns_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_socket.bind((LOOPBACK, args.port))
    control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    control.bind((LOOPBACK, args.control))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"TXT for {args.zone} on {LOOPBACK}:{args.port}, control on {args.control}", flush=True)
    with selectors.DefaultSelector() as selector:
        selector.register(dns_socket, selectors.EVENT_READ)
        selector.register(control, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data, peer = sock.recvfrom(4096)
                if sock is dns_socket:
                    with contextlib.suppress(Exception):  # a malformed query gets no answer
                        sock.sendto(zone.answer(data), peer)
                    continue
                command, _, rest = data.decode().partition(" ")
                label, _, value = rest.partition(" ")
                if command == "add":
                    zone.add(label, value)
                elif command == "remove":
                    zone.remove(label, value)
                sock.sendto(b"ok", peer)


class ChallengeDns:
    """An authoritative server for certok's zone answering TXT values held in memory.

    Deliberately not certok's own DNS server code: the floor and the peers are references for
    the *client* side, so what serves their TXT values must be obviously right and must not
    change when certok's server does. It runs as a process of its own (`serve-txt`), so a floor
    with hundreds of threads in this process cannot starve it of the interpreter and make the
    CA's resolver time out. It binds the port the rig's unbound sends the certok zone to, so
    `certok serve` must not run at the same time. add / remove are thread-safe and return once
    the next query sees the change (the two commands are idempotent, so a lost datagram is
    simply sent again).
    """

    def __init__(self, rig: Rig, labels: Iterable[str]) -> None:
        self._rig = rig
        self._labels = sorted({label.lower() for label in labels})
        self._control_port = rig.allocate_port("challenge dns control")
        self._process: ManagedProcess | None = None

    def __enter__(self) -> Self:
        directory = Path(tempfile.mkdtemp(prefix="challenge-dns-", dir=self._rig.runtime_dir))
        labels = directory / "labels.json"
        labels.write_text(json.dumps(self._labels))
        argv = script_command(
            __file__, "serve-txt", "--port", str(self._rig.certok_dns_port),
            "--control", str(self._control_port), "--zone", self._rig.certok_zone,
            "--labels", str(labels),
        )  # fmt: skip
        self._process = start_process(
            "challenge-dns",
            argv,
            workdir=directory,
            ready=self._answers_control,
            what="answering its control port",
        )
        # unbound may have marked the port dead while nothing listened on it.
        self._rig.flush_resolver()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.stop()

    def add(self, label: str, value: str) -> None:
        self._send(f"add {label} {value}")

    def remove(self, label: str, value: str) -> None:
        self._send(f"remove {label} {value}")

    def _answers_control(self) -> bool:
        self._send("ping", attempts=1)
        return True

    def _send(self, command: str, attempts: int = 5) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            for attempt in range(attempts):
                sock.sendto(command.encode(), (LOOPBACK, self._control_port))
                try:
                    if sock.recv(16) == b"ok":
                        return
                except TimeoutError:
                    if attempt == attempts - 1:
                        raise
        raise RuntimeError(f"challenge DNS did not acknowledge {command!r}")


class HookEndpoint:
    """Loopback HTTP endpoint for the peers' hook script: POST /present or /cleanup with
    `{"domain": ..., "value": ...}`; the domain is mapped to its label in certok's zone."""

    def __init__(self, dns: ChallengeDns, labels_by_name: Mapping[str, str], zone: str) -> None:
        self._dns = dns
        self._labels = dict(labels_by_name)
        self._zone_suffix = "." + zone
        self.calls: list[tuple[str, str, str]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length))
                    endpoint.handle(self.path.strip("/"), body["domain"], body["value"])
                except Exception as error:  # tell the hook, which tells the peer
                    self._reply(400, f"{type(error).__name__}: {error}\n")
                    return
                self._reply(200, "ok\n")

            def _reply(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the benchmark prints its own lines

        self._server = ThreadingHTTPServer((LOOPBACK, free_port("peer hook endpoint")), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def label_for(self, domain: str) -> str:
        """certbot gives the name being validated; lego the challenge name after CNAMEs."""
        name = domain.strip().rstrip(".").lower().removeprefix("*.")
        name = name.removeprefix("_acme-challenge.")
        if name in self._labels:
            return self._labels[name]
        if name.endswith(self._zone_suffix):
            return name[: -len(self._zone_suffix)]
        raise ValueError(f"no label known for {domain!r}")

    def handle(self, action: str, domain: str, value: str) -> None:
        label = self.label_for(domain)
        self.calls.append((action, domain, value))
        if action == "present":
            self._dns.add(label, value)
        elif action == "cleanup":
            self._dns.remove(label, value)
        else:
            raise ValueError(f"unknown action {action!r}")


HOOK_SCRIPT = '''\
#!{python} -I
"""DNS hook for certbot (--manual-*-hook "hook.py present|cleanup") and lego (EXEC_PATH)."""
import json, os, sys, urllib.request

if len(sys.argv) == 4:  # lego exec provider: present|cleanup <fqdn> <value>
    action, domain, value = sys.argv[1:]
else:  # certbot manual hook: the action as argument, the rest in the environment
    action = sys.argv[1]
    domain, value = os.environ["CERTBOT_DOMAIN"], os.environ["CERTBOT_VALIDATION"]
request = urllib.request.Request(
    "{url}/" + action,
    data=json.dumps({{"domain": domain, "value": value}}).encode(),
    headers={{"Content-Type": "application/json"}},
)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
with opener.open(request, timeout=10) as response:
    response.read()
'''


def write_hook(directory: Path, url: str) -> Path:
    path = directory / "dns-hook.py"
    path.write_text(HOOK_SCRIPT.format(python=sys.executable, url=url))
    path.chmod(0o755)
    return path


# --- the floor -----------------------------------------------------------------------------------


@dataclass
class FloorClient:
    """A minimal ACME client on certbot's `acme` library: single steps, 0.1 s polls."""

    acme: client.ClientV2
    key: josepy.JWKEC
    timeout: float

    @classmethod
    def register(cls, rig: Rig, *, timeout: float = 45.0) -> FloorClient:
        """A new account at the rig's Pebble; `timeout` bounds every HTTP request."""
        key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        acme = cls._client(rig, key, timeout)
        acme.net.account = acme.new_account(
            messages.NewRegistration.from_data(terms_of_service_agreed=True)
        )
        return cls(acme, key, timeout)

    def another(self, rig: Rig) -> FloorClient:
        """A client of its own (connections, nonces) for another thread, on the same account."""
        acme = self._client(rig, self.key, self.timeout)
        acme.net.account = self.acme.net.account
        return FloorClient(acme, self.key, self.timeout)

    @staticmethod
    def _client(rig: Rig, key: josepy.JWKEC, timeout: float) -> client.ClientV2:
        net = client.ClientNetwork(
            key, alg=josepy.ES256, verify_ssl=str(rig.ca_bundle), timeout=timeout
        )
        return client.ClientV2(client.ClientV2.get_directory(rig.directory_url, net), net)

    def account_answers(self) -> bool:
        """POST-as-GET of the account: Pebble answers it only while its store lock is free."""
        try:
            self.acme._post_as_get(self.acme.net.account.uri)
        except Exception:
            return False
        return True

    def issue(self, names: Sequence[str], dns: ChallengeDns, label: str) -> float:
        """new order → present → answer → poll → finalize → poll → download; seconds taken
        (CSR made before the clock starts, TXT values removed after it stops)."""
        acme = self.acme
        csr = make_csr(generate_private_key("ECC"), list(names)).encode()
        started = time.perf_counter()
        order = acme.new_order(csr)
        pending = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # Pebble reuses an authorization now and then, even at reuse 0
            challb = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))
            pending.append((authz, challb, challb.chall.validation(self.key)))
        for _, _, value in pending:
            dns.add(label, value)
        for _, challb, _ in pending:
            acme.answer_challenge(challb, challb.response(self.key))
        for authz, _, _ in pending:
            while True:
                authzr, _ = acme.poll(authz)
                if authzr.body.status != messages.STATUS_PENDING:
                    break
                time.sleep(POLL)
            if authzr.body.status != messages.STATUS_VALID:
                raise RuntimeError(f"floor: authorization {authzr.body.status}: {authzr.body}")
        order = acme.begin_finalization(order)
        while order.body.status != messages.STATUS_VALID:
            if order.body.status == messages.STATUS_INVALID:
                raise RuntimeError(f"floor: order invalid: {order.body.error}")
            time.sleep(POLL)
            body = messages.Order.from_json(acme._post_as_get(order.uri).json())
            order = order.update(body=body)
        acme._post_as_get(order.body.certificate)
        elapsed = time.perf_counter() - started
        for _, _, value in pending:
            dns.remove(label, value)
        return elapsed


def floor_runs(
    floor: FloorClient, dns: ChallengeDns, names: Sequence[str], label: str, runs: int
) -> list[float]:
    for _ in range(WARMUP):
        floor.issue(names, dns, label)
    return [floor.issue(names, dns, label) for _ in range(runs)]


# --- certbot and lego -------------------------------------------------------------------------


@dataclass
class PeerResult:
    name: str
    case: str
    times: list[float] = field(default_factory=list)
    command: str = ""
    error: str | None = None
    startup: float | None = None  # wall time of `<peer> --version`: process start alone


def _peer_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra)
    return env


def _timed(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> tuple[float, str]:
    """Run argv; (wall seconds, output). Raises RuntimeError with the output's tail on failure."""
    started = time.perf_counter()
    done = subprocess.run(
        list(argv),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PEER_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise RuntimeError(f"exit {done.returncode}: {shlex.join(argv)}\n{tail}")
    return elapsed, output


def _startup_seconds(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> float:
    samples = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, check=False)
        samples.append(time.perf_counter() - started)
    return min(samples)


def certbot_runs(
    rig: Rig, hook: Path, workdir: Path, names: Sequence[str], case: str, runs: int
) -> PeerResult:
    """`certbot certonly --manual` with the hook; each run in a fresh copy of a config dir
    whose account was registered once beforehand (unmeasured)."""
    result = PeerResult("certbot 2.1 (--manual, hooks)", case)
    base = workdir / "certbot-registered"
    env = _peer_env({"REQUESTS_CA_BUNDLE": str(rig.ca_bundle)})
    common = ["--server", rig.directory_url, "--non-interactive", "--agree-tos"]
    common += ["--register-unsafely-without-email"]

    def dirs(root: Path) -> list[str]:
        return ["--config-dir", str(root / "config"), "--work-dir", str(root / "work"),
                "--logs-dir", str(root / "logs")]  # fmt: skip

    try:
        if not base.exists():
            _timed(["certbot", "register", *dirs(base), *common], env, workdir)
        result.startup = _startup_seconds(["certbot", "--version"], env, workdir)
        for index in range(WARMUP + runs):
            root = workdir / f"certbot-{case}-{index}"
            shutil.copytree(base / "config", root / "config")
            argv = ["certbot", "certonly", *dirs(root), *common, "--manual"]
            argv += ["--preferred-challenges", "dns"]
            argv += ["--manual-auth-hook", f"{hook} present"]
            argv += ["--manual-cleanup-hook", f"{hook} cleanup"]
            for name in names:
                argv += ["-d", name]
            elapsed, _ = _timed(argv, env, workdir)
            if index >= WARMUP:
                result.times.append(elapsed)
            result.command = f"REQUESTS_CA_BUNDLE={rig.ca_bundle} {shlex.join(argv)}"
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        result.error = str(error)
    return result


def lego_runs(
    rig: Rig, hook: Path, workdir: Path, names: Sequence[str], case: str, runs: int
) -> PeerResult:
    """`lego --dns exec ... run`; the first run (unmeasured) registers the account in --path."""
    result = PeerResult("lego 4.9 (--dns exec)", case)
    env = _peer_env({"LEGO_CA_CERTIFICATES": str(rig.ca_bundle), "EXEC_PATH": str(hook)})
    argv = ["lego", "--accept-tos", "--email", "bench@customer.test"]
    argv += ["--server", rig.directory_url, "--path", str(workdir / "lego"), "--key-type", "ec256"]
    argv += ["--dns", "exec", "--dns.resolvers", rig.resolver_address, "--dns.disable-cp"]
    for name in names:
        argv += ["--domains", name]
    argv.append("run")
    result.command = f"LEGO_CA_CERTIFICATES={rig.ca_bundle} EXEC_PATH={hook} {shlex.join(argv)}"
    try:
        result.startup = _startup_seconds(["lego", "--version"], env, workdir)
        for index in range(WARMUP + runs):
            elapsed, _ = _timed(argv, env, workdir)
            if index >= WARMUP:
                result.times.append(elapsed)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        result.error = str(error)
    return result


def challenge_cname(name: str, target: str) -> str:
    """The customer-zone line delegating `name`'s challenge name to `target`."""
    relative = "" if name == APEX else "." + name.removesuffix("." + APEX)
    return f"_acme-challenge{relative} IN CNAME {target}."


def peers_available() -> dict[str, bool]:
    return {name: shutil.which(name) is not None for name in ("certbot", "lego")}


# --- certok --------------------------------------------------------------------------------------


def certok_runs(rig: Rig, workdir: Path, runs: int, cases: Sequence[str]) -> dict[str, list[float]]:
    """apply → issued with `certok serve`, per case; each case's delegation set up first."""
    # Runs of one tenant, one after another: kept clear of the sharing limits (docs/quotas.md).
    server = CertokServer.for_rig(
        rig,
        workdir,
        apply_wait_seconds=10,
        tenant_acme_orders_per_window=0,
        issuers__letsencrypt__new_orders_per_window=0,
    )
    server.start()
    try:
        token = server.create_tenant("bench")
        http = httpx.Client(
            base_url=server.base_url, headers={"httpsok-token": token}, timeout=60, trust_env=False
        )
        domains = {"one": CERTOK_NAME, "wildcard": ",".join(WILDCARD_AND_APEX)}
        records = []
        for case in cases:
            item = dv(http, domains[case])["items"][0]
            records.append(f"{item['name']} IN CNAME {item['value']}.")
        rig.set_customer_records(records)
        results: dict[str, list[float]] = {}
        for case in cases:
            for _ in range(WARMUP):
                certok_issue(http, domains[case])
            results[case] = [certok_issue(http, domains[case]) for _ in range(runs)]
        return results
    finally:
        server.stop()


def dv(http: httpx.Client, domains: str) -> dict[str, Any]:
    body = http.get("/v1/cert/dv", params={"domains": domains}).json()
    if body.get("data") is None:
        raise SystemExit(f"dv for {domains} failed: {body}")
    return body["data"]


def certok_issue(http: httpx.Client, domains: str) -> float:
    """Seconds from the first apply of a fresh code to the answer `issued`."""
    code = dv(http, domains)["code"]
    if not code:
        raise SystemExit(f"dv for {domains} gave no code (delegation not visible?)")
    started = time.perf_counter()
    params = {"code": code, "issuer": "letsencrypt"}
    while True:
        data = http.get("/v1/cert/apply", params=params).json()["data"]
        if data["status"] != "pending":
            break
    elapsed = time.perf_counter() - started
    if data["status"] != "issued":
        raise SystemExit(f"order failed: {data}")
    return elapsed


# --- report --------------------------------------------------------------------------------------


def describe(times: Sequence[float]) -> str:
    ordered = sorted(times)
    return (
        f"median {statistics.median(ordered):.3f} s  p90 {percentile(ordered, 0.9):.3f} s  "
        f"(n={len(ordered)})"
    )


def latency(times: Sequence[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median": statistics.median(ordered),
        "p90": percentile(ordered, 0.9),
        "min": ordered[0],
        "max": ordered[-1],
    }


@dataclass
class Row:
    who: str
    case: str
    times: list[float]
    note: str = ""
    error: str | None = None


def build_report(rows: list[Row], commands: list[str]) -> Report:
    report = Report(commands=commands)
    floors = {
        row.case: statistics.median(row.times)
        for row in rows
        if row.who.startswith("floor") and row.times
    }
    for row in rows:
        if row.error or not row.times:
            report.measurements.append(
                Measurement(BENCH, f"{row.who}, {CASES[row.case]}", note=f"FAILED: {row.error}")
            )
            continue
        median = statistics.median(row.times)
        floor = floors.get(row.case)
        report.measurements.append(
            Measurement(
                bench=BENCH,
                case=f"{row.who}: {CASES[row.case]}",
                ratio=median / floor if floor else None,
                ratio_of="floor's latency",
                latency=latency(row.times),
                note="; ".join(part for part in (f"n={len(row.times)}", row.note) if part),
            )
        )
    for case, target in (("one", TARGET_ONE_NAME_SECONDS), ("wildcard", TARGET_WILDCARD_SECONDS)):
        row = next((r for r in rows if r.who == "certok serve" and r.case == case), None)
        if row is None:
            continue
        median = statistics.median(row.times) if row.times else float("nan")
        floor = floors.get(case)
        relative = f" ({median / floor:.2f}x floor)" if floor else ""
        report.targets.append(
            Target(
                BENCH,
                f"apply -> issued p50 <= {target:g} s, {CASES[case]}",
                f"p50 {median:.3f} s{relative}",
                median <= target,
            )
        )
    return report


def run(args: argparse.Namespace) -> Report:
    clean_environment()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    peer_cases = [c.strip() for c in args.peer_cases.split(",") if c.strip()]
    for case in {*cases, *peer_cases}:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; know {', '.join(CASES)}")
    available = peers_available()
    missing = [name for name, ok in available.items() if not ok]
    if missing and not args.skip_peers:
        print(f"{BENCH}: not installed, skipped: {', '.join(missing)} "
              f"(apt-get install -y {' '.join(missing)})", flush=True)  # fmt: skip
    print(f"{BENCH}: {describe_machine()}", flush=True)
    rows: list[Row] = []
    commands: list[str] = []
    floor_names = {"one": (FLOOR_NAME,), "wildcard": WILDCARD_AND_APEX}
    with Rig() as rig, tempfile.TemporaryDirectory(prefix="certok-bench-issuance-") as tmp:
        workdir = Path(tmp)
        labels = {FLOOR_NAME: FLOOR_LABEL, APEX: FLOOR_LABEL, CERTBOT_NAME: CERTBOT_LABEL,
                  LEGO_NAME: LEGO_LABEL}  # fmt: skip
        rig.set_customer_records(
            [challenge_cname(name, f"{label}.{rig.certok_zone}") for name, label in labels.items()]
        )
        with (
            ChallengeDns(rig, set(labels.values())) as dns,
            HookEndpoint(dns, labels, rig.certok_zone) as endpoint,
        ):
            floor = FloorClient.register(rig)
            for case in cases:
                print(f"{BENCH}: floor, {CASES[case]}, {args.runs} runs", flush=True)
                times = floor_runs(floor, dns, floor_names[case], FLOOR_LABEL, args.runs)
                rows.append(Row("floor (acme library, 0.1 s polls)", case, times))
            if not args.skip_peers:
                hook = write_hook(workdir, endpoint.url)
                peer_names = {
                    "certbot": {"one": (CERTBOT_NAME,), "wildcard": WILDCARD_AND_APEX},
                    "lego": {"one": (LEGO_NAME,), "wildcard": WILDCARD_AND_APEX},
                }
                runners: dict[str, Callable[..., PeerResult]] = {
                    "certbot": certbot_runs,
                    "lego": lego_runs,
                }
                for peer, runner in runners.items():
                    if not available[peer]:
                        continue
                    for case in peer_cases:
                        print(f"{BENCH}: {peer}, {CASES[case]}, {args.peer_runs} runs", flush=True)
                        result = runner(
                            rig, hook, workdir, peer_names[peer][case], case, args.peer_runs
                        )
                        if result.error:
                            print(f"{BENCH}: {peer} failed: {result.error}", flush=True)
                        note = ""
                        if result.startup is not None:
                            note = f"process start alone ({peer} --version) {result.startup:.2f} s"
                        rows.append(Row(result.name, case, result.times, note, result.error))
                        if result.command:
                            commands.append(result.command)
        print(f"{BENCH}: certok serve, {', '.join(CASES[c] for c in cases)}, {args.runs} runs",
              flush=True)  # fmt: skip
        for case, times in certok_runs(rig, workdir / "certok", args.runs, cases).items():
            rows.append(Row("certok serve", case, times, "apply_wait_seconds=10"))
    commands.insert(0, invocation(__file__))

    print()
    for case in (c for c in CASES if c in {*cases, *peer_cases}):
        print(f"apply → issued, {CASES[case]} (Pebble PEBBLE_VA_NOSLEEP=1, nonce reject 0)")
        floor_median = None
        for row in (r for r in rows if r.case == case):
            if row.error or not row.times:
                print(f"  {row.who}: FAILED")
                continue
            print(f"  {row.who + ':':<36} {describe(row.times)}")
            if row.who.startswith("floor"):
                floor_median = statistics.median(row.times)
        certok = next((r for r in rows if r.case == case and r.who == "certok serve"), None)
        if certok and certok.times and floor_median:
            ratio = statistics.median(certok.times) / floor_median
            print(f"  {'certok / floor (median):':<36} {ratio:.2f}x")
    return build_report(rows, commands)


def main() -> None:
    if run_subcommand({"serve-txt": serve_txt}):
        return
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=20, help="timed issuances, floor/certok (20)")
    parser.add_argument("--peer-runs", type=int, default=5, help="timed certbot/lego runs (5)")
    parser.add_argument("--cases", default="one,wildcard", help="floor/certok cases (one,wildcard)")
    parser.add_argument(
        "--peer-cases", default="one", help="certbot/lego cases (one; add wildcard: ~2 min more)"
    )
    parser.add_argument("--skip-peers", action="store_true", help="no certbot / lego")
    args = parser.parse_args()
    finish(run(args), args.json, show_commands=True)


if __name__ == "__main__":
    main()
