"""The httpsok envelope `{code, msg, data, traceId}` and the one place errors become answers."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from certok.db.files import sqlite_file
from certok.db.storage_errors import client_message, operator_message, storage_failure
from certok.errors import CertokError, Unavailable

log = logging.getLogger(__name__)

SUCCESS = 0
NO_STORE = {"Cache-Control": "no-store"}

# Envelope codes for failures that happen before certok's own code runs (routing, methods).
_HTTP_CODES = {404: 1404, 405: 1405}


def trace_id(request: Request) -> str:
    existing = getattr(request.state, "trace_id", None)
    if existing is None:
        existing = new_trace_id()
        request.state.trace_id = existing
    return existing


def envelope(
    request: Request,
    data: Any = None,
    *,
    code: int = SUCCESS,
    msg: str = "success",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"code": code, "msg": msg, "data": data, "traceId": trace_id(request)}
    return JSONResponse(body, status_code=status, headers=headers)


def envelope_with_encoded_data(
    request: Request, data_json: bytes, *, headers: dict[str, str] | None = None
) -> Response:
    """A success envelope around data already encoded as JSON (an issued order's answer)."""
    body = encoded_success(data_json, trace_id(request))
    return Response(body, media_type="application/json", headers=headers)


def encoded_success(data_json: bytes, trace: str) -> bytes:
    """The success envelope's bytes around data already encoded as JSON."""
    return b"".join(
        (b'{"code":0,"msg":"success","data":', data_json, b',"traceId":"', trace.encode(), b'"}')
    )


def new_trace_id() -> str:
    return secrets.token_hex(8)


async def certok_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CertokError)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return envelope(
        request, code=exc.code, msg=exc.message, status=exc.http_status, headers=headers
    )


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        msg = f"no such endpoint: {request.url.path}; see /v1/openapi.json"
    elif exc.status_code == 405:
        msg = f"method {request.method} not allowed on {request.url.path}; see /v1/openapi.json"
    else:
        msg = str(exc.detail)
    return envelope(
        request,
        code=_HTTP_CODES.get(exc.status_code, 1000 + exc.status_code),
        msg=msg,
        status=exc.status_code,
    )


# How long a client is asked to wait when the database could not be reached.
DATABASE_RETRY_AFTER_SECONDS = 2


# How long a client is asked to wait when certok's storage is full or read-only.
STORAGE_RETRY_AFTER_SECONDS = 60


def _storage_failure_answer(request: Request, exc: Exception) -> JSONResponse | None:
    """503 naming a full disk or read-only storage (not "unreachable"), or None if not that."""
    settings = getattr(getattr(request.app.state, "services", None), "settings", None)
    directory: Path | None = None
    if settings is not None:
        database = sqlite_file(settings.effective_database_url)
        directory = database.parent if database is not None else settings.data_dir
    failure = storage_failure(exc, directory)
    if failure is None:
        return None
    trace = trace_id(request)
    cause = getattr(exc, "orig", None) or exc
    log.error(
        "cannot write the database (traceId %s): %s (%s: %s)",
        trace,
        operator_message(failure, directory or Path(".")),
        type(cause).__name__,
        cause,
    )
    unavailable = Unavailable(client_message(failure))
    return envelope(
        request,
        code=unavailable.code,
        msg=unavailable.message,
        status=unavailable.http_status,
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
    )


async def database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Database errors that are not OperationalErrors: storage problems PostgreSQL reports
    otherwise (a read-only transaction on a standby), else an unexpected error."""
    answer = _storage_failure_answer(request, exc)
    if answer is not None:
        return answer
    return await unexpected_error_handler(request, exc)


async def database_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """The database could not be reached or dropped the connection (a restart, a failover):
    the same request works once it is back (apply is idempotent; dv issues a new code).
    A full disk or read-only storage is said as such."""
    answer = _storage_failure_answer(request, exc)
    if answer is not None:
        return answer
    trace = trace_id(request)
    # The driver's own message: SQLAlchemy's would add the statement's parameters.
    cause = getattr(exc, "orig", None) or exc
    log.warning("database unavailable (traceId %s): %s: %s", trace, type(cause).__name__, cause)
    unavailable = Unavailable(
        "certok's database is unreachable or restarting: "
        f"retry the same request in {DATABASE_RETRY_AFTER_SECONDS} s"
    )
    return envelope(
        request,
        code=unavailable.code,
        msg=unavailable.message,
        status=unavailable.http_status,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    trace = trace_id(request)
    log.error("unexpected error (traceId %s)", trace, exc_info=exc)
    return envelope(
        request,
        code=1500,
        msg=f"internal error; the operator can find it in the log under traceId {trace}",
        status=500,
    )
