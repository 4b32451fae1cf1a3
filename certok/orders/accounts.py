"""One ACME account per issuer, made on first use; its key is encrypted in the database."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import josepy
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.crypto import SecretBox
from certok.db.engine import transaction
from certok.db.models import AcmeAccount
from certok.errors import InvalidRequest
from certok.issuance import (
    AcmeSession,
    account_key_from_pem,
    account_key_to_pem,
    fetch_zerossl_eab,
    new_account_key,
)
from certok.issuance.transport import dns_resolver
from certok.issuance.zerossl import form_poster
from certok.prechecks.resolver import parse_resolver_address
from certok.settings import IssuerSettings, Settings


def account_key_owner(issuer: str) -> str:
    return f"acme-account:{issuer}"


@dataclass(frozen=True)
class IssuerAccount:
    name: str
    session: AcmeSession
    key: josepy.JWK


class AccountRegistry:
    """Hands out a registered AcmeSession per issuer, registering the account once."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        box: SecretBox,
        clock: Clock = utcnow,
    ) -> None:
        self._sessions = session_factory
        self._settings = settings
        self._box = box
        self._clock = clock
        self._ready: dict[str, IssuerAccount] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._resolve = dns_resolver(
            [parse_resolver_address(a) for a in settings.resolvers],
            settings.resolver_timeout_seconds,
        )

    def issuer_settings(self, name: str) -> IssuerSettings:
        issuer = self._settings.issuers.get(name)
        if issuer is None:
            known = ", ".join(sorted(self._settings.issuers))
            raise InvalidRequest(f"unknown issuer {name!r}: use one of {known}")
        return issuer

    def account(self, name: str) -> IssuerAccount:
        """The issuer's registered account (may do the newAccount exchange; raises AcmeProblem)."""
        ready = self._ready.get(name)
        if ready is not None:
            return ready
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            ready = self._ready.get(name)
            if ready is None:
                ready = self._load_or_register(name)
                self._ready[name] = ready
            return ready

    def _load_or_register(self, name: str) -> IssuerAccount:
        issuer = self.issuer_settings(name)
        owner = account_key_owner(name)
        with transaction(self._sessions) as session:
            row = session.scalar(select(AcmeAccount).where(AcmeAccount.issuer == name))
            if row is not None and row.directory_url != issuer.directory:
                # The issuer now points at another CA: its old account means nothing there.
                session.delete(row)
                row = None
            if row is None:
                key = new_account_key()
                row = AcmeAccount(
                    issuer=name,
                    directory_url=issuer.directory,
                    key_encrypted=self._box.encrypt(account_key_to_pem(key), owner),
                    created_at=self._clock(),
                )
                try:
                    with session.begin_nested():
                        session.add(row)
                except IntegrityError:  # another node made it first: use theirs
                    row = session.scalar(select(AcmeAccount).where(AcmeAccount.issuer == name))
                    assert row is not None
            key = account_key_from_pem(self._box.decrypt(row.key_encrypted, owner))
            account_url = row.account_url
            row_id = row.id
        acme = AcmeSession(
            issuer.directory,
            key,
            account_url=account_url,
            ca_bundle=str(issuer.ca_bundle) if issuer.ca_bundle else None,
            timeout=self._settings.acme_timeout_seconds,
            resolve=self._resolve,
            issuer=name,
        )
        if account_url is None:
            eab_kid, eab_hmac = issuer.eab_kid, issuer.eab_hmac_key
            if not eab_kid and issuer.zerossl_email and acme.external_account_required():
                eab_kid, eab_hmac = fetch_zerossl_eab(
                    issuer.zerossl_email,
                    http_post=form_poster(
                        self._resolve, timeout=self._settings.acme_timeout_seconds
                    ),
                )
            account_url = acme.register(
                contact_email=issuer.contact_email, eab_kid=eab_kid, eab_hmac_key=eab_hmac
            )
            with transaction(self._sessions) as session:
                saved = session.get(AcmeAccount, row_id)
                if saved is not None:
                    saved.account_url = account_url
        return IssuerAccount(name=name, session=acme, key=key)
