"""What the API's routes share: settings, sessions, caches and the hooks into the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from certok.api.caches import TtlCache
from certok.api.post_api import DEFAULT_POLL_SECONDS, PollGate
from certok.api.waiters import OrderWaiters
from certok.api.webhooks import EventApi
from certok.crypto import SecretBox
from certok.health import HealthChecks
from certok.ratelimit import RateLimiter
from certok.settings import Settings
from certok.tenants.service import TenantRef
from certok.tenants.token_usage import TokenUsage
from certok.verification.dns_verifier import DnsVerifier
from certok.verification.http_verifier import HttpVerifier

# How long a token, once accepted, is exempt from the per-client limit on token lookups.
ACCEPTED_TOKEN_SECONDS = 3600.0


@dataclass
class ApiServices:
    settings: Settings
    sessions: sessionmaker[Session]
    box: SecretBox
    verifier: DnsVerifier
    http_verifier: HttpVerifier
    waiters: OrderWaiters
    wake_worker: Any  # Callable[[], None]
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter({}))
    tokens: TtlCache[bytes, TenantRef] = field(
        default_factory=lambda: TtlCache(ttl=2.0, max_entries=100_000)
    )
    # Keys of tokens accepted in the last hour: their lookups skip the per-client limit.
    accepted_tokens: TtlCache[bytes, bool] = field(
        default_factory=lambda: TtlCache(ttl=ACCEPTED_TOKEN_SECONDS, max_entries=100_000)
    )
    issued: TtlCache[tuple[int, str], bytes] = field(
        default_factory=lambda: TtlCache(ttl=300.0, max_entries=10_000)
    )
    # Stamps tokens' last use for the console (on token-cache misses only); None: not kept.
    token_usage: TokenUsage | None = None

    # Webhooks and the POST API (certok/api/webhooks.py, certok/api/post_api.py).
    events: EventApi = field(default_factory=EventApi)
    post_api_polls: PollGate = field(default_factory=lambda: PollGate(DEFAULT_POLL_SECONDS))
    # Certificates (cert_routes.py): the issuers' meta.profiles, and a wake-up for the worker's
    # certificate tasks (revocations).
    profiles: Any = None  # certok.certificates.profiles.ProfileCatalog | None
    wake_certificates: Any = None  # Callable[[], None] | None
    # /readyz: the process's checks (database, DNS listener, worker heartbeat; see runtime).
    health: HealthChecks = field(default_factory=HealthChecks)
