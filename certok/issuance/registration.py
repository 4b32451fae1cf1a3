"""Account exchanges: newAccount with or without external account binding (RFC 8555 §7.3)."""

from __future__ import annotations

import binascii
from typing import Any

import josepy
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages

from certok.issuance.exchange import AcmeExchange, directory_entry
from certok.issuance.problems import (
    BAD_CONFIGURATION,
    GARBLED_RESPONSE,
    AcmeProblem,
    ProblemKind,
)


class AccountRegistration(AcmeExchange):
    """The account half of an ACME session: find or create the account for the key."""

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


def _existing_account_url(client: acme_client.ClientV2) -> str | None:
    """The URL of the account this key already has, or None (``onlyReturnExisting``)."""
    lookup = messages.NewRegistration(only_return_existing=True)
    try:
        response = client._post(directory_entry(client, "newAccount"), lookup)
    except messages.Error as error:
        if error.code == "accountDoesNotExist":
            return None
        raise
    return response.headers.get("Location") or None
