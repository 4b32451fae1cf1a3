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
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import dns.message
import dns.rdatatype

from certok.demo import customer_dns, dns_probe, nginx, pebble
from certok.demo.binaries import REQUIRED_BINARIES, require_binary, run_control
from certok.demo.config_files import (
    base_customer_zone,
    eab_mac_keys,
    placeholder_values,
    render_template,
)
from certok.demo.customer_zone import CUSTOMER_ZONE, render_zone
from certok.demo.errors import RigError
from certok.demo.ports import RIG_PORT_NAMES, PortAllocator
from certok.demo.process import ManagedProcess, tcp_is_listening
from certok.demo.tls import write_server_tls

DEFAULT_CERTOK_ZONE = "acme.svc.test"
STARTUP_TIMEOUT_SECONDS = 15.0
CHANGE_TIMEOUT_SECONDS = 10.0

Which = Literal["plain", "eab", "both"]


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
        self._ports = chosen = self._allocator.take_all(self.PORT_NAMES, ports or {})
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
        self._pebble_ports = {
            "pebble": (self.acme_port, self.management_port),
            "pebble-eab": (self.eab_acme_port, self.eab_management_port),
        }
        # Where the customer's nginx sends HTTP-01 requests (the seed's redirect target host).
        self.certok_service_host = f"svc.{self.certok_zone}"

        self.eab_keys: dict[str, str] = eab_mac_keys()
        self.eab_kid = "kid-1"
        self.eab_hmac_key = self.eab_keys["kid-1"]
        self.eab_kid_2 = "kid-2"
        self.eab_hmac_key_2 = self.eab_keys["kid-2"]

        self._runtime_dir: Path | None = None
        self._services: dict[str, ManagedProcess] = {}
        self._pebble_env: dict[str, dict[str, str]] = {}
        self._pebble_config: dict[str, Path] = {}
        self._pebble_binary = ""
        self._base_zone = base_customer_zone()
        self._zone_serial = 1
        self._zone_writer = customer_dns.ZoneFileWriter()
        self._customer_records: list[str] = []

    PORT_NAMES = RIG_PORT_NAMES

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
        binaries = {name: require_binary(name) for name in REQUIRED_BINARIES}
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="certok-rig-"))
        try:
            self._prepare(binaries)
            self._start_service(
                "nsd", lambda: customer_dns.nsd_serves(self.nsd_port, self._zone_serial)
            )
            self._start_service("unbound", lambda: customer_dns.resolver_answers(self.unbound_port))
            for name in (*pebble.PEBBLE_NAMES, "nginx"):
                self._services[name].start()
            for name in pebble.PEBBLE_NAMES:
                self._wait_listening(name, *self._pebble_ports[name])
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
        return pebble.fetch_root(base, self.ca_bundle)

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
            self._wait_listening(name, *self._pebble_ports[name])

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

    # --- the customer's nginx --------------------------------------------------------------------

    def set_nginx_redirects(self, sites: Mapping[str, str]) -> None:
        """Serve the seed's block for each `server name → redirect target` (replacing earlier
        ones): `return 302 <target>$host/$1;`. Returns once nginx serves the new config."""
        deadline = self._reload_nginx("tests.conf", nginx.redirect_sites(self.nginx_port, sites))
        nginx.wait_for_redirects(self.nginx_port, sites, deadline)

    def serve_certificate(
        self, server_name: str, port: int, certificate: Path, private_key: Path
    ) -> None:
        """Serve HTTPS for `server_name` on 127.0.0.1:`port` with this certificate chain and
        key (a customer's nginx after installing what certok issued)."""
        lines = nginx.https_site(server_name, port, certificate, private_key)
        self._reload_nginx(f"tls-{server_name}.conf", lines)
        self._wait_listening("nginx", port)

    def _reload_nginx(self, site: str, lines: Sequence[str]) -> float:
        """Write one site file and reload nginx; returns the deadline for what follows."""
        pid = self._services["nginx"].pid
        if pid is None:
            raise RigError("nginx is not running")
        deadline = time.monotonic() + CHANGE_TIMEOUT_SECONDS
        nginx.reload_with_site(self.runtime_dir / "nginx" / "sites" / site, lines, pid, deadline)
        return deadline

    # --- customer DNS and the resolver ---------------------------------------------------------

    @property
    def customer_records(self) -> list[str]:
        """The test lines currently merged over the base customer zone."""
        return list(self._customer_records)

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
        customer_dns.wait_for_nsd_serial(
            self._services["nsd"],
            self.nsd_port,
            serial,
            lambda: self.nsd_control("reload", CUSTOMER_ZONE),
            deadline,
        )
        customer_dns.wait_for_resolver(
            self._services["unbound"],
            self.unbound_port,
            serial,
            expected,
            lambda: self.flush_resolver(infra=False),
            deadline,
        )

    def flush_resolver(self, *, infra: bool = True) -> None:
        """Make unbound forget cached answers for both zones, and (infra) which servers were down.

        Call this after starting certok's DNS server when unbound may have tried it while it was
        still down: otherwise unbound may keep answering SERVFAIL for up to `infra-host-ttl`.
        Queries unbound is resolving at that moment are left to finish: dropping them
        (`flush_requestlist`) leaves their askers without an answer, and by then the asker may
        be a CA validating a challenge that a just-restarted certok answered.
        """
        if infra:
            self.unbound_control("flush_infra", "all")
        self.unbound_control("flush_zone", CUSTOMER_ZONE)
        self.unbound_control("flush_zone", self.certok_zone)

    def resolve(self, name: str, rdtype: str = "A") -> dns.message.Message:
        """Ask unbound (the rig's recursive resolver) one question; returns the full response."""
        return dns_probe.ask(self.unbound_port, name, dns.rdatatype.from_text(rdtype))

    def unbound_control(self, *args: str) -> str:
        return run_control("unbound-control", self.runtime_dir / "unbound" / "unbound.conf", args)

    def nsd_control(self, *args: str) -> str:
        return run_control("nsd-control", self.runtime_dir / "nsd" / "nsd.conf", args)

    # --- internals -----------------------------------------------------------------------------

    def _render(self, template: str, destination: Path) -> Path:
        values = placeholder_values(self.runtime_dir, self.certok_zone, self._ports)
        return render_template(template, values, destination)

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

        for name, conf in (("nsd", nsd_conf), ("unbound", unbound_conf)):
            self._services[name] = customer_dns.dns_server_process(name, binaries[name], conf, logs)
        self._pebble_config = {"pebble": pebble_conf, "pebble-eab": eab_conf}
        self._pebble_binary = binaries["pebble"]
        for name in pebble.PEBBLE_NAMES:
            self._pebble_env[name] = pebble.base_settings(self.nonce_reject)
            self._services[name] = self._pebble_process(name)
        self._services["nginx"] = nginx.nginx_process(
            binaries["nginx"], nginx_conf, logs, rig / "nginx"
        )

    def _pebble_process(self, name: str) -> ManagedProcess:
        return pebble.pebble_process(
            name,
            self._pebble_binary,
            self._pebble_config[name],
            self._pebble_env[name],
            self.resolver_address,
            self.runtime_dir,
        )

    def _write_zone(self, text: str) -> None:
        self._zone_writer.write(self.runtime_dir / "nsd" / "customer.test.zone", text)

    def _start_service(self, name: str, ready: Callable[[], bool]) -> None:
        service = self._services[name]
        service.start()
        service.wait_until(ready, "serving", self.startup_timeout)

    def _wait_listening(self, name: str, *ports: int) -> None:
        service = self._services[name]
        for port in ports:
            service.wait_until(
                functools.partial(tcp_is_listening, port),
                f"listening on 127.0.0.1:{port}",
                self.startup_timeout,
            )
