"""One exception tree for everything certok reports to a user.

Each class carries the HTTP status and the envelope ``code`` it maps to; the message always
says what was wrong and what to do next. The API turns these into the httpsok envelope in
one place (``certok.api.envelope``); the CLI prints the message.
"""

from __future__ import annotations


class CertokError(Exception):
    """Something went wrong."""

    http_status = 500
    code = 1000

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "error").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidRequest(CertokError):
    """The request is not valid: check the parameters against the API documentation."""

    http_status = 400
    code = 1001


class InvalidDomain(InvalidRequest):
    """A domain name is not valid."""

    code = 1002


class Unauthenticated(CertokError):
    """Missing or invalid token: send the header `httpsok-token: <token>` with a valid token."""

    http_status = 401
    code = 1401


class Forbidden(CertokError):
    """This tenant may not do that."""

    http_status = 403
    code = 1403


class NotFound(CertokError):
    """Not found."""

    http_status = 404
    code = 1404


class CodeExpired(CertokError):
    """The verification code has expired: call /v1/cert/dv again for a new code."""

    http_status = 410
    code = 1410


class Conflict(CertokError):
    """The request conflicts with the current state."""

    http_status = 409
    code = 1409


class RateLimited(CertokError):
    """Too many requests: wait a moment and try again."""

    http_status = 429
    code = 1429

    def __init__(self, message: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CertokError):
    """certok is restarting one of its processes: try again in a moment."""

    http_status = 503
    code = 1503


# How much of a client's unknown identifier an error message repeats: enough to recognise a
# typo, never a megabyte of whatever a client sent back at it.
ECHOED_CHARS = 64


def echoed(value: str) -> str:
    """`value` as an error message may repeat it: at most ECHOED_CHARS, then an ellipsis."""
    return value if len(value) <= ECHOED_CHARS else value[:ECHOED_CHARS] + "…"


class ConfigurationError(CertokError):
    """certok is misconfigured: see docs/settings.md."""

    code = 1500
