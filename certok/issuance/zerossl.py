"""ZeroSSL external account binding credentials, fetched for an email address.

ZeroSSL hands out EAB credentials without an account of its own: ``POST
https://api.zerossl.com/acme/eab-credentials-email`` with the form field ``email``. Errors
come back as HTTP 200 with ``{"success": false, "error": {...}}``, so the body decides, not
the status. Bursts get 429 with a Retry-After that can be a whole day.

The request goes out like certok's ACME requests: a `requests` session whose connections
resolve the API's host name through certok's configured resolvers (``issuance/transport.py``),
sent through ``DirectSender`` (``issuance/direct_http.py``); never the system resolver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlencode

import requests
import requests.exceptions

from certok.clock import Clock, utcnow
from certok.issuance.direct_http import DirectSender
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
from certok.issuance.transport import Resolve, mount_resolver

ZEROSSL_EAB_URL = "https://api.zerossl.com/acme/eab-credentials-email"
ZEROSSL_EAB_REFUSED = "zerosslEabRefused"
_TIMEOUT_SECONDS = 30.0


class HttpPost(Protocol):
    """A form POST returning a ``requests.Response`` (raises ``requests`` exceptions)."""

    def __call__(self, url: str, *, data: Mapping[str, str]) -> requests.Response: ...


def form_poster(
    resolve: Resolve, *, ca_bundle: str | None = None, timeout: float = _TIMEOUT_SECONDS
) -> HttpPost:
    """An HttpPost over certok's CA transport: host names through ``resolve`` only."""

    def post(url: str, *, data: Mapping[str, str]) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False  # no proxies or netrc from the environment
            mount_resolver(session, resolve)
            sender = DirectSender(session, ca_bundle or True)
            return sender.send(
                "POST",
                url,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                    "User-Agent": "certok",
                },
                body=urlencode(dict(data)).encode(),
                timeout=timeout,
            )

    return post


def fetch_zerossl_eab(
    email: str,
    *,
    http_post: HttpPost,
    api_url: str = ZEROSSL_EAB_URL,
    clock: Clock = utcnow,
) -> tuple[str, str]:
    """``(eab_kid, eab_hmac_key)`` for ``email``; raises :class:`AcmeProblem` otherwise.

    ``http_post``: ``form_poster(resolve)`` in certok (the configured resolvers)."""
    try:
        response = http_post(api_url, data={"email": email})
    except requests.exceptions.Timeout as exc:
        raise AcmeProblem(
            ProblemKind.RETRYABLE, TIMEOUT, f"ZeroSSL's EAB API did not answer in time ({exc})"
        ) from exc
    except requests.RequestException as exc:
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


def _http_problem(response: requests.Response, clock: Clock) -> AcmeProblem:
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


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError) as exc:  # requests' JSONDecodeError is one
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
