"""ACME requests sent straight through a session's urllib3 connection pool.

Under issuance load the requests to the CA are the costliest thing certok does. `requests`
spends about as much CPU per request as the exchange itself: it parses the URL several times,
rebuilds the connection pool's key, checks the CA bundle on disk, runs cookie extraction twice
and prepares headers and body through generic machinery. ACME needs none of that: a few
origins, a fixed CA bundle, no cookies, no proxies, no redirects. `DirectSender` keeps one
pool per origin (taken once from the session's adapter, so certok's resolver-aware connection
classes and the adapter's TLS settings still apply) and sends each request with
`urlopen`, for much less CPU per request (`python bench/acme_request.py` measures it).

It still speaks `requests` at its borders, so the `acme` library and certok's error
classification see what they always saw: a `requests.Response`, and `requests` exceptions
for transport failures (urllib3's are translated like `HTTPAdapter.send` does).
"""

from __future__ import annotations

from typing import cast
from urllib.parse import urlsplit

import requests
import requests.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3 import exceptions as urllib3_errors
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.util.timeout import Timeout


class DirectSender:
    """Sends requests through ``session``'s pools; one per thread, like the session."""

    def __init__(self, session: requests.Session, verify: bool | str) -> None:
        self._session = session
        self._verify = verify
        self._pools: dict[str, HTTPConnectionPool] = {}

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float | tuple[float, float],
    ) -> requests.Response:
        """One request; a redirect is followed by `requests` itself (no CA sends one)."""
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            pool = self._pool(parts.scheme, parts.netloc, url)
            raw = pool.urlopen(
                method,
                target,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=True,
                timeout=_timeout(timeout),
            )
        except urllib3_errors.HTTPError as error:
            raise _translated(error) from error
        except OSError as error:
            raise requests.exceptions.ConnectionError(error) from error
        if raw.get_redirect_location():
            return self._session.request(
                method, url, data=body, headers=headers, timeout=timeout, verify=self._verify
            )
        response = requests.Response()
        response.status_code = raw.status
        response.reason = raw.reason or ""
        response.headers = CaseInsensitiveDict(raw.headers)
        # ACME's JSON is UTF-8 (RFC 8555 §6.2) and a PEM chain is ASCII: never guess.
        response.encoding = get_encoding_from_headers(response.headers) or "utf-8"
        response._content = raw.data
        response.url = url
        response.raw = raw
        return response

    def _pool(self, scheme: str, netloc: str, url: str) -> HTTPConnectionPool:
        origin = f"{scheme}://{netloc}"
        pool = self._pools.get(origin)
        # A closed session empties its pools (pool.pool is None then): take a fresh one.
        if pool is None or pool.pool is None:
            # requests types get_adapter as BaseAdapter; a session mounts HTTPAdapters only
            # (transport.py's resolving adapter is one too).
            adapter = cast(HTTPAdapter, self._session.get_adapter(url))
            probe = requests.Request("GET", url).prepare()
            pool = adapter.get_connection_with_tls_context(probe, self._verify, proxies={})
            adapter.cert_verify(pool, url, self._verify, None)
            self._pools[origin] = pool
        return pool


def _timeout(timeout: float | tuple[float, float]) -> Timeout:
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    return Timeout(connect=connect, read=read)


def _translated(error: urllib3_errors.HTTPError) -> requests.RequestException:
    """urllib3's exception as the `requests` one HTTPAdapter.send would have raised."""
    kind: type[requests.RequestException]
    if isinstance(error, urllib3_errors.SSLError):
        kind = requests.exceptions.SSLError
    elif isinstance(error, urllib3_errors.NewConnectionError):
        kind = requests.exceptions.ConnectionError  # refused, unreachable, no address
    elif isinstance(error, urllib3_errors.ConnectTimeoutError):
        kind = requests.exceptions.ConnectTimeout
    elif isinstance(error, urllib3_errors.ReadTimeoutError):
        kind = requests.exceptions.ReadTimeout
    elif isinstance(error, urllib3_errors.LocationValueError):
        kind = requests.exceptions.InvalidURL
    else:
        kind = requests.exceptions.ConnectionError  # protocol errors, a closed pool, ...
    return kind(error)
