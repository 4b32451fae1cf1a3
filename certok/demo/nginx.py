"""The customer's nginx: its process, the site files tests write, and reloads that took effect."""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from certok.demo.errors import RigError
from certok.demo.process import ManagedProcess

_RELOAD_POLL_SECONDS = 0.02
_REDIRECT_POLL_SECONDS = 0.05


def nginx_process(binary: str, config: Path, logs: Path, cwd: Path) -> ManagedProcess:
    """nginx in the foreground with its error log next to the rig's other logs."""
    return ManagedProcess(
        "nginx",
        [binary, "-e", str(logs / "nginx-error.log"), "-c", str(config), "-g", "daemon off;"],
        log_path=logs / "nginx.stderr.log",
        extra_logs=[logs / "nginx-error.log"],
        cwd=cwd,
    )


def redirect_sites(nginx_port: int, sites: Mapping[str, str]) -> list[str]:
    """The seed's block for each `server name → redirect target`:
    `return 302 <target>$host/$1;` for the HTTP-01 path."""
    lines = []
    for server_name, target in sites.items():
        lines += [
            "server {",
            f"    listen 127.0.0.1:{nginx_port};",
            f"    server_name {server_name};",
            r"    location ~ ^/\.well-known/acme-challenge/([-_a-zA-Z0-9]+)$ {",
            f"        return 302 {target}$host/$1;",
            "    }",
            "}",
        ]
    return lines


def https_site(server_name: str, port: int, certificate: Path, private_key: Path) -> list[str]:
    """HTTPS for `server_name` on 127.0.0.1:`port` with this chain and key."""
    return [
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


def reload_with_site(site_file: Path, lines: Sequence[str], pid: int, deadline: float) -> None:
    """Write one site file and reload nginx; returns once no worker of the old config is left."""
    site_file.write_text("\n".join(lines) + "\n")
    old_workers = _live_children(pid)
    os.kill(pid, signal.SIGHUP)
    # A reload starts new workers and lets the old ones finish gracefully; until they have
    # exited, a new connection may still meet the old configuration (a pre-check saw "no
    # redirect" right after a probe had seen the new one).
    while old_workers & _live_children(pid):
        if time.monotonic() > deadline:
            raise RigError("nginx's old workers did not exit after a reload")
        time.sleep(_RELOAD_POLL_SECONDS)


def wait_for_redirects(nginx_port: int, sites: Mapping[str, str], deadline: float) -> None:
    """Return once nginx redirects each server name's HTTP-01 path to its target."""
    for server_name, target in sites.items():
        while True:
            location = _challenge_location(nginx_port, server_name)
            if location is not None and location.startswith(target):
                break
            if time.monotonic() > deadline:
                raise RigError(f"nginx did not pick up the redirect for {server_name}")
            time.sleep(_REDIRECT_POLL_SECONDS)


def _challenge_location(nginx_port: int, server_name: str) -> str | None:
    connection = http.client.HTTPConnection("127.0.0.1", nginx_port, timeout=2.0)
    try:
        connection.request(
            "GET", "/.well-known/acme-challenge/probe", headers={"Host": server_name}
        )
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    return response.getheader("location")


def _live_children(parent: int) -> set[int]:
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
