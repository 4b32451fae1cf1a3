"""The border of every ACME exchange: one network per thread, the directory, the account.

:class:`AcmeExchange` runs one operation on certbot's ClientV2 and turns every failure into
an :class:`~certok.issuance.problems.AcmeProblem`; nothing from `acme`, `requests` or
`josepy` crosses it. The account and order exchanges (registration.py, session.py) are built
on it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Self, TypeVar

import josepy
import requests
from acme import client as acme_client
from acme import messages

from certok.clock import Clock, utcnow
from certok.issuance.account_keys import signature_algorithm
from certok.issuance.network import NonceRetryingNetwork
from certok.issuance.problems import (
    BAD_CONFIGURATION,
    UNEXPECTED,
    AcmeProblem,
    ProblemKind,
    classify_error,
    parse_retry_after,
)
from certok.issuance.resources import garbled
from certok.issuance.transport import Resolve, mount_resolver

log = logging.getLogger(__name__)

T = TypeVar("T")


class AcmeExchange:
    """One issuer's directory + account, and the border every exchange crosses.

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
        self._networks: weakref.WeakSet[NonceRetryingNetwork] = weakref.WeakSet()

    @property
    def directory_url(self) -> str:
        return self._directory_url

    @property
    def account_key(self) -> josepy.JWK:
        return self._key

    @property
    def account_url(self) -> str | None:
        return self._account_url

    def signed_by(self, key: josepy.JWK) -> AcmeExchange:
        """This issuer's exchange (same CA, settings and directory) signing with ``key`` and
        no account: every POST carries the public key itself (a ``jwk`` header).

        For revocation with the certificate's own key (RFC 8555 §7.6), which does not depend
        on which account ordered it. Close it when done: it has its own HTTP pools.
        """
        other = AcmeExchange(
            self._directory_url,
            key,
            ca_bundle=self._verify if isinstance(self._verify, str) else None,
            timeout=self._timeout,
            user_agent=self._user_agent,
            nonce_retries=self._nonce_retries,
            clock=self._clock,
            resolve=self._resolve,
            issuer=self._issuer,
        )
        # The same CA: the directory fetched already serves it too.
        other._directory = self._directory
        return other

    def close(self) -> None:
        """Close every thread's HTTP connection pool."""
        with self._lock:
            networks = list(self._networks)
        for network in networks:
            network.session.close()

    def __enter__(self) -> Self:
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

    def _problem(self, exc: Exception, network: NonceRetryingNetwork) -> AcmeProblem:
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

    def _network(self) -> NonceRetryingNetwork:
        network: NonceRetryingNetwork | None = getattr(self._local, "network", None)
        if network is None:
            network = NonceRetryingNetwork(
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

    def _directory_from(self, network: NonceRetryingNetwork) -> messages.Directory:
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


def directory_entry(client: acme_client.ClientV2, name: str) -> str:
    """The URL the CA's directory lists under ``name`` (newAccount, newOrder)."""
    try:
        url = client.directory[name]
    except KeyError as exc:
        raise garbled(f"the CA's directory has no {name!r}") from exc
    if not isinstance(url, str):
        raise garbled(f"the CA's directory entry {name!r} is not a URL")
    return url
