"""One ACME exchange per call, over certbot's `acme` library.

The worker drives each order one step at a time and saves state between steps, so every
method here does a single protocol exchange (plus nonce fetches and, for orders, the
POST-as-GETs of their authorizations) and returns plain frozen dataclasses. Every failure
leaves as an :class:`~certok.issuance.problems.AcmeProblem`; nothing from `acme`,
`requests` or `josepy` crosses this border.

Orders, authorizations and challenges are read from the raw JSON rather than the library's
message classes: an unknown status or a token that is not canonical base64url must reach
the worker as data it can judge, not as a deserialization error.
"""

from __future__ import annotations

import binascii
import contextlib
import dataclasses
import datetime as dt
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import josepy
import requests
from acme import client as acme_client
from acme import crypto_util, messages
from acme import errors as acme_errors
from cryptography import x509

from certok import metrics
from certok.clock import Clock, utcnow
from certok.issuance.accounts import signature_algorithm
from certok.issuance.direct_http import DirectSender
from certok.issuance.jws import flattened_jws
from certok.issuance.problems import (
    BAD_CONFIGURATION,
    GARBLED_RESPONSE,
    UNEXPECTED,
    AcmeProblem,
    ProblemKind,
    classify_error,
    describe_problem,
    kind_for_type,
    parse_retry_after,
)
from certok.issuance.transport import Resolve, mount_resolver

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    # How bad the error is (None without an error): AUTHORIZATION_DEAD means a new order may
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


class _EmptyObject(josepy.JSONDeSerializable):
    """The JSON payload ``{}`` (RFC 8555 §7.5.1: "the client sends an empty JSON body")."""

    def to_partial_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, jobj: Any) -> _EmptyObject:
        return cls()

    def __bool__(self) -> bool:
        # ClientNetwork sends b"" (POST-as-GET) for a falsy payload; {} must stay a payload.
        return True


class _JsonPayload(josepy.JSONDeSerializable):
    """A JWS payload given as a plain JSON object (fields the library's messages lack)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def to_partial_json(self) -> dict[str, Any]:
        return self._body

    @classmethod
    def from_json(cls, jobj: Any) -> _JsonPayload:
        return cls(dict(jobj))

    def __bool__(self) -> bool:
        return True


class _NonceRetryingNetwork(acme_client.ClientNetwork):
    """A ClientNetwork that retries badNonce many times, with the error's own nonce.

    The library retries a badNonce once, and only stores nonces from successful answers.
    At Pebble's 90% rejection that fails nearly every order; a tight loop of up to
    ``nonce_retries`` immediate retries succeeds (REFERENCE: 40/40 at 90%).
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
        """What the library's `_send_request` does, at about half the CPU per request
        (`python bench/acme_request.py`): straight through the connection pool
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
            prepared = requests.Request(
                method, url, *args, headers=headers, data=data, **kwargs
            ).prepare()
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


class AcmeSession:
    """One issuer's directory + account; every method does one exchange (plus the nonce
    fetches) and raises only AcmeProblem.

    Safe to share between worker threads: each thread gets its own ClientNetwork (nonce
    pool and HTTP connection pool); the directory and the account URL are shared.
    """

    def __init__(
        self,
        directory_url: str,
        account_key: josepy.JWK,
        *,
        account_url: str | None = None,
        ca_bundle: str | None = None,
        timeout: float = 30,
        user_agent: str = "certok",
        nonce_retries: int = 100,
        clock: Clock = utcnow,
        resolve: Resolve | None = None,
        issuer: str = "unknown",
    ) -> None:
        self._directory_url = directory_url
        self._issuer = issuer
        # Host names of the CA resolved through certok's resolvers (None: the system's).
        self._resolve = resolve
        self._key = account_key
        self._alg = signature_algorithm(account_key)
        # requests' `verify` takes a CA bundle path as well as a bool.
        self._verify: bool | str = ca_bundle or True
        self._timeout = timeout
        self._user_agent = user_agent
        self._nonce_retries = max(0, nonce_retries)
        self._clock = clock
        self._lock = threading.Lock()
        self._directory: messages.Directory | None = None
        self._account_url = account_url
        self._local = threading.local()
        self._networks: weakref.WeakSet[_NonceRetryingNetwork] = weakref.WeakSet()

    # --- account ---------------------------------------------------------------------------
    @property
    def directory_url(self) -> str:
        return self._directory_url

    @property
    def account_key(self) -> josepy.JWK:
        return self._key

    @property
    def account_url(self) -> str | None:
        return self._account_url

    def external_account_required(self) -> bool:
        """Whether the directory's meta says ``externalAccountRequired`` (fetches it once)."""
        return self._exchange(
            lambda client: bool(client.external_account_required()), needs_account=False
        )

    def register(
        self,
        *,
        contact_email: str | None = None,
        eab_kid: str | None = None,
        eab_hmac_key: str | None = None,
    ) -> str:
        """newAccount (terms agreed); returns the account URL, the one thing to save.

        Idempotent: for a key that already has an account the CA returns its URL. EAB is
        sent only when the directory asks for it, because a CA that does not require it may
        still check one it is sent (Pebble does). When it does ask, an ``onlyReturnExisting``
        lookup comes first, so an existing account is found without spending the binding.
        """
        # Set by `run` when a binding went out, so a refusal can be blamed on the EAB settings.
        sent_eab_kid: list[str] = []

        def run(client: acme_client.ClientV2) -> str:
            binding = None
            if client.external_account_required():
                # An EAB key may be good for one account only (Google): if the key already
                # has an account, find it without spending the binding (RFC 8555 §7.3.1).
                existing = _existing_account_url(client)
                if existing is not None:
                    return existing
                binding = self._external_account_binding(client, eab_kid, eab_hmac_key)
                sent_eab_kid.append(eab_kid or "")
            registration = messages.NewRegistration.from_data(
                email=contact_email,
                terms_of_service_agreed=True,
                external_account_binding=binding,
            )
            try:
                url = client.new_account(registration).uri
            except acme_errors.ConflictError as existing:
                # RFC 8555 §7.3.1: an account for this key exists; its URL is in Location.
                url = existing.location
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise AcmeProblem(
                    ProblemKind.RETRYABLE,
                    GARBLED_RESPONSE,
                    "the CA created the account but sent no Location for it",
                )
            return url

        try:
            account_url = self._exchange(run, needs_account=False)
        except AcmeProblem as problem:
            if sent_eab_kid and problem.type in ("unauthorized", "malformed"):
                raise AcmeProblem(
                    ProblemKind.REJECTED,
                    problem.type,
                    f"the CA refused the external account binding for eab_kid "
                    f"{sent_eab_kid[0]!r}: check the issuer's eab_kid and eab_hmac_key "
                    f"(some CAs accept each key once only). The CA said: {problem.detail}",
                    http_status=problem.http_status,
                ) from problem
            raise
        with self._lock:
            self._account_url = account_url
        return account_url

    def _external_account_binding(
        self,
        client: acme_client.ClientV2,
        eab_kid: str | None,
        eab_hmac_key: str | None,
    ) -> dict[str, Any]:
        if not eab_kid or not eab_hmac_key:
            raise AcmeProblem(
                ProblemKind.REJECTED,
                "externalAccountRequired",
                f"the CA at {self._directory_url} requires external account binding: set "
                "eab_kid and eab_hmac_key for this issuer (for ZeroSSL, zerossl_email "
                "fetches them)",
            )
        try:
            return messages.ExternalAccountBinding.from_data(
                account_public_key=self._key.public_key(),
                kid=eab_kid,
                hmac_key=eab_hmac_key,
                directory=client.directory,
            )
        except (ValueError, binascii.Error, josepy.DeserializationError) as exc:
            raise AcmeProblem(
                ProblemKind.REJECTED,
                BAD_CONFIGURATION,
                "the issuer's eab_hmac_key is not base64url: copy it exactly as the CA gave it",
            ) from exc

    # --- orders ----------------------------------------------------------------------------
    def new_order(
        self,
        csr_pem: bytes,
        *,
        include_authorizations: bool = True,
        profile: str | None = None,
        replaces: str | None = None,
    ) -> OrderInfo:
        """newOrder for the CSR's names, then (unless told not to) POST-as-GET each
        authorization.

        ``include_authorizations=False`` returns as soon as the CA has created the order
        (``authorizations=()``), so a caller can save its URL before anything else can fail.
        ``profile`` and ``replaces`` (an RFC 9773 certID) go into the newOrder body as given;
        the caller decides whether the directory supports them.
        """
        identifiers = _csr_identifiers(csr_pem)

        def run(client: acme_client.ClientV2) -> OrderInfo:
            body: josepy.JSONDeSerializable = messages.NewOrder(identifiers=identifiers)
            if profile is not None or replaces is not None:
                # certbot's NewOrder has no `replaces` (RFC 9773 §5): extend its JSON.
                extra = {"profile": profile, "replaces": replaces}
                body = _JsonPayload(
                    {**body.to_json(), **{k: v for k, v in extra.items() if v is not None}}
                )
            response = client._post(_directory_entry(client, "newOrder"), body)
            order_url = response.headers.get("Location")
            if not order_url:
                raise AcmeProblem(
                    ProblemKind.RETRYABLE,
                    GARBLED_RESPONSE,
                    "the CA created an order but sent no Location for it",
                )
            return self._order_with_authorizations(
                client, order_url, response, include_authorizations
            )

        return self._exchange(run)

    def fetch_order(self, order_url: str, *, include_authorizations: bool = True) -> OrderInfo:
        """POST-as-GET the order and (unless told not to) each of its authorizations.

        After finalization the authorizations are all valid and need not be fetched again:
        ``include_authorizations=False`` returns the order with ``authorizations=()``.
        """

        def run(client: acme_client.ClientV2) -> OrderInfo:
            response = client._post_as_get(order_url)
            return self._order_with_authorizations(
                client, order_url, response, include_authorizations
            )

        return self._exchange(run)

    def fetch_authorizations(self, order: OrderInfo) -> OrderInfo:
        """The same order with each of its authorizations POSTed-as-GET (for an order
        fetched with ``include_authorizations=False``)."""

        return self._exchange(
            lambda client: dataclasses.replace(
                order, authorizations=_fetch_authorizations(client, order.authorization_urls)
            )
        )

    def fetch_authorization(self, authorization_url: str) -> AuthzInfo:
        """POST-as-GET one authorization."""
        return self._exchange(
            lambda client: _authz_info(
                authorization_url, _json_object(client._post_as_get(authorization_url))
            )
        )

    def answer_challenge(self, challenge_url: str) -> ChallengeInfo:
        """POST ``{}`` to the challenge: the CA starts validating (RFC 8555 §7.5.1)."""
        return self._exchange(
            lambda client: _challenge_info(
                _json_object(client._post(challenge_url, _EmptyObject()))
            )
        )

    def finalize(self, order: OrderInfo, csr_pem: bytes) -> OrderInfo:
        """POST the CSR to the order's finalize URL (RFC 8555 §7.4).

        The CA usually answers ``processing``: poll with fetch_order until ``valid``. The
        returned order carries ``order``'s authorizations (the answer lists only URLs).
        """
        csr = _load_csr(csr_pem)

        def run(client: acme_client.ClientV2) -> OrderInfo:
            response = client._post(order.finalize_url, messages.CertificateRequest(csr=csr))
            return _order_info(
                order.url,
                _json_object(response),
                order.authorizations,
                self._retry_after(response),
            )

        try:
            return self._exchange(run)
        except AcmeProblem as problem:
            # Every authorization is valid by now, so "unauthorized" here is about the CSR
            # (Pebble: names that differ from the order's), not a failed validation: a new
            # order with the same CSR would fail the same way.
            if problem.kind is ProblemKind.AUTHORIZATION_DEAD:
                raise AcmeProblem(
                    ProblemKind.REJECTED,
                    problem.type,
                    f"the CA refused the CSR: {problem.detail}",
                    http_status=problem.http_status,
                ) from problem
            raise

    def download_certificate(self, certificate_url: str) -> str:
        """POST-as-GET the certificate URL: the full chain PEM, leaf first (RFC 8555 §7.4.2)."""

        def run(client: acme_client.ClientV2) -> str:
            response = client._post_as_get(certificate_url)
            chain = response.text
            try:
                certificates = x509.load_pem_x509_certificates(chain.encode("ascii"))
            except (ValueError, UnicodeEncodeError) as exc:
                raise AcmeProblem(
                    ProblemKind.RETRYABLE,
                    GARBLED_RESPONSE,
                    f"the certificate at {certificate_url} is not a PEM certificate chain",
                ) from exc
            if not certificates:
                raise AcmeProblem(
                    ProblemKind.RETRYABLE,
                    GARBLED_RESPONSE,
                    f"the certificate at {certificate_url} is empty",
                )
            return chain

        return self._exchange(run)

    # --- renewal information, profiles, revocation -----------------------------------------
    def renewal_info_url(self) -> str | None:
        """The directory's ``renewalInfo`` URL (RFC 9773 §3), or None when it has none."""

        def run(client: acme_client.ClientV2) -> str | None:
            with contextlib.suppress(KeyError):
                url = client.directory["renewalInfo"]
                return url if isinstance(url, str) and url else None
            return None

        return self._exchange(run, needs_account=False)

    def profiles(self) -> dict[str, str]:
        """The directory's ``meta.profiles``: name → description (empty: none offered)."""

        def run(client: acme_client.ClientV2) -> dict[str, str]:
            meta = client.directory.meta
            offered = getattr(meta, "profiles", None)
            if not isinstance(offered, Mapping):
                return {}
            return {str(name): str(text) for name, text in offered.items()}

        return self._exchange(run, needs_account=False)

    def renewal_info(self, cert_id: str) -> tuple[bytes, str | None]:
        """GET ``<renewalInfo>/<certID>`` (unauthenticated, RFC 9773 §4.2): the body and the
        raw Retry-After, for the caller to read against its own clock
        (`certok.certificates.ari.parse_renewal_info`, `parse_retry_after`)."""
        base = self.renewal_info_url()
        if base is None:
            raise AcmeProblem(
                ProblemKind.REJECTED, BAD_CONFIGURATION, "the CA's directory has no renewalInfo"
            )

        def run(client: acme_client.ClientV2) -> tuple[bytes, str | None]:
            response = client.net.get(f"{base.rstrip('/')}/{cert_id}")
            return response.content, response.headers.get("Retry-After")

        return self._exchange(run, needs_account=False)

    def revoke(self, fullchain_pem: str, reason: int) -> None:
        """revokeCert for the chain's leaf, signed by this account (RFC 8555 §7.6)."""
        leaf = x509.load_pem_x509_certificates(fullchain_pem.encode("ascii"))[0]
        self._exchange(lambda client: client.revoke(leaf, reason))

    def close(self) -> None:
        """Close every thread's HTTP connection pool."""
        with self._lock:
            networks = list(self._networks)
        for network in networks:
            network.session.close()

    def __enter__(self) -> AcmeSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the border ------------------------------------------------------------------------
    def _exchange(
        self,
        operation: Callable[[acme_client.ClientV2], T],
        *,
        needs_account: bool = True,
    ) -> T:
        """Run one exchange on this thread's network; every failure leaves as AcmeProblem."""
        network = self._network()
        try:
            account = self._registration() if needs_account else None
            # newAccount must be signed with the key (jwk), everything else with the kid.
            network.account = account
            client = acme_client.ClientV2(self._directory_from(network), network)
            return operation(client)
        except AcmeProblem:
            raise
        except Exception as exc:
            raise self._problem(exc, network) from exc

    def _problem(self, exc: Exception, network: _NonceRetryingNetwork) -> AcmeProblem:
        response = network.last_response
        status: int | None = None
        retry_after: dt.datetime | None = None
        if response is not None and not response.ok:
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
        problem = classify_error(exc, http_status=status, retry_after=retry_after)
        if problem.type == UNEXPECTED:
            log.error("unexpected failure talking to %s", self._directory_url, exc_info=exc)
        return problem

    def _network(self) -> _NonceRetryingNetwork:
        network: _NonceRetryingNetwork | None = getattr(self._local, "network", None)
        if network is None:
            network = _NonceRetryingNetwork(
                nonce_retries=self._nonce_retries,
                issuer=self._issuer,
                key=self._key,
                alg=self._alg,
                verify_ssl=self._verify,
                user_agent=self._user_agent,
                timeout=self._timeout,
            )
            # CA traffic follows certok's settings only: no proxy or .netrc from the
            # environment (requests would also rescan the environment on every request).
            network.session.trust_env = False
            if self._resolve is not None:
                mount_resolver(network.session, self._resolve)
            self._local.network = network
            with self._lock:
                self._networks.add(network)
        return network

    def _directory_from(self, network: _NonceRetryingNetwork) -> messages.Directory:
        directory = self._directory
        if directory is None:
            # Two threads may both fetch it the first time; both answers are the same.
            fetched = acme_client.ClientV2.get_directory(self._directory_url, network)
            with self._lock:
                if self._directory is None:
                    self._directory = fetched
                directory = self._directory
        return directory

    def _registration(self) -> messages.RegistrationResource:
        account_url = self._account_url
        if account_url is None:
            raise AcmeProblem(
                ProblemKind.REJECTED,
                BAD_CONFIGURATION,
                "no ACME account yet: call register() first or pass the saved account_url",
            )
        # The library needs a RegistrationResource only for its `uri` (the JWS `kid`).
        return messages.RegistrationResource(body=messages.Registration(), uri=account_url)

    def _retry_after(self, response: requests.Response) -> dt.datetime | None:
        return parse_retry_after(response.headers.get("Retry-After"), self._clock())

    def _order_with_authorizations(
        self,
        client: acme_client.ClientV2,
        order_url: str,
        response: requests.Response,
        include_authorizations: bool,
    ) -> OrderInfo:
        order = _order_info(order_url, _json_object(response), (), self._retry_after(response))
        if not include_authorizations:
            return order
        return dataclasses.replace(
            order, authorizations=_fetch_authorizations(client, order.authorization_urls)
        )


def _fetch_authorizations(
    client: acme_client.ClientV2, urls: tuple[str, ...]
) -> tuple[AuthzInfo, ...]:
    return tuple(_authz_info(url, _json_object(client._post_as_get(url))) for url in urls)


# --- parsing the CA's answers ----------------------------------------------------------------


def _garbled(detail: str) -> AcmeProblem:
    return AcmeProblem(ProblemKind.RETRYABLE, GARBLED_RESPONSE, detail)


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise _garbled(f"the CA's answer from {response.url} is not JSON") from exc
    if not isinstance(body, dict):
        raise _garbled(f"the CA's answer from {response.url} is not a JSON object")
    return body


def _required_string(body: Mapping[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise _garbled(f"the CA's {what} has no {key!r}")
    return value


def _optional_string(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


def _string_list(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _garbled(f"the CA's {key!r} is not a list of URLs")
    return value


def _problem_text(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    return describe_problem(error) if isinstance(error, Mapping) else None


def _order_info(
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


def _authz_info(url: str, body: Mapping[str, Any]) -> AuthzInfo:
    identifier = body.get("identifier")
    if not isinstance(identifier, Mapping):
        raise _garbled(f"the authorization {url} has no identifier")
    raw_challenges = body.get("challenges", [])
    if not isinstance(raw_challenges, list):
        raise _garbled(f"the authorization {url} has no list of challenges")
    challenges = tuple(_challenge_info(c) for c in raw_challenges if isinstance(c, Mapping))
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


def _challenge_info(body: Mapping[str, Any]) -> ChallengeInfo:
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


def _existing_account_url(client: acme_client.ClientV2) -> str | None:
    """The URL of the account this key already has, or None (``onlyReturnExisting``)."""
    lookup = messages.NewRegistration(only_return_existing=True)
    try:
        response = client._post(_directory_entry(client, "newAccount"), lookup)
    except messages.Error as error:
        if error.code == "accountDoesNotExist":
            return None
        raise
    return response.headers.get("Location") or None


def _directory_entry(client: acme_client.ClientV2, name: str) -> str:
    try:
        url = client.directory[name]
    except KeyError as exc:
        raise _garbled(f"the CA's directory has no {name!r}") from exc
    if not isinstance(url, str):
        raise _garbled(f"the CA's directory entry {name!r} is not a URL")
    return url


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise AcmeProblem(
            ProblemKind.REJECTED, "badCSR", "the CSR is not a PEM certificate request"
        ) from exc


def _csr_identifiers(csr_pem: bytes) -> list[messages.Identifier]:
    csr = _load_csr(csr_pem)
    dns_names, ip_addresses = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names]
    identifiers += [
        messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(ip)) for ip in ip_addresses
    ]
    if not identifiers:
        raise AcmeProblem(ProblemKind.REJECTED, "badCSR", "the CSR names no domain")
    return identifiers
