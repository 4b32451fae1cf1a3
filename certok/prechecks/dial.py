"""Connecting to one checked address for a safe fetch: TCP, then TLS for https.

A socket of certok's own goes to exactly the address given (no name resolution anywhere), the
address policy is checked once more at dial time, and each step has its timeout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

from certok.prechecks.addresses import AddressPolicy, AddressRefused, IPAddress
from certok.prechecks.fetch_types import Failure, Refusal
from certok.prechecks.http11 import MAX_HEAD_BYTES
from certok.prechecks.url_rules import Target


async def dial(
    address: IPAddress,
    target: Target,
    policy: AddressPolicy,
    connect_timeout: float,
    tls: ssl.SSLContext,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to exactly this address: a socket of our own, no name resolution anywhere."""
    try:
        # The address was checked when it was resolved; check the one actually dialled.
        policy.check(address)
    except AddressRefused as refusal:
        raise Refusal("address", f"refusing to connect to {refusal.reason}") from None
    where = where_text(address, target)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(connect_timeout):
            await asyncio.get_running_loop().sock_connect(sock, (str(address), target.port))
    except TimeoutError:
        sock.close()
        raise Failure(
            "connect", f"timed out connecting to {where} after {connect_timeout:g} s"
        ) from None
    except OSError as exc:
        sock.close()
        raise Failure("connect", f"could not connect to {where}: {os_error_text(exc)}") from None
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEAD_BYTES)
    if target.scheme != "https":
        return reader, writer
    try:
        async with asyncio.timeout(connect_timeout):
            # SNI carries the hostname; an IP literal (tests only) sends none, and a
            # verifying context then checks the certificate's IP address instead.
            context = tls
            server_hostname = target.host if target.literal is None else None
            if server_hostname is None and context.check_hostname:
                server_hostname = str(target.literal)
            await writer.start_tls(context, server_hostname=server_hostname)
    except TimeoutError:
        writer.transport.abort()
        raise Failure(
            "tls",
            f"the TLS handshake with {where} timed out after {connect_timeout:g} s",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        writer.transport.abort()
        raise Failure(
            "tls", f"the TLS handshake with {where} failed: {os_error_text(exc)}"
        ) from None
    return reader, writer


def verified_tls_context(extra_ca_file: str | None = None) -> ssl.SSLContext:
    """The system's trusted CAs (and `extra_ca_file`'s), hostname checked, TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=extra_ca_file)
    if extra_ca_file is not None:
        context.load_default_certs()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def unverified_tls_context() -> ssl.SSLContext:
    # CAs do not verify the certificate when an HTTP-01 redirect leads to https (RFC 8555
    # §8.3 leaves it open; Boulder sets InsecureSkipVerify): a pre-check that did would fail
    # names the CA accepts.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def where_text(address: IPAddress, target: Target) -> str:
    if target.literal is not None:
        return f"{address} port {target.port}"
    return f"{address} port {target.port} ({target.host})"


def os_error_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc}".lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's messages carry the address tuple; the errno's own text reads better.
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
