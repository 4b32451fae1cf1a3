"""ACME Renewal Information (RFC 9773) and profiles served in front of Pebble 2.4, which has
neither (ARI came in Pebble 2.6, profiles in 2.7).

Attached to a FaultProxy (`proxy.front = AriFront()`), it:

- adds `renewalInfo` (`<proxy>/renewal-info`) and `meta.profiles` to Pebble's directory;
- answers `GET /renewal-info/<certID>` in the RFC's wire format
  (`{"suggestedWindow": {"start", "end"}, "explanationURL"}` + `Retry-After`), for certificates
  it has seen Pebble hand out (POST-as-GET of `/certZ/`) or was given (`register`): the certID
  is computed here from the certificate's AKI and serial, independently of certok's code;
- reads each newOrder's JWS payload (`profile`, `replaces`) and checks `replaces` as a CA
  would: an unknown certID is `malformed` (400), a certificate already replaced
  `alreadyReplaced` (409); `replaces_policy` can refuse every `replaces` instead
  ("alreadyReplaced" 409 or "unauthorized" 403, as for another account's certificate).
  Pebble ignores the fields it does not know, so an accepted order goes on to Pebble.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

RENEWAL_INFO_PATH = "/renewal-info"
NEW_ORDER_PATH = "/order-plz"
CERTIFICATE_PATH = "/certZ/"
DEFAULT_PROFILES = {
    "classic": "The profile you're accustomed to",
    "tlsserver": "Server authentication only, 45 days",
    "shortlived": "Short-lived, 160 hours",
}
ACME_ERROR = "urn:ietf:params:acme:error:"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ari_cert_id(certificate: x509.Certificate) -> str:
    """RFC 9773 §4.1, written out again here so the test does not trust certok's version."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = certificate.serial_number
    der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER: a leading 00 if needed
    return f"{_b64url(aki.key_identifier)}.{_b64url(der)}"


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Window:
    start: dt.datetime
    end: dt.datetime
    retry_after_seconds: int | None = 21600
    explanation_url: str | None = None


@dataclass
class AriFront:
    profiles: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROFILES))
    # None: check `replaces` as a CA would; "alreadyReplaced" / "unauthorized": refuse it.
    replaces_policy: str | None = None
    # Answer this many renewalInfo requests with 500 first.
    fail_next: int = 0
    certificates: dict[str, x509.Certificate] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)
    new_orders: list[dict[str, Any]] = field(default_factory=list)
    renewal_info_requests: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- for tests -------------------------------------------------------------------------------
    def register(self, certificate: x509.Certificate) -> str:
        with self._lock:
            cert_id = ari_cert_id(certificate)
            self.certificates[cert_id] = certificate
            return cert_id

    def set_window(self, cert_id: str, window: Window) -> None:
        with self._lock:
            self.windows[cert_id] = window

    def window_for(self, cert_id: str) -> Window | None:
        with self._lock:
            if cert_id in self.windows:
                return self.windows[cert_id]
            certificate = self.certificates.get(cert_id)
        if certificate is None:
            return None
        # Default: a two-day window around two thirds of the lifetime, as Let's Encrypt does.
        not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        middle = not_before + (not_after - not_before) * 2 / 3
        return Window(middle - dt.timedelta(days=1), middle + dt.timedelta(days=1))

    # --- for the proxy ---------------------------------------------------------------------------
    def answer(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """A local answer (status, headers, body), or None to forward the request.
        renewalInfo answers carry no Replay-Nonce (a GET needs none); newOrder refusals do."""
        if method == "GET" and path.startswith(RENEWAL_INFO_PATH + "/"):
            return self._renewal_info(path[len(RENEWAL_INFO_PATH) + 1 :])
        if method == "POST" and path == NEW_ORDER_PATH:
            return self._new_order(body)
        return None

    def observe(self, method: str, path: str, code: int, body: bytes, proxy_base: str) -> bytes:
        """Rewrite or learn from an upstream answer; returns the body to send on."""
        if method == "GET" and code == 200 and path.rstrip("/") == "/dir":
            directory = json.loads(body)
            directory["renewalInfo"] = proxy_base + RENEWAL_INFO_PATH
            directory.setdefault("meta", {})["profiles"] = self.profiles
            return json.dumps(directory).encode()
        if method == "POST" and code == 200 and path.startswith(CERTIFICATE_PATH):
            chain = x509.load_pem_x509_certificates(body)
            if chain:
                self.register(chain[0])
        return body

    # --- answers -------------------------------------------------------------------------------
    def _renewal_info(self, cert_id: str) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            self.renewal_info_requests.append(cert_id)
            failing = self.fail_next > 0
            if failing:
                self.fail_next -= 1
        if failing:
            return _problem(500, "serverInternal", "renewalInfo is having a bad day")
        window = self.window_for(cert_id)
        if window is None:
            return _problem(404, "malformed", f"no certificate with certID {cert_id}")
        document: dict[str, Any] = {
            "suggestedWindow": {"start": _rfc3339(window.start), "end": _rfc3339(window.end)}
        }
        if window.explanation_url:
            document["explanationURL"] = window.explanation_url
        headers = [("Content-Type", "application/json")]
        if window.retry_after_seconds is not None:
            headers.append(("Retry-After", str(window.retry_after_seconds)))
        return 200, headers, json.dumps(document).encode()

    def _new_order(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        payload = _jws_payload(body)
        with self._lock:
            self.new_orders.append(payload)
        replaces = payload.get("replaces")
        profile = payload.get("profile")
        if profile is not None and profile not in self.profiles:
            return _problem(400, "invalidProfile", f"profile {profile!r} is not offered")
        if replaces is None:
            return None
        if self.replaces_policy == "unauthorized":
            return _problem(403, "unauthorized", "the replaced certificate is another account's")
        if self.replaces_policy == "alreadyReplaced":
            return _problem(409, "alreadyReplaced", "that certificate was replaced already")
        with self._lock:
            if replaces not in self.certificates:
                return _problem(400, "malformed", f"replaces names unknown certID {replaces}")
            if replaces in self.replaced:
                return _problem(409, "alreadyReplaced", f"{replaces} was replaced already")
            self.replaced.add(replaces)
        return None


def _problem(status: int, kind: str, detail: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"type": ACME_ERROR + kind, "detail": detail, "status": status}).encode()
    return status, [("Content-Type", "application/problem+json")], body


def _jws_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)["payload"]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, KeyError, TypeError):
        return {}
    return decoded if isinstance(decoded, dict) else {}
