"""Orders, authorizations and challenges as certok reads them from the CA's JSON.

They are read from the raw JSON rather than the library's message classes: an unknown
status or a token that is not canonical base64url must reach the worker as data it can
judge, not as a deserialization error. Anything else malformed is a GARBLED_RESPONSE.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from certok.issuance.problems import (
    GARBLED_RESPONSE,
    AcmeProblem,
    ProblemKind,
    describe_problem,
    kind_for_type,
)

# RFC 8555 §7.1.6 statuses the worker compares against.
STATUS_PENDING = "pending"
STATUS_READY = "ready"
STATUS_PROCESSING = "processing"
STATUS_VALID = "valid"
STATUS_INVALID = "invalid"


@dataclass(frozen=True)
class ChallengeInfo:
    type: str
    url: str
    # As the CA sent it: untrusted. Check with valid_token() before any use.
    token: str
    status: str
    error: str | None
    # How bad the error is (None without an error): AUTHORIZATION_INVALID means a new order may
    # succeed once the pre-check passes again; REJECTED means it will not.
    error_kind: ProblemKind | None = None


@dataclass(frozen=True)
class AuthzInfo:
    url: str
    # The name without "*." (RFC 8555 §7.1.4); `wildcard` says whether the order asked for it.
    identifier: str
    wildcard: bool
    status: str
    challenges: tuple[ChallengeInfo, ...]
    # The first failed challenge's problem, described.
    error: str | None
    error_kind: ProblemKind | None = None

    @property
    def name(self) -> str:
        """The name as it appears in the certificate (``*.example.com`` for a wildcard)."""
        return f"*.{self.identifier}" if self.wildcard else self.identifier


@dataclass(frozen=True)
class OrderInfo:
    url: str
    status: str
    finalize_url: str
    certificate_url: str | None
    # What the CA listed, whether or not they were fetched; `authorizations` holds the fetched.
    authorization_urls: tuple[str, ...]
    authorizations: tuple[AuthzInfo, ...]
    error: str | None
    # When the CA asked to be polled again (Retry-After on the order), if it did.
    retry_after: dt.datetime | None


def garbled(detail: str) -> AcmeProblem:
    return AcmeProblem(ProblemKind.RETRYABLE, GARBLED_RESPONSE, detail)


def json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise garbled(f"the CA's answer from {response.url} is not JSON") from exc
    if not isinstance(body, dict):
        raise garbled(f"the CA's answer from {response.url} is not a JSON object")
    return body


def _required_string(body: Mapping[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise garbled(f"the CA's {what} has no {key!r}")
    return value


def _optional_string(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


def _string_list(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise garbled(f"the CA's {key!r} is not a list of URLs")
    return value


def _problem_text(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    return describe_problem(error) if isinstance(error, Mapping) else None


def order_info(
    url: str,
    body: Mapping[str, Any],
    authorizations: tuple[AuthzInfo, ...],
    retry_after: dt.datetime | None,
) -> OrderInfo:
    return OrderInfo(
        url=url,
        status=_required_string(body, "status", "order"),
        finalize_url=_required_string(body, "finalize", "order"),
        certificate_url=_optional_string(body, "certificate"),
        authorization_urls=tuple(_string_list(body, "authorizations")),
        authorizations=authorizations,
        error=_problem_text(body),
        retry_after=retry_after,
    )


def authz_info(url: str, body: Mapping[str, Any]) -> AuthzInfo:
    identifier = body.get("identifier")
    if not isinstance(identifier, Mapping):
        raise garbled(f"the authorization {url} has no identifier")
    raw_challenges = body.get("challenges", [])
    if not isinstance(raw_challenges, list):
        raise garbled(f"the authorization {url} has no list of challenges")
    challenges = tuple(challenge_info(c) for c in raw_challenges if isinstance(c, Mapping))
    failed = next((c for c in challenges if c.error), None)
    return AuthzInfo(
        url=url,
        identifier=_required_string(identifier, "value", "authorization identifier"),
        wildcard=body.get("wildcard") is True,
        status=_required_string(body, "status", "authorization"),
        challenges=challenges,
        error=failed.error if failed else None,
        error_kind=failed.error_kind if failed else None,
    )


def challenge_info(body: Mapping[str, Any]) -> ChallengeInfo:
    token = body.get("token")
    return ChallengeInfo(
        type=_required_string(body, "type", "challenge"),
        url=_required_string(body, "url", "challenge"),
        token=token if isinstance(token, str) else "",
        status=_optional_string(body, "status") or STATUS_PENDING,
        error=_problem_text(body),
        error_kind=_problem_kind_of(body),
    )


def _problem_kind_of(body: Mapping[str, Any]) -> ProblemKind | None:
    error = body.get("error")
    if not isinstance(error, Mapping):
        return None
    problem_type = error.get("type")
    return kind_for_type(problem_type if isinstance(problem_type, str) else "")
