"""Checks `certok serve` makes before it starts anything: files it needs and ports it binds.

A busy port or a missing TLS file found here is one line naming the setting; found later,
inside a server's start-up, it would be a traceback from uvicorn or asyncio (and with
`processes` ≥ 2, a child process dying over and over).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
from pathlib import Path

from certok.cli.problems import ConfigProblem
from certok.errors import ConfigurationError
from certok.prechecks.resolver import parse_resolver_address
from certok.settings import Settings


def check_serve(settings: Settings) -> None:
    check_resolvers(settings)
    check_tls(settings)
    check_ca_bundles(settings)
    check_ports(settings)


def check_ca_bundles(settings: Settings) -> None:
    for name, issuer in sorted(settings.issuers.items()):
        if issuer.ca_bundle is not None:
            _check_readable(f"issuers.{name}.ca_bundle", issuer.ca_bundle)


def check_resolvers(settings: Settings) -> None:
    if not settings.resolvers:
        raise ConfigProblem(
            "resolvers is empty: certok looks up every name through them; give at least one, "
            'e.g. ["127.0.0.1:53"]'
        )
    for entry in settings.resolvers:
        try:
            parse_resolver_address(entry)
        except ConfigurationError:
            raise ConfigProblem(
                f"resolvers entry {entry!r} is not an IP address with an optional port "
                "(127.0.0.1, 127.0.0.1:5353, ::1 or [::1]:53): resolvers are never looked up "
                "by name"
            ) from None


def check_tls(settings: Settings) -> None:
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        given, missing = (
            ("tls_cert_file", "tls_key_file")
            if key is None
            else (
                "tls_key_file",
                "tls_cert_file",
            )
        )
        raise ConfigProblem(
            f"{given} is set but {missing} is not: the HTTPS listener needs both (or neither)"
        )
    if cert is None or key is None:
        return
    for setting, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        _check_readable(setting, path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigProblem(
            f"tls_cert_file {cert} and tls_key_file {key} cannot be used together "
            f"({exc}); give the PEM certificate chain and its own private key"
        ) from None


def _check_readable(setting: str, path: Path) -> None:
    if not path.is_file():
        raise ConfigProblem(f"{setting} {path}: no such file; give the path of a PEM file")
    if not os.access(path, os.R_OK):
        raise ConfigProblem(
            f"{setting} {path}: not readable by this user (uid {os.getuid()}); fix its owner "
            "or mode"
        )


def check_ports(settings: Settings) -> None:
    """Bind each listener's address once (then let go) to report a busy or forbidden port."""
    tcp = [("api_port", "api_host", settings.api_host, settings.api_port)]
    if settings.https_enabled:
        tcp.append(("https_port", "https_host", settings.https_host, settings.https_port))
    if settings.metrics_port:
        tcp.append(("metrics_port", "metrics_host", settings.metrics_host, settings.metrics_port))
    for setting, host_setting, host, port in tcp:
        _probe(setting, host_setting, host, port, socket.SOCK_STREAM)
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        _probe("dns_port", "dns_host", settings.dns_host, settings.dns_port, kind)


def _probe(setting: str, host_setting: str, host: str, port: int, kind: int) -> None:
    if port == 0:
        return  # the kernel picks a free one
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise ConfigProblem(
            f"{host_setting} {host!r} is not an address of this machine; give an IP address "
            "such as 127.0.0.1 or 0.0.0.0"
        ) from None
    family, _, _, _, address = infos[0]
    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigProblem(_bind_message(setting, host_setting, host, port, proto, exc)) from None
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _bind_message(
    setting: str, host_setting: str, host: str, port: int, proto: str, exc: OSError
) -> str:
    where = f"{host}:{port}/{proto}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{setting} {port}: {where} is already in use by another program (another certok?); "
            f"stop it or choose a free {setting}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{setting} {port}: permission denied for {where}; ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE (see packaging/certok.service)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host_setting} {host!r} is not an address of this machine; fix {host_setting}"
    return f"{setting} {port}: cannot listen on {where} ({exc.strerror or exc})"
