"""A fault-injecting HTTPS reverse proxy to put between an ACME client and Pebble.

Pebble cannot answer 429/503/500 (pebble#399), and some tests must hold one exact ACME request
(the challenge answer, the finalize) to crash certok at a known moment. The proxy forwards
everything to Pebble unless a rule says otherwise:

    with FaultProxy.for_rig(rig) as proxy:
        proxy.add_rule(Rule(method="POST", path=r"/order-plz", times=1, action=status(
            429, problem_document("rateLimited", "too many orders", 429),
            headers={"Retry-After": "30"})))
        held = threading.Event()
        proxy.add_rule(Rule(method="POST", path=r"/chalZ/", action=stall(until=held)))
        server = certok_server(issuers__letsencrypt__directory=proxy.directory_url)
        proxy.wait_for(r"/chalZ/", method="POST")   # certok's answer is now held here
        server.kill(); held.set()

It serves the rig's own `localhost` certificate, so a client that trusts `rig.ca_bundle` for
Pebble trusts the proxy too. Pebble's paths: /dir, /nonce-plz, /sign-me-up, /order-plz,
/my-account/, /my-order/, /authZ/, /chalZ/, /finalize-order/, /certZ/, /revoke-cert.

Pebble builds every URL it sends from the request's Host header, and checks each JWS `url`
(which the client signed with the proxy's URL) against that same Host-derived URL: so the
client's Host goes upstream unchanged, and Pebble's answers already name the proxy. The proxy
still rewrites upstream URLs in JSON bodies and in Location and Link headers, for upstreams
that name themselves whatever the Host (and for `forward_host=False`).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import email.utils
import http.client
import http.server
import json
import logging
import re
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tests.rig.ari_front import AriFront
    from tests.rig.rig import Rig

log = logging.getLogger(__name__)

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"
UPSTREAM_TIMEOUT_SECONDS = 30.0
# An idle keep-alive connection from the client is closed after this long.
CLIENT_IDLE_SECONDS = 30.0
STOP_JOIN_SECONDS = 5.0
# How often a request stalled `until` an event looks at that event (release_all is immediate).
_STALL_POLL_SECONDS = 0.01
# serve_forever's shutdown check: short, so stop() returns quickly.
_ACCEPT_POLL_SECONDS = 0.05

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Not hop-by-hop, but recomputed or refused by the proxy: bodies are rewritten, so their length
# changes, and they must arrive uncompressed to be rewritten at all.
_RECOMPUTED = frozenset({"content-length", "accept-encoding"})


# --- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Respond:
    """Answer without forwarding. Use `status()` or `empty_200()` to make one."""

    code: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    # A fresh Replay-Nonce from the upstream, so the client's nonce pool keeps working.
    with_nonce: bool = True
    label: str = "status"


@dataclass(frozen=True)
class Reset:
    """Close the client's connection abruptly (TCP RST), without any response."""

    label: str = "reset"


@dataclass(frozen=True)
class Stall:
    """Hold the request, then forward it. Use `stall()` to make one."""

    seconds: float | None = None
    until: threading.Event | None = None
    label: str = "stall"


Action = Respond | Reset | Stall


def problem_document(error: str, detail: str, status: int) -> dict[str, Any]:
    """An RFC 7807 problem document; a bare ACME error name gets the ACME URN prefix."""
    kind = error if ":" in error else ACME_ERROR_PREFIX + error
    return {"type": kind, "detail": detail, "status": status}


def status(
    code: int,
    body_json: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    with_nonce: bool = True,
) -> Respond:
    """Answer `code` (with `body_json` and `headers`) instead of forwarding.

    A body with a `type` member goes out as `application/problem+json`, any other body as
    `application/json`. A fresh upstream `Replay-Nonce` is added unless `headers` has one or
    `with_nonce` is False.
    """
    extra = dict(headers or {})
    body = b""
    if body_json is not None:
        body = json.dumps(body_json).encode()
        media = "application/problem+json" if "type" in body_json else "application/json"
        extra.setdefault("Content-Type", media)
    return Respond(code=code, body=body, headers=tuple(extra.items()), with_nonce=with_nonce)


def empty_200(*, with_nonce: bool = True) -> Respond:
    """200 with an empty body (and a good nonce, so only the body is wrong)."""
    return Respond(code=200, with_nonce=with_nonce, label="empty_200")


def reset() -> Reset:
    return Reset()


def stall(seconds: float | None = None, *, until: threading.Event | None = None) -> Stall:
    """Hold for `seconds`, or until `until` is set, whichever comes first; then forward.

    With neither, hold until `release_all()`. `release_all()` and `stop()` end any stall
    early (after `stop()` the request is dropped, not forwarded).
    """
    if seconds is not None and seconds < 0:
        raise ValueError(f"stall seconds must be >= 0 (got {seconds})")
    return Stall(seconds=seconds, until=until)


# --- rules and the request log ---------------------------------------------------------------


@dataclass(eq=False, kw_only=True)
class Rule:
    """Apply `action` to requests whose method is `method` (None: any) and whose path (no
    query) contains a match of the regex `path`, for the first `times` of them (None: all).

    Rules are tried in the order they were added; the first one that matches and is not used
    up applies.
    """

    action: Action
    path: str = ""
    method: str | None = None
    times: int | None = None
    applied: int = field(default=0, init=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 0:
            raise ValueError(f"times must be >= 0 or None (got {self.times})")
        self._pattern = re.compile(self.path)

    @property
    def used_up(self) -> bool:
        return self.times is not None and self.applied >= self.times

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self._pattern.search(path) is not None


@dataclass
class RequestRecord:
    """One request the proxy received. `status` is None until answered, and stays None for a
    reset or a dropped request. `outcome`: received, stalled, forwarded, answered, reset,
    dropped (proxy stopped while stalled) or failed (upstream unreachable: 502)."""

    index: int
    method: str
    path: str
    query: str
    monotonic: float
    wall: dt.datetime
    rule: Rule | None
    action: str | None
    status: int | None = None
    outcome: str = "received"
    finished_monotonic: float | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finished_monotonic is not None


# --- URL rewriting ---------------------------------------------------------------------------


def origin_of(url: str) -> str:
    """`https://127.0.0.1:1234/dir` → `https://127.0.0.1:1234`."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"not an absolute URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


class UrlRewriter:
    """Replaces one origin with another in text, never inside a longer port or host name."""

    def __init__(self, old_origin: str, new_origin: str) -> None:
        self.old_origin = old_origin
        self.new_origin = new_origin
        # `https://127.0.0.1:3179` must not match the front of `https://127.0.0.1:31795`.
        boundary = r"(?![0-9A-Za-z.\-])"
        self._text = re.compile(re.escape(old_origin) + boundary)
        self._bytes = re.compile(re.escape(old_origin).encode() + boundary.encode())

    def text(self, value: str) -> str:
        return self._text.sub(lambda _: self.new_origin, value)

    def body(self, value: bytes) -> bytes:
        return self._bytes.sub(lambda _: self.new_origin.encode(), value)


def _is_json(content_type: str | None) -> bool:
    # application/json, application/problem+json, application/jose+json ...
    media = (content_type or "").split(";")[0].strip().lower()
    return media.endswith("/json") or media.endswith("+json")


def _hop_by_hop(headers: Iterable[tuple[str, str]]) -> set[str]:
    """The fixed hop-by-hop names plus those the Connection header lists."""
    names = set(_HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


# --- the proxy -------------------------------------------------------------------------------


class FaultProxy:
    """An HTTPS reverse proxy with fault rules and a request log; a context manager."""

    def __init__(
        self,
        upstream_base: str,
        *,
        ca_bundle: Path,
        cert_pem: Path,
        key_pem: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        forward_host: bool = True,
        upstream_timeout: float = UPSTREAM_TIMEOUT_SECONDS,
    ) -> None:
        """`upstream_base` is the upstream's directory URL (or any URL on it): requests go to
        its origin, and `directory_url` is the proxy's URL with the same path. `port` 0 lets
        the kernel pick one. `forward_host=False` sends the upstream its own Host instead of
        the client's (then Pebble refuses every JWS POST: its `url` names the proxy)."""
        upstream = urlsplit(upstream_base)
        if upstream.scheme != "https" or not upstream.hostname:
            raise ValueError(f"upstream_base must be an https:// URL (got {upstream_base!r})")
        self.upstream_origin = origin_of(upstream_base)
        self._upstream_host = upstream.hostname
        self._upstream_port = upstream.port or 443
        self._upstream_netloc = upstream.netloc
        self._directory_path = upstream.path
        self.host = host
        self._requested_port = port
        self.forward_host = forward_host
        self.upstream_timeout = upstream_timeout
        self._upstream_tls = ssl.create_default_context(cafile=str(ca_bundle))
        self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_tls.load_cert_chain(certfile=str(cert_pem), keyfile=str(key_pem))

        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._rules: list[Rule] = []
        self._records: list[RequestRecord] = []
        self._stalls: dict[int, threading.Event] = {}
        self._new_nonce_path: str | None = None
        self._stopping = False
        self._server: _ProxyServer | None = None
        self._bound_port: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._rewriter: UrlRewriter | None = None
        # Serves ARI and profiles in front of Pebble 2.4 when set (tests/rig/ari_front.py).
        self.front: AriFront | None = None

    @classmethod
    def for_rig(
        cls, rig: Rig, *, eab: bool = False, port: int | None = None, forward_host: bool = True
    ) -> FaultProxy:
        """A proxy in front of the rig's plain (or EAB) Pebble, with Pebble's own certificate.

        The port comes from the rig's allocator unless given (0: the kernel picks).
        """
        # rig.py writes these next to ca.pem (tls.write_server_tls) and gives them to Pebble.
        certs = rig.ca_bundle.parent
        return cls(
            rig.eab_directory_url if eab else rig.directory_url,
            ca_bundle=rig.ca_bundle,
            cert_pem=certs / "localhost.pem",
            key_pem=certs / "localhost.key",
            port=rig.allocate_port("fault proxy") if port is None else port,
            forward_host=forward_host,
        )

    # --- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (or listened on, once stopped)."""
        if self._bound_port is None:
            raise RuntimeError("the fault proxy was never started: no port yet")
        return self._bound_port

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def directory_url(self) -> str:
        return self.base_url + self._directory_path

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the fault proxy is already started")
        self._stopping = False
        server = _ProxyServer((self.host, self._requested_port), self, self._server_tls)
        self._server = server
        self._bound_port = int(server.server_address[1])
        self._rewriter = UrlRewriter(self.upstream_origin, self.base_url)
        self._accept_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _ACCEPT_POLL_SECONDS},
            name=f"fault-proxy-accept-{self.port}",
            daemon=True,
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, drop stalled requests, close every connection, join every thread."""
        server = self._server
        if server is None:
            return
        with self._arrived:
            self._stopping = True
            for release in self._stalls.values():
                release.set()
            self._arrived.notify_all()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._accept_thread is not None:
            self._accept_thread.join(STOP_JOIN_SECONDS)
        leftover = server.join_handlers(STOP_JOIN_SECONDS)
        if leftover:
            log.warning("fault proxy: %d connection thread(s) still running after stop", leftover)
        self._server = None
        self._accept_thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- rules ---------------------------------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [kept for kept in self._rules if kept is not rule]

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def release_all(self) -> int:
        """Let every request stalled right now go on to the upstream; how many there were."""
        with self._lock:
            releases = list(self._stalls.values())
        for release in releases:
            release.set()
        return len(releases)

    # --- the request log -----------------------------------------------------------------------

    def requests(
        self, path_regex: str | None = None, method: str | None = None
    ) -> list[RequestRecord]:
        """Copies of the logged requests (oldest first) whose path matches and method equals."""
        pattern = re.compile(path_regex) if path_regex is not None else None
        with self._lock:
            return [copy.copy(r) for r in self._records if _selected(r, pattern, method)]

    def stalled(self) -> list[RequestRecord]:
        """The requests being held right now."""
        with self._lock:
            return [copy.copy(r) for r in self._records if r.outcome == "stalled"]

    def wait_for(
        self,
        path_regex: str,
        method: str | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[RequestRecord]:
        """Block until `count` matching requests have arrived, stalled ones included, and
        return copies of the first `count`. Raises TimeoutError naming what did arrive."""
        pattern = re.compile(path_regex)
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [r for r in self._records if _selected(r, pattern, method)]
                if len(found) >= count:
                    return [copy.copy(r) for r in found[:count]]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    seen = ", ".join(f"{r.method} {r.path}" for r in self._records[-20:])
                    raise TimeoutError(
                        f"{len(found)} of {count} {method or 'any-method'} requests matching "
                        f"{path_regex!r} reached the fault proxy in {timeout} s; it saw: "
                        f"{seen or 'nothing'}"
                    )
                self._arrived.wait(remaining)

    # --- used by the handler ---------------------------------------------------------------

    def _arrive(self, method: str, path: str, query: str) -> RequestRecord:
        """Log a request and pick the rule that applies to it (using it up by one)."""
        with self._arrived:
            rule = next((r for r in self._rules if not r.used_up and r.matches(method, path)), None)
            if rule is not None:
                rule.applied += 1
            record = RequestRecord(
                index=len(self._records),
                method=method,
                path=path,
                query=query,
                monotonic=time.monotonic(),
                wall=dt.datetime.now(dt.UTC),
                rule=rule,
                action=rule.action.label if rule is not None else None,
            )
            self._records.append(record)
            self._arrived.notify_all()
            return record

    def _finish(
        self, record: RequestRecord, outcome: str, code: int | None, error: str | None = None
    ) -> None:
        with self._lock:
            record.outcome = outcome
            record.status = code
            record.error = error
            record.finished_monotonic = time.monotonic()

    def _hold(self, record: RequestRecord, action: Stall) -> bool:
        """Stall a request; False when the proxy stopped meanwhile (then drop it)."""
        release = threading.Event()
        with self._lock:
            if self._stopping:
                return False
            self._stalls[record.index] = release
            record.outcome = "stalled"
        deadline = None if action.seconds is None else time.monotonic() + action.seconds
        try:
            while not release.is_set():
                if action.until is not None and action.until.is_set():
                    break
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    break
                if action.until is not None:
                    # Two events to watch: poll the caller's, wake at once on our own.
                    wait = _STALL_POLL_SECONDS if wait is None else min(wait, _STALL_POLL_SECONDS)
                release.wait(wait)
        finally:
            with self._lock:
                self._stalls.pop(record.index, None)
                if record.outcome == "stalled":
                    record.outcome = "received"
        return not self._stopping

    @property
    def rewriter(self) -> UrlRewriter:
        if self._rewriter is None:
            raise RuntimeError("the fault proxy is not started")
        return self._rewriter

    def upstream_exchange(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """One request to the upstream on a fresh connection: status, reason, headers, body."""
        connection = http.client.HTTPSConnection(
            self._upstream_host,
            self._upstream_port,
            context=self._upstream_tls,
            timeout=self.upstream_timeout,
        )
        try:
            # Host and Accept-Encoding come from `headers` exactly as given, never added.
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()

    def upstream_host_header(self, client_host: str | None) -> str:
        if self.forward_host and client_host:
            return client_host
        return self._upstream_netloc

    def fresh_nonce(self) -> str | None:
        """A Replay-Nonce from the upstream's newNonce, or None (logged) when that fails."""
        try:
            if self._new_nonce_path is None:
                code, _, _, body = self.upstream_exchange(
                    "GET", self._directory_path, [("Host", self._upstream_netloc)], None
                )
                if code != 200:
                    raise RuntimeError(f"directory answered {code}")
                self._new_nonce_path = urlsplit(json.loads(body)["newNonce"]).path
            code, _, headers, _ = self.upstream_exchange(
                "HEAD", self._new_nonce_path, [("Host", self._upstream_netloc)], None
            )
            for name, value in headers:
                if name.lower() == "replay-nonce":
                    return value
            raise RuntimeError(f"newNonce answered {code} without a Replay-Nonce")
        except Exception:
            log.exception("fault proxy: no fresh nonce from %s", self.upstream_origin)
            return None


def _selected(record: RequestRecord, pattern: re.Pattern[str] | None, method: str | None) -> bool:
    if method is not None and record.method.upper() != method.upper():
        return False
    return pattern is None or pattern.search(record.path) is not None


# --- the server underneath -------------------------------------------------------------------


class _ProxyServer(socketserver.TCPServer):
    """A TLS TCP server with one thread per connection, every thread and socket tracked."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy, tls: ssl.SSLContext) -> None:
        self.proxy = proxy
        self._tls = tls
        self._tracked_lock = threading.Lock()
        self._handlers: set[threading.Thread] = set()
        self._connections: set[socket.socket] = set()
        self._serial = 0
        super().__init__(address, _ProxyHandler)

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: its socket.getfqdn() could reach the system resolver.
        super().server_bind()
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = self.socket.accept()
        # Headers and body go out in separate writes: without this, Nagle's algorithm holds
        # the body until the client's delayed ACK (40 ms per answer).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The handshake happens in the connection's own thread: a slow client must not block
        # the accept loop.
        return self._tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._tracked_lock:
            self._serial += 1
            thread = threading.Thread(
                target=self._serve_connection,
                args=(request, client_address),
                name=f"fault-proxy-conn-{self.server_address[1]}-{self._serial}",
                daemon=True,
            )
            self._handlers.add(thread)
            self._connections.add(request)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError) as error:
            # A failed handshake, or a client gone before its first request: routine.
            log.debug("fault proxy: connection from %s ended: %s", client_address, error)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._tracked_lock:
                self._connections.discard(request)
                self._handlers.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("fault proxy: error on the connection from %s", client_address)

    def close_connections(self) -> None:
        """Wake every connection thread blocked on its client (idle keep-alive, handshake)."""
        with self._tracked_lock:
            connections = list(self._connections)
        for connection in connections:
            # The plain socket's shutdown: SSLSocket.shutdown would drop its TLS state under
            # a thread that may be reading through it right now.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> int:
        """Wait for the connection threads; how many are still running at the deadline."""
        deadline = time.monotonic() + timeout
        with self._tracked_lock:
            threads = list(self._handlers)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in threads)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_IDLE_SECONDS
    server: _ProxyServer

    def setup(self) -> None:
        # Handshake before setup() makes the socket's file objects, so a failed one leaves
        # nothing open but the socket the server closes.
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, ssl.SSLError) as error:
            # The client went away (or we reset it): nothing to answer.
            log.debug("fault proxy: connection from %s ended: %s", self.client_address, error)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fault proxy: " + format, *args)

    def do_any(self) -> None:
        proxy = self.server.proxy
        target = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError as error:
            self.send_error(400, f"unreadable request body: {error}")
            return
        record = proxy._arrive(self.command, target.path or "/", target.query)
        action = record.rule.action if record.rule is not None else None
        # Each path logs its outcome before the client can see it, so a test that got its
        # answer always finds it in the log.
        if isinstance(action, Reset):
            proxy._finish(record, "reset", None)
            self._reset()
            return
        if isinstance(action, Respond):
            self._answer(record, action)
            return
        if isinstance(action, Stall) and not proxy._hold(record, action):
            proxy._finish(record, "dropped", None)
            self.close_connection = True
            return
        self._forward(record, body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_any

    # --- the three ways to answer ----------------------------------------------------------

    def _forward(self, record: RequestRecord, body: bytes) -> None:
        proxy = self.server.proxy
        front = proxy.front
        local = front.answer(self.command, record.path, body) if front is not None else None
        if local is not None:
            code, local_headers, local_body = local
            answer = Respond(
                code=code,
                body=local_body,
                headers=tuple(local_headers),
                with_nonce=self.command == "POST",
            )
            self._answer(record, answer)
            return
        received = list(self.headers.items())
        skip = _hop_by_hop(received) | _RECOMPUTED | {"host"}
        headers = [(name, value) for name, value in received if name.lower() not in skip]
        headers.insert(0, ("Host", proxy.upstream_host_header(self.headers.get("Host"))))
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
        try:
            code, reason, upstream_headers, data = proxy.upstream_exchange(
                self.command, self.path, headers, body if body else None
            )
        except (OSError, http.client.HTTPException) as error:
            log.error(
                "fault proxy: %s %s to %s failed: %s",
                self.command,
                self.path,
                proxy.upstream_origin,
                error,
            )
            proxy._finish(record, "failed", 502, str(error))
            self._send(502, [("Content-Type", "text/plain")], f"upstream failed: {error}".encode())
            return

        rewriter = proxy.rewriter
        answer: list[tuple[str, str]] = []
        upstream_length: str | None = None
        content_type: str | None = None
        skip = _hop_by_hop(upstream_headers)
        for name, value in upstream_headers:
            lowered = name.lower()
            if lowered == "content-length":
                upstream_length = value
                continue
            if lowered in skip:
                continue
            if lowered == "content-type":
                content_type = value
            if lowered in ("location", "link"):
                value = rewriter.text(value)
            answer.append((name, value))
        if _is_json(content_type):
            data = rewriter.body(data)
        if front is not None:
            data = front.observe(self.command, record.path, code, data, proxy.base_url)
        # A HEAD answer has no body but may announce the GET's length.
        length = upstream_length if self.command == "HEAD" and upstream_length else None
        proxy._finish(record, "forwarded", code)
        self._send(code, answer, data, reason=reason, length=length)

    def _answer(self, record: RequestRecord, action: Respond) -> None:
        headers = list(action.headers)
        names = {name.lower() for name, _ in headers}
        if action.with_nonce and "replay-nonce" not in names:
            nonce = self.server.proxy.fresh_nonce()
            if nonce is not None:
                headers.append(("Replay-Nonce", nonce))
        if "date" not in names:
            headers.append(("Date", email.utils.formatdate(usegmt=True)))
        headers.append(("Cache-Control", "no-store"))
        self.server.proxy._finish(record, "answered", action.code)
        self._send(action.code, headers, action.body)

    def _reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send RST instead of FIN."""
        self.close_connection = True
        connection = self.connection
        try:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as error:
            log.debug("fault proxy: SO_LINGER failed: %s", error)
        # The makefile() readers hold the socket open: close them first, then the socket.
        self.rfile.close()
        connection.close()

    def _send(
        self,
        code: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        reason: str | None = None,
        length: str | None = None,
    ) -> None:
        self.send_response_only(code, reason)
        for name, value in headers:
            self.send_header(name, value)
        bodiless = code in (204, 304) or 100 <= code < 200
        if not bodiless:
            self.send_header("Content-Length", length or str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and not bodiless and body:
            self.wfile.write(body)
        self.log_request(code)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise ValueError(f"Content-Length {length!r}")
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size_line = self.rfile.readline(1024).split(b";")[0].strip()
            size = int(size_line, 16)
            if size == 0:
                # Trailer fields end with an empty line.
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
