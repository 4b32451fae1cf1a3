"""ZeroSSL external account binding credentials, fetched for an email address.

ZeroSSL hands out EAB credentials without an account of its own: ``POST
https://api.zerossl.com/acme/eab-credentials-email`` with the form field ``email``. Errors
come back as HTTP 200 with ``{"success": false, "error": {...}}``, so the body decides, not
the status. Bursts get 429 with a Retry-After that can be a whole day.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from certok.clock import Clock, utcnow
from certok.issuance.problems import (
    GARBLED_RESPONSE,
    HTTP_ERROR,
    TIMEOUT,
    TRANSPORT_ERROR,
    AcmeProblem,
    ProblemKind,
    clean_text,
    parse_retry_after,
)

ZEROSSL_EAB_URL = "https://api.zerossl.com/acme/eab-credentials-email"
ZEROSSL_EAB_REFUSED = "zerosslEabRefused"
_TIMEOUT_SECONDS = 30.0


class HttpPost(Protocol):
    """``httpx.post`` or ``httpx.Client.post``: a form POST returning an httpx.Response."""

    def __call__(self, url: str, *, data: Mapping[str, str]) -> httpx.Response: ...


def _post(url: str, *, data: Mapping[str, str]) -> httpx.Response:
    return httpx.post(url, data=data, timeout=_TIMEOUT_SECONDS)


def fetch_zerossl_eab(
    email: str,
    *,
    api_url: str = ZEROSSL_EAB_URL,
    http_post: HttpPost = _post,
    clock: Clock = utcnow,
) -> tuple[str, str]:
    """``(eab_kid, eab_hmac_key)`` for ``email``; raises :class:`AcmeProblem` otherwise."""
    try:
        response = http_post(api_url, data={"email": email})
    except httpx.TimeoutException as exc:
        raise AcmeProblem(
            ProblemKind.RETRYABLE, TIMEOUT, f"ZeroSSL's EAB API did not answer in time ({exc})"
        ) from exc
    except httpx.HTTPError as exc:
        raise AcmeProblem(
            ProblemKind.RETRYABLE,
            TRANSPORT_ERROR,
            clean_text(f"could not reach ZeroSSL's EAB API at {api_url}: {exc}"),
        ) from exc
    if response.status_code != 200:
        raise _http_problem(response, clock)
    body = _json_object(response)
    if body.get("success") is not True:
        raise AcmeProblem(
            ProblemKind.REJECTED,
            ZEROSSL_EAB_REFUSED,
            clean_text(
                f"ZeroSSL refused EAB credentials for {email}: {_zerossl_error(body)}; "
                "check the issuer's zerossl_email, or set eab_kid and eab_hmac_key from the "
                "ZeroSSL dashboard"
            ),
        )
    kid, hmac_key = body.get("eab_kid"), body.get("eab_hmac_key")
    if not isinstance(kid, str) or not kid or not isinstance(hmac_key, str) or not hmac_key:
        raise AcmeProblem(
            ProblemKind.RETRYABLE,
            GARBLED_RESPONSE,
            "ZeroSSL reported success but sent no eab_kid/eab_hmac_key",
        )
    return kid, hmac_key


def _http_problem(response: httpx.Response, clock: Clock) -> AcmeProblem:
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"), clock())
    if status == 429:
        return AcmeProblem(
            ProblemKind.RATE_LIMITED,
            "rateLimited",
            "ZeroSSL's EAB API is rate limiting this server",
            retry_after=retry_after,
            http_status=status,
        )
    kind = ProblemKind.RETRYABLE if status >= 500 or status == 408 else ProblemKind.REJECTED
    return AcmeProblem(
        kind,
        HTTP_ERROR,
        clean_text(f"ZeroSSL's EAB API answered HTTP {status}: {response.text[:200]}"),
        retry_after=retry_after,
        http_status=status,
    )


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AcmeProblem(
            ProblemKind.RETRYABLE, GARBLED_RESPONSE, "ZeroSSL's EAB API answered with non-JSON"
        ) from exc
    if not isinstance(body, dict):
        raise AcmeProblem(
            ProblemKind.RETRYABLE, GARBLED_RESPONSE, "ZeroSSL's EAB API answered with non-JSON"
        )
    return body


def _zerossl_error(body: Mapping[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, Mapping):
        kind = error.get("type") or error.get("info") or "unknown error"
        code = error.get("code")
        return f"{kind} (code {code})" if code is not None else str(kind)
    if isinstance(error, str):
        return error
    return "no reason given"
