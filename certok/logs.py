"""One log format for certok's lines and uvicorn's, as text for people or JSON for collectors.

Every line carries the process's role (``main``, ``dns``, ``api+worker 2``, ``writer``,
``supervisor``) and pid, so the lines of `--processes N` can be told apart. uvicorn is given
no logging configuration of its own (``log_config=None``): its loggers propagate here.

The access log (logger ``certok.access``) has one line per HTTP request with the traceId the
client got in its envelope. It never carries a query string (tokens, codes and domains travel
there) nor the token segment of an HTTP-01 path.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(role)s %(process)d]: %(message)s"
ACCESS = logging.getLogger("certok.access")
# Fields an access line carries besides the message (JSON keys).
_ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "client", "trace_id")
_HTTP01_PREFIX = "/v1/dv/"

_role = "main"


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


def public_path(path: str) -> str:
    """The path as it may be logged: an HTTP-01 token (a challenge secret until validated)
    replaced by a placeholder."""
    if path.startswith(_HTTP01_PREFIX):
        parts = path.split("/")
        if len(parts) >= 5:
            parts[-1] = "{token}"
            return "/".join(parts)
    return path
