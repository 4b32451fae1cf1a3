"""The agent's calls to its certok server: one kept-alive connection, the API's envelope read.

Every answer is `{code, msg, data, traceId}`; a non-zero code or a non-2xx status becomes
`ApiError` carrying certok's own message, which already says what to do.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from typing import Any

TOKEN_HEADER = "httpsok-token"  # noqa: S105 - a header name
TIMEOUT_SECONDS = 60.0


class ApiError(Exception):
    """certok refused or could not answer; `str()` is a message for the operator."""

    def __init__(self, message: str, status: int = 0, code: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class CertokApi:
    def __init__(
        self, server: str, token: str, user_agent: str, ca_file: str | None = None
    ) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server {server!r} is not an http(s) URL")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._token = token
        self._user_agent = user_agent
        self._ca_file = ca_file
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        return self._call("GET", path + ("?" + query if query else ""), None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, json.dumps(body).encode())

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._scheme == "https":
                context = ssl.create_default_context(cafile=self._ca_file)
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=TIMEOUT_SECONDS, context=context
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=TIMEOUT_SECONDS
                )
        return self._connection

    def _call(self, method: str, path: str, body: bytes | None) -> Any:
        headers = {TOKEN_HEADER: self._token, "User-Agent": self._user_agent}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(method, self._prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, OSError) as error:
                self.close()
                # A kept-alive connection the server closed meanwhile: one fresh try.
                if attempt == 2 or not isinstance(
                    error, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                ):
                    raise ApiError(f"cannot reach certok at {self._host}: {error}") from error
        try:
            answer = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ApiError(
                f"certok answered {response.status} with something that is not its JSON "
                f"envelope (is `server` the certok URL?)",
                response.status,
            ) from error
        if not isinstance(answer, dict):
            raise ApiError(f"certok answered {response.status} with unexpected JSON")
        code = answer.get("code", -1)
        if response.status >= 300 or code != 0:
            message = answer.get("msg") or f"HTTP {response.status}"
            raise ApiError(str(message), response.status, code if isinstance(code, int) else -1)
        return answer.get("data")
