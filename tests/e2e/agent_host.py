"""A customer's host for the agent tests: its own nginx (HTTPS, a daemon the agent reloads), the
published httpsok.sh with only its BASE_API_URL line changed, and a home for its token."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from certok.crypto import generate_private_key, private_key_to_pem
from tests.kit.certs import self_signed_pem
from tests.rig.certok_server import REPO_ROOT

SCRIPT_NAME = "httpsok-1.18.2.sh"
BASE_URL_LINE = 'BASE_API_URL="https://api.httpsok.com/v1/nginx"'
NGINX = "/usr/sbin/nginx"


def compat_script() -> Path:
    """`../shared/compat/httpsok-1.18.2.sh` beside the repository (CI lays shared/ there; a git
    worktree one level further down finds it one level up). Missing: a skip, or under CI=true a
    failure, since a green CI must mean the real script ran."""
    missing_tools = [tool for tool in ("bash", "curl", "openssl") if shutil.which(tool) is None]
    for root in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        candidate = root / "shared" / "compat" / SCRIPT_NAME
        if candidate.is_file() and not missing_tools:
            return candidate
    message = f"httpsok.sh not found at {REPO_ROOT.parent / 'shared' / 'compat' / SCRIPT_NAME}"
    if missing_tools:
        message = f"httpsok.sh needs {', '.join(missing_tools)}: apt-get install -y curl openssl"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@dataclass
class AgentRun:
    returncode: int
    output: str


class CustomerHost:
    """nginx serving `names` over HTTPS from `ssl/site.pem`, and httpsok.sh pointed at certok."""

    def __init__(self, port: int, names: list[str], api_url: str, token: str) -> None:
        self.port = port
        self.names = names
        # Not pytest's tmp_path (mode 0700): nginx's workers run as nobody.
        self.dir = Path(tempfile.mkdtemp(prefix="certok-agent-host-"))
        self.dir.chmod(0o755)
        self.site = self.dir / "nginx"
        self.home = self.dir / "home"
        self.bin = self.dir / "bin"
        self.cert = self.site / "ssl" / "site.pem"
        self.key = self.site / "ssl" / "site.key"
        self.conf = self.site / "nginx.conf"
        for directory in (self.site / "conf.d", self.site / "ssl", self.site / "tmp", self.bin):
            directory.mkdir(parents=True, exist_ok=True)
        (self.home / ".httpsok").mkdir(parents=True)
        (self.home / ".httpsok" / "token").write_text(token + "\n")
        self.script = self.dir / SCRIPT_NAME
        original = compat_script().read_text()
        assert original.count(BASE_URL_LINE) == 1
        self.script.write_text(original.replace(BASE_URL_LINE, f'BASE_API_URL="{api_url}"'))
        self._write_nginx()

    # --- nginx -----------------------------------------------------------------------------
    def _write_nginx(self) -> None:
        temp = self.site / "tmp"
        self.conf.write_text(
            f"""# the customer's nginx (CERTOK-CONFIG-MARKER-7e2f in a comment)
worker_processes 1;
pid {self.site}/nginx.pid;
error_log {self.site}/error.log;
events {{ worker_connections 64; }}
http {{
\taccess_log off;
\tclient_body_temp_path {temp}/body;
\tproxy_temp_path {temp}/proxy;
\tfastcgi_temp_path {temp}/fastcgi;
\tuwsgi_temp_path {temp}/uwsgi;
\tscgi_temp_path {temp}/scgi;
\tadd_header X-Marker "CERTOK-CONFIG-MARKER-7e2f";
\tinclude conf.d/*.conf;
}}
"""
        )
        (self.site / "conf.d" / "site.conf").write_text(
            f"""server {{
    listen 127.0.0.1:{self.port} ssl;
    server_name {" ".join(self.names)} _;
    ssl_certificate     {self.cert};
    ssl_certificate_key {self.key};
    location / {{ return 200 "customer site\\n"; }}
}}
"""
        )
        key = generate_private_key("ECC")
        self.key.write_text(private_key_to_pem(key))
        self.cert.write_text(self_signed_pem(key, self.names, lifetime=dt.timedelta(days=30)))
        # The agent runs `nginx`: a wrapper that points it at this host's configuration.
        wrapper = self.bin / "nginx"
        options = f"-p {self.site}/ -c {self.conf} -e {self.site}/error.log"
        wrapper.write_text(f'#!/bin/sh\nexec {NGINX} {options} "$@"\n')
        wrapper.chmod(0o755)

    def start_nginx(self) -> None:
        subprocess.run([str(self.bin / "nginx")], check=True, timeout=30, capture_output=True)
        deadline = time.monotonic() + 10
        while not self.served_pem():
            assert time.monotonic() < deadline, "the customer's nginx did not start"
            time.sleep(0.05)

    def stop_nginx(self) -> None:
        pid_file = self.site / "nginx.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGQUIT)

    def worker_pids(self) -> set[int]:
        master = int((self.site / "nginx.pid").read_text().strip())
        workers = set()
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{master}$", text, re.MULTILINE):
                workers.add(int(status.parent.name))
        return workers

    def served_pem(self, name: str | None = None) -> str:
        """The chain nginx serves for `name` (SNI), as `openssl s_client -servername` shows it."""
        result = subprocess.run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
                "-servername", name or self.names[0], "-showcerts",
            ],
            input="", capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        blocks = re.findall(
            r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", result.stdout, re.S
        )
        return "".join(blocks)

    def served(self, name: str | None = None) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.served_pem(name).encode())[0]

    def wait_served(self, serial: int, timeout: float = 10) -> x509.Certificate:
        """The served leaf once its serial is `serial` (a reload takes effect shortly after)."""
        return x509.load_pem_x509_certificates(self.wait_served_pem(serial, timeout).encode())[0]

    def wait_served_pem(self, serial: int, timeout: float = 10, name: str | None = None) -> str:
        """The served chain once its leaf's serial is `serial`. Until nginx's old workers have
        gone, a new connection may still meet one of them: each look is one handshake."""
        deadline = time.monotonic() + timeout
        while True:
            pem = self.served_pem(name)
            leaf = x509.load_pem_x509_certificates(pem.encode())[0]
            if leaf.serial_number == serial or time.monotonic() > deadline:
                return pem
            time.sleep(0.1)

    # --- the agent -------------------------------------------------------------------------
    def run_agent(self, *args: str) -> AgentRun:
        env = {
            "HOME": str(self.home),
            "PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            # The agent looks for a running nginx master's `-c` when these are unset, and the
            # rig runs one of its own: say which configuration is this host's.
            "NGINX_CONFIG": str(self.conf),
            "NGINX_CONFIG_HOME": str(self.site),
            "LANG": "C.UTF-8",
        }
        result = subprocess.run(
            ["bash", str(self.script), *(args or ("-r",))],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=self.dir,
        )
        run = AgentRun(result.returncode, result.stdout + result.stderr)
        # pytest shows this only for a failed test: what the agent said on each run.
        print(f"--- httpsok.sh {' '.join(args or ('-r',))} (exit {run.returncode}) ---")
        print(run.output)
        return run

    @property
    def uuid(self) -> str:
        return (self.home / ".httpsok" / "uuid").read_text().strip()

    def backups(self) -> list[str]:
        folder = self.home / ".httpsok" / "backups"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
