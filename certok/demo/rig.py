"""The loopback ACME rig: Pebble (plain and EAB), unbound, NSD and nginx, as a user's world.

    with Rig() as rig:
        rig.set_customer_records(["_acme-challenge.www IN CNAME 0123abcd.acme.svc.test."])
        ...  # start certok on rig.certok_dns_port / rig.certok_api_port (see certok_server.py)

Everything binds 127.0.0.1 on ports drawn per rig (checked free first) and lives in a temp
runtime dir that holds each service's config and log. Start order matters: NSD before unbound
(unbound remembers an unreachable upstream for `infra-host-ttl`), Pebble and nginx last. certok's
own DNS server is started later by the tests; unbound tolerates it being down at first, and
`flush_resolver()` forgets that it was.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import dns.message
import dns.name
import dns.rdatatype

from certok.demo import dns_probe
from certok.demo.customer_zone import CUSTOMER_ZONE, render_zone
from certok.demo.errors import RigError
from certok.demo.ports import PortAllocator
from certok.demo.process import ManagedProcess, tcp_is_listening
from certok.demo.tls import write_server_tls

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_CERTOK_ZONE = "acme.svc.test"
REQUIRED_BINARIES = {
    "pebble": "/usr/bin/pebble",
    "unbound": "unbound",
    "unbound-control": "unbound-control",
    "nsd": "nsd",
    "nsd-control": "nsd-control",
    "nginx": "nginx",
}
STARTUP_TIMEOUT_SECONDS = 15.0
CHANGE_TIMEOUT_SECONDS = 10.0
_CONTROL_TIMEOUT_SECONDS = 10.0
_PROBE_TIMEOUT_SECONDS = 0.1
_LEFTOVER_PLACEHOLDER = re.compile(r"@(?:RIG|ZONE|P_[A-Z_]+)@")
# Extra system directories: nsd/unbound/nginx live in /usr/sbin, which a non-root PATH may lack.
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")

Which = Literal["plain", "eab", "both"]


def find_binary(name: str) -> str | None:
    """Absolute path of a rig binary, also looking in the sbin directories."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    return shutil.which(name, path=search)


def missing_binaries() -> list[str]:
    """Names of the rig's programs that are not installed (empty when the rig can run)."""
    return [name for name, path in REQUIRED_BINARIES.items() if find_binary(path) is None]


def _binary(name: str) -> str:
    path = find_binary(REQUIRED_BINARIES[name])
    if path is None:
        raise RigError(
            f"{name} is not installed: apt-get install -y pebble unbound nsd nginx dnsutils "
            "(scripts/test does this when run as root)"
        )
    return path


class Rig:
    """Two Pebbles, unbound, NSD and nginx on loopback; a context manager that cleans up."""

    def __init__(
        self,
        *,
        certok_zone: str = DEFAULT_CERTOK_ZONE,
        nonce_reject: int = 0,
        ports: Mapping[str, int] | None = None,
        keep_runtime_dir: bool = False,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
    ) -> None:
        """`ports` may fix any of the names in `PORT_NAMES`; the rest are drawn free."""
        zone = certok_zone.strip().rstrip(".").lower()
        # unbound's config unblocks only `test.` (an RFC 6761 special-use name it empties).
        if not zone.endswith(".test"):
            raise RigError(f"certok_zone must be under .test (got {certok_zone!r})")
        self.certok_zone = zone
        self.customer_zone = CUSTOMER_ZONE
        self.nonce_reject = nonce_reject
        self.keep_runtime_dir = keep_runtime_dir
        self.startup_timeout = startup_timeout

        self._allocator = PortAllocator()
        given = dict(ports or {})
        unknown = set(given) - set(self.PORT_NAMES)
        if unknown:
            raise RigError(f"unknown port names {sorted(unknown)}; known: {self.PORT_NAMES}")
        chosen: dict[str, int] = {}
        for purpose in self.PORT_NAMES:
            if purpose in given:
                chosen[purpose] = self._allocator.claim(given[purpose], purpose)
            else:
                chosen[purpose] = self._allocator.allocate(purpose)
        self.nsd_port = chosen["nsd"]
        self.unbound_port = chosen["unbound"]
        self.acme_port = chosen["acme"]
        self.management_port = chosen["management"]
        self.eab_acme_port = chosen["eab_acme"]
        self.eab_management_port = chosen["eab_management"]
        self.nginx_port = chosen["nginx"]
        self.tls_alpn_port = chosen["tls_alpn"]
        self.certok_dns_port = chosen["certok_dns"]
        self.certok_https_port = chosen["certok_https"]
        self.certok_api_port = chosen["certok_api"]

        self.resolver_address = f"127.0.0.1:{self.unbound_port}"
        self.directory_url = f"https://127.0.0.1:{self.acme_port}/dir"
        self.eab_directory_url = f"https://127.0.0.1:{self.eab_acme_port}/dir"
        self.management_url = f"https://127.0.0.1:{self.management_port}"
        self.eab_management_url = f"https://127.0.0.1:{self.eab_management_port}"
        # Where the customer's nginx sends HTTP-01 requests (the seed's redirect target host).
        self.certok_service_host = f"svc.{self.certok_zone}"

        # The template's ports are bare placeholders (not JSON yet): zero them to read the keys.
        eab_template = _LEFTOVER_PLACEHOLDER.sub("0", (TEMPLATES / "pebble-eab.json").read_text())
        eab_config = json.loads(eab_template)["pebble"]
        self.eab_keys: dict[str, str] = dict(eab_config["externalAccountMACKeys"])
        self.eab_kid = "kid-1"
        self.eab_hmac_key = self.eab_keys["kid-1"]
        self.eab_kid_2 = "kid-2"
        self.eab_hmac_key_2 = self.eab_keys["kid-2"]

        self._runtime_dir: Path | None = None
        self._services: dict[str, ManagedProcess] = {}
        self._pebble_env: dict[str, dict[str, str]] = {}
        self._pebble_config: dict[str, Path] = {}
        self._pebble_binary = ""
        self._base_zone = (TEMPLATES / "customer.test.zone").read_text()
        self._zone_serial = 1
        self._zone_mtime_ns = 0
        self._customer_records: list[str] = []

    PORT_NAMES = (
        "nsd",
        "unbound",
        "acme",
        "management",
        "eab_acme",
        "eab_management",
        "nginx",
        "tls_alpn",
        "certok_dns",
        "certok_https",
        "certok_api",
    )

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def runtime_dir(self) -> Path:
        if self._runtime_dir is None:
            raise RigError("the rig is not started: call start() or use `with Rig() as rig`")
        return self._runtime_dir

    @property
    def ca_bundle(self) -> Path:
        """PEM of the throwaway CA that signed Pebble's TLS certificate: trust it for ACME."""
        return self.runtime_dir / "certs" / "ca.pem"

    @property
    def started(self) -> bool:
        return self._runtime_dir is not None

    def start(self) -> Self:
        if self.started:
            raise RigError("the rig is already started")
        binaries = {name: _binary(name) for name in REQUIRED_BINARIES}
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="certok-rig-"))
        try:
            self._prepare(binaries)
            self._start_service("nsd", self._nsd_is_serving)
            self._start_service("unbound", self._unbound_resolves_customer_zone)
            for name in ("pebble", "pebble-eab", "nginx"):
                self._services[name].start()
            self._wait_listening("pebble", self.acme_port, self.management_port)
            self._wait_listening("pebble-eab", self.eab_acme_port, self.eab_management_port)
            self._wait_listening("nginx", self.nginx_port)
        except BaseException as error:
            if isinstance(error, RigError):
                print(f"certok rig failed to start: {error}", file=sys.stderr)
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every service (TERM, then KILL) and remove the runtime dir unless kept."""
        for name in reversed(list(self._services)):
            self._services[name].stop()
        self._services.clear()
        if self._runtime_dir is not None:
            if self.keep_runtime_dir:
                print(f"certok rig: runtime dir kept at {self._runtime_dir}", file=sys.stderr)
            else:
                shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def allocate_port(self, purpose: str) -> int:
        """Another free loopback port (a second certok node, a fault-injecting proxy, ...)."""
        return self._allocator.allocate(purpose)

    @property
    def service_pids(self) -> dict[str, int | None]:
        """PID of each running service, by name (nsd, unbound, pebble, pebble-eab, nginx)."""
        return {name: service.pid for name, service in self._services.items()}

    def describe_logs(self, lines: int = 40) -> str:
        """Tails of every service's logs: print this when a test fails in an unclear way."""
        return "\n".join(service.describe_logs(lines) for service in self._services.values())

    # --- Pebble --------------------------------------------------------------------------------

    def pebble_roots(self, eab: bool = False) -> str:
        """PEM of the current Pebble root (Pebble makes a new one at every start)."""
        base = self.eab_management_url if eab else self.management_url
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        host, port = base.removeprefix("https://").rsplit(":", 1)
        connection = http.client.HTTPSConnection(host, int(port), timeout=5.0, context=context)
        try:
            connection.request("GET", "/roots/0")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        if response.status != 200:
            raise RigError(f"Pebble's /roots/0 answered {response.status}: {body[:200]}")
        return body

    def restart_pebble(
        self,
        *,
        nonce_reject: int | None = None,
        env: Mapping[str, str] | None = None,
        which: Which = "both",
    ) -> None:
        """Restart Pebble(s) with another nonce-reject rate and/or extra `PEBBLE_*` variables.

        The new settings stay until the next restart. Pebble forgets its accounts, orders and
        root on restart: fetch `pebble_roots()` again afterwards.
        """
        if not self.started:
            raise RigError("the rig is not started: there is no Pebble to restart")
        names = {"plain": ["pebble"], "eab": ["pebble-eab"], "both": ["pebble", "pebble-eab"]}
        for name in names[which]:
            settings = dict(self._pebble_env[name])
            if nonce_reject is not None:
                settings["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
            settings.update(env or {})
            self._pebble_env[name] = settings
            self._services[name].stop()
            self._services[name] = self._pebble_process(name)
            self._services[name].start()
        for name in names[which]:
            ports = {
                "pebble": (self.acme_port, self.management_port),
                "pebble-eab": (self.eab_acme_port, self.eab_management_port),
            }[name]
            self._wait_listening(name, *ports)

    @contextlib.contextmanager
    def pebble_settings(
        self,
        *,
        nonce_reject: int | None = None,
        env: Mapping[str, str] | None = None,
        which: Which = "both",
    ) -> Iterator[None]:
        """Run a block against Pebble(s) restarted with other settings; restore them after."""
        saved = {name: dict(values) for name, values in self._pebble_env.items()}
        self.restart_pebble(nonce_reject=nonce_reject, env=env, which=which)
        try:
            yield
        finally:
            self._pebble_env = saved
            self.restart_pebble(which=which)

    # --- customer DNS and the resolver ---------------------------------------------------------

    @property
    def customer_records(self) -> list[str]:
        """The test lines currently merged over the base customer zone."""
        return list(self._customer_records)

    def set_nginx_redirects(self, sites: Mapping[str, str]) -> None:
        """Serve the seed's block for each `server name → redirect target` (replacing earlier
        ones): `return 302 <target>$host/$1;`. Returns once nginx serves the new config."""
        lines = []
        for server_name, target in sites.items():
            lines += [
                "server {",
                f"    listen 127.0.0.1:{self.nginx_port};",
                f"    server_name {server_name};",
                r"    location ~ ^/\.well-known/acme-challenge/([-_a-zA-Z0-9]+)$ {",
                f"        return 302 {target}$host/$1;",
                "    }",
                "}",
            ]
        deadline = self._reload_nginx("tests.conf", lines)
        for server_name, target in sites.items():
            while True:
                location = self._nginx_location(server_name)
                if location is not None and location.startswith(target):
                    break
                if time.monotonic() > deadline:
                    raise RigError(f"nginx did not pick up the redirect for {server_name}")
                time.sleep(0.05)

    def serve_certificate(
        self, server_name: str, port: int, certificate: Path, private_key: Path
    ) -> None:
        """Serve HTTPS for `server_name` on 127.0.0.1:`port` with this certificate chain and
        key (a customer's nginx after installing what certok issued)."""
        lines = [
            "server {",
            f"    listen 127.0.0.1:{port} ssl;",
            f"    server_name {server_name};",
            f"    ssl_certificate {certificate};",
            f"    ssl_certificate_key {private_key};",
            "    location / {",
            "        default_type text/plain;",
            f'        return 200 "hello from {server_name}, over HTTPS\\n";',
            "    }",
            "}",
        ]
        self._reload_nginx(f"tls-{server_name}.conf", lines)
        self._wait_listening("nginx", port)

    def _reload_nginx(self, site: str, lines: Sequence[str]) -> float:
        """Write one site file and reload nginx; returns the deadline for what follows."""
        sites_dir = self.runtime_dir / "nginx" / "sites"
        (sites_dir / site).write_text("\n".join(lines) + "\n")
        pid = self._services["nginx"].pid
        if pid is None:
            raise RigError("nginx is not running")
        old_workers = _children(pid)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + CHANGE_TIMEOUT_SECONDS
        # A reload starts new workers and lets the old ones finish gracefully; until they have
        # exited, a new connection may still meet the old configuration (a pre-check saw "no
        # redirect" right after the probe below had seen the new one).
        while old_workers & _children(pid):
            if time.monotonic() > deadline:
                raise RigError("nginx's old workers did not exit after a reload")
            time.sleep(0.02)
        return deadline

    def _nginx_location(self, server_name: str) -> str | None:
        connection = http.client.HTTPConnection("127.0.0.1", self.nginx_port, timeout=2.0)
        try:
            connection.request(
                "GET", "/.well-known/acme-challenge/probe", headers={"Host": server_name}
            )
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        return response.getheader("location")

    def set_customer_records(self, extra: Sequence[str]) -> None:
        """Make customer.test hold the base records plus `extra`, visible through unbound.

        `extra` are zone-file lines relative to customer.test (`_acme-challenge.www IN CNAME
        0123abcd.acme.svc.test.`); each replaces the base's records of its name and type. Returns
        only when unbound answers the new serial and every RRset in `extra`. An empty list puts
        the base zone back.
        """
        serial = self._zone_serial + 1
        text, expected = render_zone(self._base_zone, extra, serial)
        self._write_zone(text)
        self._zone_serial = serial
        self._customer_records = list(extra)

        deadline = time.monotonic() + CHANGE_TIMEOUT_SECONDS
        self.nsd_control("reload", CUSTOMER_ZONE)
        last_reload = time.monotonic()
        while dns_probe.soa_serial(self.nsd_port, CUSTOMER_ZONE, recursion_desired=False) != serial:
            if time.monotonic() > deadline:
                raise RigError(
                    f"NSD did not load serial {serial} of {CUSTOMER_ZONE}\n"
                    + self._services["nsd"].describe_logs()
                )
            if time.monotonic() - last_reload > 1.0:
                self.nsd_control("reload", CUSTOMER_ZONE)
                last_reload = time.monotonic()
            time.sleep(0.02)

        while True:
            self.flush_resolver(infra=False)
            serial_seen = dns_probe.soa_serial(self.unbound_port, CUSTOMER_ZONE)
            missing = [rec for rec in expected if not dns_probe.shows(self.unbound_port, rec)]
            if serial_seen == serial and not missing:
                return
            if time.monotonic() > deadline:
                raise RigError(
                    f"unbound still answers old data for {CUSTOMER_ZONE} (serial {serial_seen}, "
                    f"want {serial}; not yet shown: {missing})\n"
                    + self._services["unbound"].describe_logs()
                )
            time.sleep(0.05)

    def flush_resolver(self, *, infra: bool = True) -> None:
        """Make unbound forget cached answers for both zones, and (infra) which servers were down.

        Call this after starting certok's DNS server when unbound may have tried it while it was
        still down: otherwise unbound may keep answering SERVFAIL for up to `infra-host-ttl`.
        """
        if infra:
            self.unbound_control("flush_infra", "all")
        self.unbound_control("flush_zone", CUSTOMER_ZONE)
        self.unbound_control("flush_zone", self.certok_zone)
        self.unbound_control("flush_requestlist")

    def resolve(self, name: str, rdtype: str = "A") -> dns.message.Message:
        """Ask unbound (the rig's recursive resolver) one question; returns the full response."""
        return dns_probe.ask(self.unbound_port, name, dns.rdatatype.from_text(rdtype))

    def unbound_control(self, *args: str) -> str:
        return self._control("unbound-control", self.runtime_dir / "unbound" / "unbound.conf", args)

    def nsd_control(self, *args: str) -> str:
        return self._control("nsd-control", self.runtime_dir / "nsd" / "nsd.conf", args)

    # --- internals -----------------------------------------------------------------------------

    def _control(self, program: str, config: Path, args: Sequence[str]) -> str:
        argv = [_binary(program), "-c", str(config), *args]
        try:
            done = subprocess.run(  # noqa: S603 - a rig binary, fixed arguments
                argv, capture_output=True, text=True, timeout=_CONTROL_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise RigError(f"{' '.join(argv)} timed out") from error
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0 or output.startswith("error"):
            raise RigError(f"{' '.join(argv)} failed ({done.returncode}): {output}")
        return output

    def _render(self, template: str, destination: Path) -> Path:
        values = {
            "@RIG@": str(self.runtime_dir),
            "@ZONE@": self.certok_zone,
            "@P_NSD@": str(self.nsd_port),
            "@P_UNBOUND@": str(self.unbound_port),
            "@P_ACME@": str(self.acme_port),
            "@P_MGMT@": str(self.management_port),
            "@P_ACME_EAB@": str(self.eab_acme_port),
            "@P_MGMT_EAB@": str(self.eab_management_port),
            "@P_NGINX@": str(self.nginx_port),
            "@P_TLSALPN@": str(self.tls_alpn_port),
            "@P_SVCDNS@": str(self.certok_dns_port),
            "@P_SVCHTTPS@": str(self.certok_https_port),
        }
        text = (TEMPLATES / template).read_text()
        # Longest first, so @P_ACME@ never eats the front of @P_ACME_EAB@.
        for placeholder in sorted(values, key=len, reverse=True):
            text = text.replace(placeholder, values[placeholder])
        leftover = _LEFTOVER_PLACEHOLDER.search(text)
        if leftover:
            raise RigError(f"template {template} has an unknown placeholder {leftover.group()}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text)
        return destination

    def _prepare(self, binaries: Mapping[str, str]) -> None:
        rig = self.runtime_dir
        # nginx's workers run as `nobody` when the rig runs as root: they must reach their paths.
        rig.chmod(0o755)
        logs = rig / "logs"
        service_dirs = ("nsd", "unbound", "nginx/tmp", "nginx/sites", "pebble")
        for directory in (logs, *(rig / name for name in service_dirs)):
            directory.mkdir(parents=True, exist_ok=True)
        write_server_tls(rig / "certs")

        nsd_conf = self._render("nsd.conf", rig / "nsd" / "nsd.conf")
        self._write_zone(render_zone(self._base_zone, [], self._zone_serial)[0])
        unbound_conf = self._render("unbound.conf", rig / "unbound" / "unbound.conf")
        pebble_conf = self._render("pebble.json", rig / "pebble" / "pebble.json")
        eab_conf = self._render("pebble-eab.json", rig / "pebble" / "pebble-eab.json")
        nginx_conf = self._render("nginx.conf", rig / "nginx" / "nginx.conf")

        self._services["nsd"] = ManagedProcess(
            "nsd",
            [binaries["nsd"], "-d", "-c", str(nsd_conf)],
            log_path=logs / "nsd.stderr.log",
            extra_logs=[logs / "nsd.log"],
            cwd=rig / "nsd",
        )
        self._services["unbound"] = ManagedProcess(
            "unbound",
            [binaries["unbound"], "-d", "-c", str(unbound_conf)],
            log_path=logs / "unbound.stderr.log",
            extra_logs=[logs / "unbound.log"],
            cwd=rig / "unbound",
        )
        base_env = {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject),
            "PEBBLE_AUTHZREUSE": "0",
        }
        self._pebble_config = {"pebble": pebble_conf, "pebble-eab": eab_conf}
        self._pebble_binary = binaries["pebble"]
        for name in ("pebble", "pebble-eab"):
            self._pebble_env[name] = dict(base_env)
            self._services[name] = self._pebble_process(name)
        self._services["nginx"] = ManagedProcess(
            "nginx",
            [
                binaries["nginx"],
                "-e",
                str(logs / "nginx-error.log"),
                "-c",
                str(nginx_conf),
                "-g",
                "daemon off;",
            ],
            log_path=logs / "nginx.stderr.log",
            extra_logs=[logs / "nginx-error.log"],
            cwd=rig / "nginx",
        )

    def _pebble_process(self, name: str) -> ManagedProcess:
        # Only the variables this rig sets reach Pebble: a PEBBLE_* in the caller's environment
        # would silently change its behaviour.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PEBBLE_")}
        env.update(self._pebble_env[name])
        return ManagedProcess(
            name,
            [
                self._pebble_binary,
                "-config",
                str(self._pebble_config[name]),
                "-dnsserver",
                self.resolver_address,
            ],
            log_path=self.runtime_dir / "logs" / f"{name}.log",
            cwd=self.runtime_dir / "pebble",
            env=env,
        )

    def _write_zone(self, text: str) -> None:
        path = self.runtime_dir / "nsd" / "customer.test.zone"
        staging = path.with_suffix(".tmp")
        staging.write_text(text)
        # NSD reloads a zone file only when its mtime changed; two writes within one timestamp
        # tick would look unchanged, so move the mtime forward at least a second every time.
        self._zone_mtime_ns = max(time.time_ns(), self._zone_mtime_ns + 1_000_000_000)
        os.utime(staging, ns=(self._zone_mtime_ns, self._zone_mtime_ns))
        staging.replace(path)

    def _start_service(self, name: str, ready: Callable[[], bool]) -> None:
        service = self._services[name]
        service.start()
        service.wait_until(ready, "serving", self.startup_timeout)

    def _wait_listening(self, name: str, *ports: int) -> None:
        service = self._services[name]
        for port in ports:
            service.wait_until(
                lambda port=port: tcp_is_listening(port),
                f"listening on 127.0.0.1:{port}",
                self.startup_timeout,
            )

    # A query sent before the server binds its UDP socket is simply lost: probe with a short
    # timeout and ask again, rather than wait out the normal one.

    def _nsd_is_serving(self) -> bool:
        serial = dns_probe.soa_serial(
            self.nsd_port, CUSTOMER_ZONE, recursion_desired=False, timeout=_PROBE_TIMEOUT_SECONDS
        )
        return serial == self._zone_serial

    def _unbound_resolves_customer_zone(self) -> bool:
        response = dns_probe.ask(
            self.unbound_port, f"www.{CUSTOMER_ZONE}", "A", timeout=_PROBE_TIMEOUT_SECONDS
        )
        owner = dns.name.from_text(f"www.{CUSTOMER_ZONE}")
        return any(rrset.name == owner for rrset in response.answer)


def _children(parent: int) -> set[int]:
    """Live (non-zombie) child processes of `parent`."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            children.add(int(entry.name))
    return children
