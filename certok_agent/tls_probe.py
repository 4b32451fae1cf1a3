"""Which certificate a TLS service serves for a name: the proof that a reload took.

"Renewed, but nginx still serves the old certificate" is the complaint the popular agents
leave unanswered; this agent reads the served leaf after every reload and compares it byte
for byte with the one it wrote. Trust is not the question here (the certificate was just
written by us), so the handshake does not verify the chain.
"""

from __future__ import annotations

import socket
import ssl
import time

HANDSHAKE_TIMEOUT_SECONDS = 5.0
# After a reload nginx's old workers keep serving until their connections end.
RETRY_SECONDS = 0.2


def split_address(address: str) -> tuple[str, int]:
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def served_leaf(address: str, server_name: str) -> bytes | None:
    """The DER leaf certificate served at `address` for SNI `server_name`, or None."""
    host, port = split_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT_SECONDS) as raw:
            sni = None if server_name.startswith("*.") else server_name
            if sni is None:
                sni = "certok-agent-check." + server_name[2:]
            with context.wrap_socket(raw, server_hostname=sni) as tls:
                return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def wait_for_leaf(address: str, server_name: str, expected: bytes, seconds: float) -> bool:
    """True once `address` serves `expected` for `server_name`, within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if served_leaf(address, server_name) == expected:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(RETRY_SECONDS)
