"""Launch code for the tests of many certok nodes on one PostgreSQL: a PostgreSQL instance of
the test's own (`pg_ctl`), network namespaces joined by a bridge (one "host" per node), a
resolver the nodes can reach, and certok nodes started inside their namespaces.

    with cluster(rig, tmp_path, nodes=3) as (shared, postgres):
        node = shared.node(0, tmp_path / "node-0", settings=MANY_ORDERS_SETTINGS)
        node.cli("db", "upgrade")
        node.start()

Everything is created by the test and removed after it: the namespaces, the veth pairs and
the bridge exist only on this machine, with addresses in 10.213.0.0/16 that nothing outside
it routes.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from certok.demo.certok_env import rig_environment
from tests.e2e.flow import NEW_ORDER_PATH, OrderCountingProxy, User, _jws_identifiers
from tests.rig import Rig
from tests.rig.certok_server import CertokServer
from tests.rig.errors import RigError
from tests.rig.fault_proxy import FaultProxy, Rule, stall
from tests.rig.process import ManagedProcess, tcp_is_listening

PG_BIN = Path("/usr/lib/postgresql/15/bin")
_COMMAND_TIMEOUT_SECONDS = 60.0


def _run(argv: Sequence[str], *, user: str | None = None) -> str:
    """Run a command (as `user` when given and we are root); its output, or RigError."""
    if user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_SECONDS, check=False
    )
    if done.returncode != 0:
        raise RigError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# --- PostgreSQL ---------------------------------------------------------------------------------


class _Started:
    """`with thing:` starts it and always closes it (stops, removes what it made)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # whatever the failed start left running or on disk
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class PostgresInstance(_Started):
    """A PostgreSQL cluster in a temp dir, run with `pg_ctl` (as the `postgres` user when the
    test runs as root: initdb refuses root). Trust authentication, on its own port."""

    def __init__(self, *, listen: Sequence[str] = ()) -> None:
        # Not under pytest's tmp_path: that is root's alone, and PostgreSQL runs as `postgres`.
        self.directory = Path(tempfile.mkdtemp(prefix="certok-postgres-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.addresses = ["127.0.0.1", *listen]
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None

    @staticmethod
    def available() -> bool:
        return (PG_BIN / "pg_ctl").exists()

    def start(self) -> Self:
        if not self.data.exists():
            if self._user is not None:
                shutil.chown(self.directory, self._user)
            _run(
                [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync"],
                user=self._user,
            )  # fmt: skip
            with (self.data / "pg_hba.conf").open("a") as rules:
                for address in self.addresses:
                    rules.write(f"host all all {address}/24 trust\n")
        self._pg_ctl("start", "-l", str(self.log_path), "-o", self._options())
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop it: `fast` (clients cut, a clean shutdown) or `immediate` (like a crash)."""
        self._pg_ctl("stop", "-m", mode)

    def close(self) -> None:
        with contextlib.suppress(RigError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str, host: str = "127.0.0.1") -> str:
        return f"postgresql+psycopg://postgres@{host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def _options(self) -> str:
        # fsync off: a test's data need not survive a power cut. Enough connections for three
        # nodes' pools (docs/deployment.md sizes them).
        return (
            f"-c listen_addresses={','.join(self.addresses)} -p {self.port} "
            f"-c unix_socket_directories={self.directory} -c fsync=off "
            "-c max_connections=300"
        )

    def _pg_ctl(self, *args: str) -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", *args], user=self._user)


def database_engine(url: str) -> Engine:
    return create_engine(url, pool_size=2, pool_pre_ping=True)


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql), params).scalar_one()


def order_states(engine: Engine, codes: Sequence[str]) -> dict[str, str]:
    """code → state of the order it started (codes without an order are left out)."""
    sql = (
        "SELECT v.code, o.state FROM verification_codes v JOIN orders o ON o.id = v.order_id "
        "WHERE v.code = ANY(:codes)"
    )
    with engine.connect() as connection:
        rows = connection.execute(text(sql), {"codes": list(codes)}).all()
    return {str(code): str(state) for code, state in rows}


def wait_until_settled(engine: Engine, codes: Sequence[str], timeout: float) -> dict[str, str]:
    """Until no order of `codes` is pending (or `timeout`): code → state."""
    deadline = time.monotonic() + timeout
    while True:
        states = order_states(engine, codes)
        settled = len(states) == len(codes) and "pending" not in states.values()
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.1)


# Pebble's finalize URL ends in the ACME order's id, as its order URL does.
_FINALIZE_PREFIX = "/finalize-order/"


class IssuanceCountingProxy(OrderCountingProxy):
    """The order-counting proxy, also counting the certificates the CA issued per name set: a
    finalize it answered 200, for the ACME order whose creation it saw."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._names_by_order: dict[str, tuple[str, ...]] = {}
        self._issued: list[tuple[str, ...]] = []

    def issued_certificates(self) -> collections.Counter[tuple[str, ...]]:
        with self._created_lock:
            return collections.Counter(self._issued)

    def upstream_exchange(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        answer = super().upstream_exchange(method, target, headers, body)
        status, _, answer_headers, _ = answer
        path = target.split("?")[0]
        if method == "POST" and path == NEW_ORDER_PATH and status == 201:
            location = dict((k.lower(), v) for k, v in answer_headers).get("location", "")
            names = _jws_identifiers(body or b"")
            with self._created_lock:
                self._names_by_order[location.rsplit("/", 1)[-1]] = names
        elif method == "POST" and path.startswith(_FINALIZE_PREFIX) and status == 200:
            with self._created_lock:
                self._issued.append(self._names_by_order[path.rsplit("/", 1)[-1]])
        return answer


# The CA a little slow on the steps after an ACME order exists, so that orders are surely in
# flight when a node or the database goes away (as in test_crashes.py).
_CA_PAUSES = ((r"^/authZ/", 0.1), (r"^/chalZ/", 0.3), (r"^/finalize-order/", 0.3))


def slow_down_the_ca(proxy: FaultProxy) -> None:
    for path, seconds in _CA_PAUSES:
        proxy.add_rule(Rule(method="POST", path=path, times=None, action=stall(seconds)))


# Many orders from one tenant at once: the per-tenant and per-account limits are for other
# tests.
MANY_ORDERS_SETTINGS: dict[str, object] = {
    "apply_wait_seconds": 0,
    "worker_poll_seconds": 0.2,
    "code_ttl_seconds": 900,
    "rate_limit_dv_per_minute": 0,
    "rate_limit_apply_per_minute": 0,
    "tenant_max_pending_orders": 0,
    "tenant_acme_orders_per_window": 0,
    "issuers__letsencrypt__new_orders_per_window": 0,
}


@dataclass
class KeptAliveUser(User):
    """A user whose calls share one HTTP client: on a loaded machine making a client for each
    call (httpx.get) costs more than certok's answer, for hundreds of calls."""

    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30, trust_env=False))

    def __post_init__(self) -> None:
        # Tests drop their users without closing them: the client and its kept-alive
        # connections close when the user is collected (or at exit), not as leaked sockets.
        weakref.finalize(self, self.client.close)

    def get(self, path: str, **params: str) -> httpx.Response:
        headers = {"httpsok-token": self.token}
        return self.client.get(self.server.base_url + path, params=params, headers=headers)


# --- network namespaces -------------------------------------------------------------------------


class NamespaceNetwork(_Started):
    """`count` network namespaces, each with one veth into a bridge in the root namespace.

    The root namespace holds the bridge's address (`gateway`, 10.213.<n>.1): what runs there
    (PostgreSQL, Pebble's proxy, a resolver) is reachable from every namespace, and each
    namespace's address (`addresses[i]`, 10.213.<n>.<i + 2>) from the root namespace.
    """

    def __init__(self, count: int) -> None:
        # One subnet and set of names per test process: two runs on one machine do not meet.
        self.tag = os.getpid() % 250 + 1
        self.bridge = f"ctkbr{self.tag}"
        self.namespaces = [f"certok-{self.tag}-n{i}" for i in range(count)]
        self._veths = [f"ctk{self.tag}v{i}" for i in range(count)]
        self.gateway = f"10.213.{self.tag}.1"
        self.addresses = [f"10.213.{self.tag}.{i + 2}" for i in range(count)]

    def start(self) -> Self:
        self.close()  # what a killed earlier run with this tag left behind
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for namespace, veth, address in zip(
                self.namespaces, self._veths, self.addresses, strict=True
            ):
                _run(["ip", "netns", "add", namespace])
                _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"])
                _run(["ip", "link", "set", veth + "p", "netns", namespace])
                _run(["ip", "link", "set", veth, "master", self.bridge])
                _run(["ip", "link", "set", veth, "up"])
                inside = ["ip", "-n", namespace]
                _run([*inside, "link", "set", veth + "p", "name", "eth0"])
                _run([*inside, "addr", "add", f"{address}/24", "dev", "eth0"])
                _run([*inside, "link", "set", "eth0", "up"])
                _run([*inside, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        # Deleting a namespace deletes the veth end inside it, and with it the pair.
        for namespace in self.namespaces:
            with contextlib.suppress(RigError):
                _run(["ip", "netns", "del", namespace])
        for veth in self._veths:
            with contextlib.suppress(RigError):
                _run(["ip", "link", "del", veth])
        with contextlib.suppress(RigError):
            _run(["ip", "link", "del", self.bridge])

    def exec_prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[index]]


def _why_no_cluster() -> str | None:
    """Why namespaces or PostgreSQL cannot be had here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if not PostgresInstance.available():
        return f"no PostgreSQL 15 binaries in {PG_BIN}"
    return None


def require_cluster() -> None:
    """Skip the test when namespaces or PostgreSQL cannot be had (fail under CI=true, as the
    rest of the end-to-end set does: a green CI run must mean these tests ran)."""
    _require(_why_no_cluster())


def require_postgres() -> None:
    _require(None if PostgresInstance.available() else f"no PostgreSQL 15 binaries in {PG_BIN}")


def _require(missing: str | None) -> None:
    if missing is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {missing}", pytrace=False)
    pytest.skip(missing)


class NodeResolver(_Started):
    """A recursive resolver for the nodes (each host's local resolver), on the bridge address:
    an unbound that forwards every question to the rig's unbound and caches nothing."""

    def __init__(self, rig: Rig, address: str, directory: Path) -> None:
        self.address = address
        self.port = free_port(address)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "unbound.conf"
        config.write_text(
            "server:\n"
            f"    interface: {address}\n"
            f"    port: {self.port}\n"
            "    do-ip6: no\n"
            f"    access-control: {address.rsplit('.', 1)[0]}.0/24 allow\n"
            '    username: ""\n'
            '    chroot: ""\n'
            f'    directory: "{directory}"\n'
            f'    pidfile: "{directory}/unbound.pid"\n'
            "    use-syslog: no\n"
            "    do-not-query-localhost: no\n"
            '    module-config: "iterator"\n'
            '    local-zone: "test." nodefault\n'
            "    cache-max-ttl: 0\n"
            "    cache-max-negative-ttl: 0\n"
            "    num-threads: 1\n"
            "forward-zone:\n"
            '    name: "."\n'
            f"    forward-addr: 127.0.0.1@{rig.unbound_port}\n"
        )
        self._process = ManagedProcess(
            "node resolver",
            ["unbound", "-d", "-c", str(config)],
            log_path=directory / "unbound.log",
            cwd=directory,
        )

    @property
    def resolver_address(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> Self:
        self._process.start()
        self._process.wait_until(lambda: tcp_is_listening(self.port, self.address), "listening", 15)
        return self

    def close(self) -> None:
        self._process.stop()


def delegate_zone_to(rig: Rig, addresses: Sequence[str], port: int) -> None:
    """The resolver's delegation for certok's zone names every node's DNS server."""
    zone = rig.certok_zone + "."
    rig.unbound_control("stub_remove", zone)
    rig.unbound_control("stub_add", zone, *(f"{address}@{port}" for address in addresses))
    rig.flush_resolver()


def proxy_certificate(directory: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for `address` (the ACME proxy on the bridge): cert and key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "proxy.pem", directory / "proxy.key"
    _run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=certok test ACME proxy",
         "-addext", f"subjectAltName=IP:{address}", "-keyout", str(key), "-out", str(cert)],
    )  # fmt: skip
    return cert, key


# --- certok nodes -------------------------------------------------------------------------------

DNS_PORT = 53
API_PORT = 8080


class NodeServer(CertokServer):
    """`certok serve` inside a network namespace, its API on the namespace's address.

    With `release`, the node (and its `cli`) runs the certok package found in that directory
    instead of this checkout's: another version of certok, installed beside this one.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        workdir: Path,
        host: str,
        prefix: list[str],
        release: Path | None = None,
    ) -> None:
        super().__init__(env, workdir=workdir, command=[*prefix, *_CERTOK_SERVE])
        self.host = host
        self.release = release

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def _child_env(self) -> dict[str, str]:
        env = super()._child_env()
        if self.release is not None:
            env["PYTHONPATH"] = str(self.release)
        return env


_CERTOK_SERVE = [sys.executable, "-m", "certok", "serve"]


@dataclass
class Cluster:
    """What the nodes share: the rig, the network, the database, the ACME proxy, a secret."""

    rig: Rig
    network: NamespaceNetwork
    database_url: str
    proxy: IssuanceCountingProxy
    proxy_ca: Path
    resolver: str
    secret_key: str

    def node_env(self, index: int, workdir: Path, **extra: object) -> dict[str, str]:
        address = self.network.addresses[index]
        zone = self.rig.certok_zone
        settings: dict[str, object] = {
            "database_url": self.database_url,
            "secret_key": self.secret_key,
            "node_name": f"node-{index}",
            "api_host": address,
            "api_port": API_PORT,
            "public_url": f"http://{address}:{API_PORT}",
            "dns_host": address,
            "dns_port": DNS_PORT,
            "dns_nameservers": [f"ns{i + 1}.{zone}" for i in range(len(self.network.addresses))],
            "dns_nameserver_addresses": self.network.addresses,
            "resolvers": [self.resolver],
            "issuers__letsencrypt__directory": self.proxy.directory_url,
            "issuers__letsencrypt__ca_bundle": self.proxy_ca,
            "default_issuer": "letsencrypt",
            **extra,
        }
        return rig_environment(self.rig, workdir / "data", **settings)

    def node(
        self,
        index: int,
        workdir: Path,
        *,
        release: Path | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> NodeServer:
        """Node `index` (its namespace and address) with these extra settings, running
        `release` if given."""
        workdir.mkdir(parents=True, exist_ok=True)
        return NodeServer(
            self.node_env(index, workdir, **(settings or {})),
            workdir=workdir,
            host=self.network.addresses[index],
            prefix=self.network.exec_prefix(index),
            release=release,
        )


@contextlib.contextmanager
def stopped_after(nodes: Sequence[NodeServer]) -> Iterator[None]:
    """Stop every node when the block ends; their log tails go to pytest's captured output
    (shown only when the test failed)."""
    try:
        yield
    finally:
        for node in nodes:
            node.stop()
            print(f"--- {node.log_path} ---\n{node.log_text()[-3000:]}")


def new_secret_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@contextlib.contextmanager
def cluster(rig: Rig, tmp_path: Path, nodes: int) -> Iterator[tuple[Cluster, PostgresInstance]]:
    """The network, a PostgreSQL on the bridge, the nodes' resolver and the ACME proxy; the
    resolver's delegation for certok's zone names all `nodes` DNS servers."""
    require_cluster()
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(NamespaceNetwork(nodes))
        postgres = stack.enter_context(PostgresInstance(listen=[network.gateway]))
        postgres.create_database("certok")
        resolver = stack.enter_context(NodeResolver(rig, network.gateway, tmp_path / "resolver"))
        cert, key = proxy_certificate(tmp_path / "proxy", network.gateway)
        proxy = stack.enter_context(
            IssuanceCountingProxy(
                rig.directory_url,
                ca_bundle=rig.ca_bundle,
                cert_pem=cert,
                key_pem=key,
                host=network.gateway,
            )
        )
        delegate_zone_to(rig, network.addresses, DNS_PORT)
        yield (
            Cluster(
                rig=rig,
                network=network,
                database_url=postgres.url("certok", host=network.gateway),
                proxy=proxy,
                proxy_ca=cert,
                resolver=resolver.resolver_address,
                secret_key=new_secret_key(),
            ),
            postgres,
        )
