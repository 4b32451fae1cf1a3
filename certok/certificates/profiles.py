"""The profiles each issuer offers (directory `meta.profiles`), to check `profile` on apply.

The API must answer an unknown profile with a clear 4xx, so it reads the issuer's directory
(an unauthenticated GET, remembered for `TTL_SECONDS`) rather than letting the order fail
later at the CA. `fetch` is passed in: issuer name → {profile: description}.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import requests

from certok.errors import InvalidRequest, Unavailable
from certok.issuance.transport import Resolve, mount_resolver
from certok.settings import IssuerSettings

TTL_SECONDS = 3600.0
# Let's Encrypt: pending authorizations live one hour under these profiles (docs/certificates.md).
SHORT_AUTHORIZATION_PROFILES = frozenset({"tlsserver", "shortlived"})
SHORT_PROFILE_DEADLINE_SECONDS = 3600

Fetch = Callable[[str], dict[str, str]]


class ProfileCatalog:
    def __init__(self, fetch: Fetch, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._clock = clock
        self._known: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def offered(self, issuer: str) -> dict[str, str]:
        now = self._clock()
        with self._lock:
            cached = self._known.get(issuer)
        if cached is not None and now - cached[0] < TTL_SECONDS:
            return cached[1]
        profiles = self._fetch(issuer)
        with self._lock:
            self._known[issuer] = (now, profiles)
        return profiles

    def check(self, issuer: str, profile: str) -> str:
        """`profile` if the issuer offers it, else InvalidRequest naming the ones it does."""
        offered = self.offered(issuer)
        if profile in offered:
            return profile
        if not offered:
            raise InvalidRequest(
                f"issuer {issuer} offers no certificate profiles: leave profile out"
            )
        raise InvalidRequest(
            f"profile {profile!r} is not offered by issuer {issuer}: use one of "
            f"{', '.join(sorted(offered))}, or leave profile out for the CA's default"
        )


def directory_profiles(
    issuers: dict[str, IssuerSettings], timeout: float, resolve: Resolve | None = None
) -> Fetch:
    """A fetch reading `meta.profiles` from each issuer's directory."""

    def fetch(issuer: str) -> dict[str, str]:
        settings = issuers[issuer]
        with requests.Session() as session:
            session.trust_env = False
            if resolve is not None:
                mount_resolver(session, resolve)
            try:
                response = session.get(
                    settings.directory,
                    timeout=timeout,
                    verify=str(settings.ca_bundle) if settings.ca_bundle else True,
                )
                response.raise_for_status()
                directory = response.json()
            except (requests.RequestException, ValueError) as exc:
                raise Unavailable(
                    f"could not read issuer {issuer}'s directory to check the profile "
                    f"({type(exc).__name__}): try again shortly, or leave profile out"
                ) from exc
        meta = directory.get("meta") if isinstance(directory, dict) else None
        profiles = meta.get("profiles") if isinstance(meta, dict) else None
        if not isinstance(profiles, dict):
            return {}
        return {str(name): str(text) for name, text in profiles.items()}

    return fetch
