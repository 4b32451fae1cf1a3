"""One ACME exchange per call, over certbot's `acme` library.

The worker drives each order one step at a time and saves state between steps, so every
method here does a single protocol exchange (plus nonce fetches and, for orders, the
POST-as-GETs of their authorizations) and returns plain frozen dataclasses
(resources.py). Every failure leaves as an :class:`~certok.issuance.problems.AcmeProblem`
(exchange.py is the border).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import josepy
import requests
from acme import client as acme_client
from acme import crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certok.issuance.account_keys import account_key_from_pem, signature_algorithm
from certok.issuance.exchange import directory_entry
from certok.issuance.network import EmptyObject, JsonPayload
from certok.issuance.problems import BAD_CONFIGURATION, GARBLED_RESPONSE, AcmeProblem, ProblemKind
from certok.issuance.registration import AccountRegistration
from certok.issuance.resources import (
    AuthzInfo,
    ChallengeInfo,
    OrderInfo,
    authz_info,
    challenge_info,
    json_object,
    order_info,
)


class AcmeSession(AccountRegistration):
    """One issuer's directory + account; every method does one exchange (plus the nonce
    fetches) and raises only AcmeProblem.

    Safe to share between worker threads (see AcmeExchange).
    """

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
                body = JsonPayload(
                    {**body.to_json(), **{k: v for k, v in extra.items() if v is not None}}
                )
            response = client._post(directory_entry(client, "newOrder"), body)
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
            lambda client: authz_info(
                authorization_url, json_object(client._post_as_get(authorization_url))
            )
        )

    def answer_challenge(self, challenge_url: str) -> ChallengeInfo:
        """POST ``{}`` to the challenge: the CA starts validating (RFC 8555 §7.5.1)."""
        return self._exchange(
            lambda client: challenge_info(json_object(client._post(challenge_url, EmptyObject())))
        )

    def finalize(self, order: OrderInfo, csr_pem: bytes) -> OrderInfo:
        """POST the CSR to the order's finalize URL (RFC 8555 §7.4).

        The CA usually answers ``processing``: poll with fetch_order until ``valid``. The
        returned order carries ``order``'s authorizations (the answer lists only URLs).
        """
        csr = _load_csr(csr_pem)

        def run(client: acme_client.ClientV2) -> OrderInfo:
            response = client._post(order.finalize_url, messages.CertificateRequest(csr=csr))
            return order_info(
                order.url,
                json_object(response),
                order.authorizations,
                self._retry_after(response),
            )

        try:
            return self._exchange(run)
        except AcmeProblem as problem:
            # Every authorization is valid by now, so "unauthorized" here is about the CSR
            # (Pebble: names that differ from the order's), not a failed validation: a new
            # order with the same CSR would fail the same way.
            if problem.kind is ProblemKind.AUTHORIZATION_INVALID:
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

    def revoke_with_certificate_key(self, fullchain_pem: str, key_pem: str, reason: int) -> None:
        """revokeCert for the chain's leaf, signed with the certificate's own private key and
        no account (RFC 8555 §7.6): works whichever account ordered it, even one this issuer
        no longer uses. ``key_pem`` is the leaf's private key (EC P-256/P-384 or RSA)."""
        leaf = x509.load_pem_x509_certificates(fullchain_pem.encode("ascii"))[0]
        key = _certificate_key(leaf, key_pem)
        with self.signed_by(key) as exchange:
            exchange._exchange(lambda client: client.revoke(leaf, reason), needs_account=False)

    def _order_with_authorizations(
        self,
        client: acme_client.ClientV2,
        order_url: str,
        response: requests.Response,
        include_authorizations: bool,
    ) -> OrderInfo:
        order = order_info(order_url, json_object(response), (), self._retry_after(response))
        if not include_authorizations:
            return order
        return dataclasses.replace(
            order, authorizations=_fetch_authorizations(client, order.authorization_urls)
        )


def _fetch_authorizations(
    client: acme_client.ClientV2, urls: tuple[str, ...]
) -> tuple[AuthzInfo, ...]:
    return tuple(authz_info(url, json_object(client._post_as_get(url))) for url in urls)


def _certificate_key(leaf: x509.Certificate, key_pem: str) -> josepy.JWK:
    """The leaf's private key as a JWK, or a clear refusal before the CA is asked."""
    try:
        key = account_key_from_pem(key_pem)
        signature_algorithm(key)
    except ValueError as exc:
        raise AcmeProblem(
            ProblemKind.REJECTED,
            BAD_CONFIGURATION,
            f"the certificate's private key cannot sign a revocation: {exc}",
        ) from exc
    if _spki(key.public_key().key) != _spki(leaf.public_key()):
        raise AcmeProblem(
            ProblemKind.REJECTED,
            BAD_CONFIGURATION,
            "the private key given is not the certificate's: its public key differs",
        )
    return key


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


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
