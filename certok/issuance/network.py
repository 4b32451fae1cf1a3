"""The HTTP side of an ACME exchange: certbot's ClientNetwork with certok's changes.

The nonce handling (badNonce retried with the error's own nonce), a faster send path
straight through the connection pool, the flattened JWS, and a 409 whose problem document
is kept rather than dropped. Everything here overrides or calls a private method of `acme`;
tests/unit/test_acme_private_api.py fails by name if one of them changes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, cast

import josepy
import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages

from certok import metrics
from certok.issuance.direct_http import DirectSender
from certok.issuance.jws import flattened_jws

log = logging.getLogger(__name__)


class EmptyObject(josepy.JSONDeSerializable):
    """The JSON payload ``{}`` (RFC 8555 §7.5.1: "the client sends an empty JSON body")."""

    def to_partial_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, jobj: Any) -> EmptyObject:
        return cls()

    def __bool__(self) -> bool:
        # ClientNetwork sends b"" (POST-as-GET) for a falsy payload; {} must stay a payload.
        return True


class JsonPayload(josepy.JSONDeSerializable):
    """A JWS payload given as a plain JSON object (fields the library's messages lack)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def to_partial_json(self) -> dict[str, Any]:
        return self._body

    @classmethod
    def from_json(cls, jobj: Any) -> JsonPayload:
        return cls(dict(jobj))

    def __bool__(self) -> bool:
        return True


class NonceRetryingNetwork(acme_client.ClientNetwork):
    """A ClientNetwork that retries badNonce many times, with the error's own nonce.

    The library retries a badNonce once, and only stores nonces from successful answers.
    Against a CA that rejects most nonces (Pebble's PEBBLE_WFE_NONCEREJECT) that fails
    nearly every order; a tight loop of up to ``nonce_retries`` immediate retries succeeds.
    """

    def __init__(self, *, nonce_retries: int, issuer: str = "unknown", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._issuer = issuer  # the metrics' label: the issuer's name in certok's settings
        self._direct = DirectSender(self.session, self.verify_ssl)
        self._nonce_retries = nonce_retries
        # The latest response, so the border can read the status and Retry-After of a
        # failure the library turned into an exception without them.
        self.last_response: requests.Response | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.last_response = None
        response = self._send(method, url, *args, **kwargs)
        self.last_response = response
        if not response.ok:
            # RFC 8555 §6.5: the server "SHOULD provide [a Replay-Nonce] in error responses
            # as well"; keeping it saves a newNonce round trip on every badNonce retry.
            # None or unreadable: then the next POST asks newNonce for one.
            with contextlib.suppress(acme_errors.NonceError):
                self._add_nonce(response)
        return response

    def _send(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        """What the library's `_send_request` does, for less CPU per request
        (bench/acme_request.py measures it): straight through the connection pool
        (direct_http.py) instead of `requests.Session.request`, which merges the session's
        cookies, headers, hooks and settings into every request (slow `isinstance` checks
        against typing protocols on Python 3.11), and without the library's debug log lines,
        which format the response body whether or not anyone logs at DEBUG. ACME needs none
        of that: no cookies, no session headers, no proxies (`trust_env` is off).
        """
        started = time.perf_counter()
        endpoint = metrics.acme_endpoint(url)
        try:
            response = self._send_now(method, url, *args, **kwargs)
        except Exception:
            metrics.ACME_REQUESTS.labels(self._issuer, endpoint, "error").inc()
            raise
        metrics.ACME_REQUESTS.labels(self._issuer, endpoint, str(response.status_code)).inc()
        metrics.ACME_REQUEST_DURATION.labels(self._issuer, endpoint).observe(
            time.perf_counter() - started
        )
        return response

    def _send_now(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        headers = {"User-Agent": self.user_agent, **kwargs.pop("headers", {})}
        timeout = kwargs.pop("timeout", self._default_timeout)
        data = kwargs.pop("data", None)
        if args or kwargs or not isinstance(data, str | bytes | None):
            # Not a shape the library sends today: the general path.
            kwargs.update(headers=headers, data=data)
            prepared = requests.Request(method, url, *args, **kwargs).prepare()
            response = self.session.send(
                prepared, timeout=timeout, verify=self.verify_ssl, proxies={}
            )
        else:
            body = data.encode("utf-8") if isinstance(data, str) else data
            response = self._direct.send(method, url, headers=headers, body=body, timeout=timeout)
        if "Accept" not in headers:
            # As the library does: ACME's JSON is UTF-8 (a PEM chain asked for with Accept
            # is left to the Content-Type).
            response.encoding = "utf-8"
        log.debug("%s %s: HTTP %d", method, url, response.status_code)
        return response

    def _wrap_in_jws(self, obj: josepy.JSONDeSerializable, nonce: str, url: str) -> str:
        # The library's signature types the nonce as str; _get_nonce hands over the decoded
        # bytes that _add_nonce stored.
        payload = obj.json_dumps().encode() if obj else b""
        assert self.key is not None
        kid = self.account["uri"] if self.account is not None else None
        return flattened_jws(
            payload, key=self.key, alg=self.alg, nonce=cast(bytes, nonce), url=url, kid=kid
        )

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        retries = 0
        while True:
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                # RFC 8555 §6.5: "the client SHOULD retry the request using the new nonce".
                if error.code != "badNonce" or retries >= self._nonce_retries:
                    raise
                retries += 1

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        # The library turns every 409 into ConflictError and drops its problem document
        # (alreadyReplaced, for one). Keep the document unless the 409 points at a resource.
        if response.status_code == 409 and "Location" not in response.headers:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("type"), str):
                try:
                    problem = messages.Error.from_json(body)
                except josepy.DeserializationError:
                    problem = None
                if problem is not None:
                    raise problem
        return super()._check_response(response, content_type=content_type)
