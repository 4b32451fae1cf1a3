"""One log format for certok's lines and uvicorn's, as text for people or JSON for collectors.

Every line carries the process's role (``main``, ``dns``, ``api+worker 2``, ``writer``,
``supervisor``) and pid, so the lines of `--processes N` can be told apart. uvicorn is given
no logging configuration of its own (``log_config=None``): its loggers propagate here.

The access log (logger ``certok.access``) has one line per HTTP request with the traceId the
client got in its envelope. It never carries a query string (tokens, codes and domains travel
there) nor the token segment of an HTTP-01 path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(role)s %(process)d]: %(message)s"
ACCESS = logging.getLogger("certok.access")
# Fields an access line carries besides the message (JSON keys).
_ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "client", "trace_id")
_HTTP01_PREFIX = "/v1/dv/"

_role = "main"
# The access lines' own writer while certok's handler is the only one (see _LeanAccess).
_lean: _LeanAccess | None = None


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, role, pid, msg (+ access fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "role": getattr(record, "role", _role),
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for name in _ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Any, role: str = "main") -> None:
    """Route every logger (certok's, uvicorn's, the libraries') through one handler."""
    global _role
    _role = role
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RoleFilter())
    if getattr(settings, "log_format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
        formatter.converter = time.gmtime  # UTC, like the JSON lines
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    global _lean
    _lean = _LeanAccess(handler, json_lines=getattr(settings, "log_format", "text") == "json")
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # uvicorn's own access lines would duplicate certok.access (and carry the query string).
    logging.getLogger("uvicorn.access").disabled = True


def set_role(role: str) -> None:
    """A forked child's role (its logging was configured by its parent)."""
    global _role
    _role = role


def access(scope: Any, status: int, trace_id: str | None, started: float) -> None:
    """One access line for a finished request (called only when INFO is enabled)."""
    client = scope.get("client")
    method = scope.get("method", "")
    path = public_path(scope.get("path", ""))
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    lean = _lean
    if lean is not None and not ACCESS.handlers and lean.current():
        lean.write(method, path, status, duration_ms, client[0] if client else None, trace_id)
        return
    ACCESS.info(
        "%s %s %s %.1fms traceId=%s",
        method,
        path,
        status,
        duration_ms,
        trace_id or "-",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "client": client[0] if client else None,
            "trace_id": trace_id,
        },
    )


class _LeanAccess:
    """Writes access lines in the handler's format without a LogRecord, a Formatter pass and
    strftime per line: the logging module's path for one line cost many times what certok
    spends answering a polled issued order. Used only while this handler is
    root's one handler (tests and embedders that add their own get plain logging)."""

    def __init__(self, handler: logging.StreamHandler[Any], *, json_lines: bool) -> None:
        self._handler = handler
        self._json = json_lines
        self._second = -1
        self._stamp = ""
        # configure_logging runs again in each forked child: role and pid are fixed here.
        self._tag = f"[{_role} {os.getpid()}]"
        self._json_tag = (
            f'"level":"INFO","logger":"{ACCESS.name}","role":{json.dumps(_role)},'
            f'"pid":{os.getpid()}'
        )

    def current(self) -> bool:
        return logging.getLogger().handlers == [self._handler]

    def write(
        self,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        client: str | None,
        trace_id: str | None,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        millis = int((now - second) * 1000)
        message = f"{method} {path} {status} {duration_ms:.1f}ms traceId={trace_id or '-'}"
        if self._json:
            dumps = json.dumps
            line = (
                f'{{"time":"{self._stamp[:10]}T{self._stamp[11:]}.{millis:03d}Z",'
                f'{self._json_tag},"msg":{dumps(message)},"method":{dumps(method)},'
                f'"path":{dumps(path)},"status":{status},"duration_ms":{duration_ms},'
                f'"client":{dumps(client)},"trace_id":{dumps(trace_id)}}}\n'
            )
        else:
            line = f"{self._stamp},{millis:03d} INFO {ACCESS.name} {self._tag}: {message}\n"
        handler = self._handler
        stream = handler.stream
        with handler.lock or contextlib.nullcontext():
            stream.write(line)
            if not getattr(stream, "line_buffering", False):
                stream.flush()


def public_path(path: str) -> str:
    """The path as it may be logged: an HTTP-01 token (a challenge secret until validated)
    replaced by a placeholder."""
    if path.startswith(_HTTP01_PREFIX):
        parts = path.split("/")
        if len(parts) >= 5:
            parts[-1] = "{token}"
            return "/".join(parts)
    return path
