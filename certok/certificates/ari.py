"""ACME Renewal Information (RFC 9773): the certificate identifier and the CA's answer.

Pure functions: no network, no database. `certok.issuance` fetches the answer; this module
says what it means.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass

from cryptography import x509


class AriError(ValueError):
    """The CA's renewalInfo answer does not follow RFC 9773."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def serial_der_bytes(serial: int) -> bytes:
    """The DER INTEGER's value bytes of a (positive) serial number.

    RFC 9773 §4.1: the serial's encoding "MUST include any leading zero bytes": a serial whose
    high bit is set gets a 00 byte in front, as DER gives it (ZeroSSL refuses IDs without it).
    """
    if serial < 0:
        raise ValueError("serial numbers are positive")
    length = serial.bit_length() // 8 + 1  # one more bit than needed: room for the sign
    return serial.to_bytes(length, "big")


def cert_id_from_parts(key_identifier: bytes, serial: int) -> str:
    """`base64url(AKI keyIdentifier) "." base64url(serial)`, padding stripped (RFC 9773 §4.1)."""
    return f"{_b64url(key_identifier)}.{_b64url(serial_der_bytes(serial))}"


def cert_id(certificate: x509.Certificate) -> str | None:
    """The certificate's ARI certID, or None when it has no Authority Key Identifier."""
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    if aki.key_identifier is None:
        return None
    return cert_id_from_parts(aki.key_identifier, certificate.serial_number)


@dataclass(frozen=True)
class RenewalInfo:
    """A renewalInfo answer: the suggested window, and when to ask again (if the CA said)."""

    start: dt.datetime
    end: dt.datetime
    explanation_url: str | None
    retry_after: dt.datetime | None


def parse_renewal_info(body: bytes, retry_after: dt.datetime | None) -> RenewalInfo:
    """Read a renewalInfo response body (RFC 9773 §4.2).

    "suggestedWindow" with RFC 3339 "start" and "end" is required; "end" must be after
    "start" ("The server MUST ... end ... later than start"; a client treats it as an error).
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AriError("the renewalInfo answer is not JSON") from exc
    if not isinstance(document, dict):
        raise AriError("the renewalInfo answer is not a JSON object")
    window = document.get("suggestedWindow")
    if not isinstance(window, dict):
        raise AriError("the renewalInfo answer has no suggestedWindow object")
    start = _timestamp(window.get("start"), "start")
    end = _timestamp(window.get("end"), "end")
    if end <= start:
        raise AriError(f"the suggestedWindow ends ({end:%Y-%m-%dT%H:%M:%SZ}) before it starts")
    explanation = document.get("explanationURL")
    return RenewalInfo(
        start=start,
        end=end,
        explanation_url=explanation if isinstance(explanation, str) else None,
        retry_after=retry_after,
    )


def _timestamp(value: object, name: str) -> dt.datetime:
    if not isinstance(value, str):
        raise AriError(f"the suggestedWindow has no {name} timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise AriError(f"the suggestedWindow {name} {value!r} is not RFC 3339") from exc
    if parsed.tzinfo is None:
        raise AriError(f"the suggestedWindow {name} {value!r} has no time zone")
    return parsed.astimezone(dt.UTC)
