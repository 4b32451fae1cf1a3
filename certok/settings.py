"""certok's settings: with `certok.settings_loading`, the only modules that read the
environment or a config file.

Every field is documented in ``docs/settings.md`` (a test holds the two together).
Precedence, highest first: environment variables (``CERTOK_<FIELD>``, nested fields with
``__``, e.g. ``CERTOK_ISSUERS__LETSENCRYPT__DIRECTORY``), then the TOML config file named by
``--config`` or ``CERTOK_CONFIG``, then the defaults below.
"""

from __future__ import annotations

import socket
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from certok.issuer_settings import IssuerSettings, default_issuers

__all__ = ["IssuerSettings", "Settings", "default_public_url"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CERTOK_", env_nested_delimiter="__", extra="forbid"
    )

    # --- storage -------------------------------------------------------------------------
    data_dir: Path = Path("certok-data")
    database_url: str | None = None
    secret_key_file: Path | None = None
    secret_key: str | None = Field(default=None, repr=False)

    # --- HTTP API --------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    # Unset: http://<api_host>:<api_port>, following the port (see _public_url_follows_api).
    public_url: str = "http://127.0.0.1:8080"
    # Serve the API over HTTPS too (both files needed), e.g. on 443 for the HTTP-01 redirect.
    https_host: str = "127.0.0.1"
    https_port: int = Field(default=8443, ge=0, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Reverse proxies (addresses or networks) whose X-Forwarded-For / X-Forwarded-Proto are
    # believed. Empty: the client is the TCP peer, since anyone can send those headers.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Hostile load (docs/security.md): connections one process holds (HTTP and HTTPS together;
    # the longest idle is closed for a new one), how long a request head may take, how long an
    # idle keep-alive connection stays, and how large a request head may be.
    api_max_connections: int = Field(default=4096, ge=1)
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    api_keepalive_timeout_seconds: float = Field(default=5.0, gt=0)
    api_max_request_head_bytes: int = Field(default=32768, ge=4096, le=65535)

    # --- authoritative DNS -----------------------------------------------------------------
    dns_zone: str = "acme.certok.localhost"
    dns_host: str = "127.0.0.1"
    dns_port: int = Field(default=5300, ge=0, le=65535)
    dns_nameservers: list[str] = Field(default_factory=list)
    dns_nameserver_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    # 0: a resolver must never serve a previous order's TXT value for the same name.
    dns_ttl: int = Field(default=0, ge=0, le=60)
    dns_refresh_seconds: float = Field(default=0.5, gt=0, le=5)
    dns_max_txt_values: int = Field(default=8, ge=1, le=32)
    dns_rate_limit_per_second: int = Field(default=0, ge=0)
    dns_hosts: dict[str, list[str]] = Field(default_factory=dict)
    # DNS over TCP: connections in all, per client (an IPv4 address or an IPv6 /64; the
    # client's oldest idle one is closed for a new one), and how long an idle one stays.
    dns_tcp_max_connections: int = Field(default=256, ge=1)
    dns_tcp_max_connections_per_client: int = Field(default=16, ge=1)
    dns_tcp_idle_timeout_seconds: float = Field(default=10.0, gt=0)

    # --- outbound lookups ------------------------------------------------------------------
    resolvers: list[str] = Field(default_factory=lambda: ["1.1.1.1", "8.8.8.8"])
    resolver_timeout_seconds: float = Field(default=3.0, gt=0)
    # HTTP-01 pre-checks: the port CAs use to reach customers' web servers, the ports a
    # redirect may go to, and (tests only) whether loopback addresses may be contacted.
    http01_port: int = Field(default=80, ge=1, le=65535)
    precheck_allowed_ports: list[int] = Field(default_factory=lambda: [80, 443])
    precheck_allow_loopback: bool = False
    precheck_timeout_seconds: float = Field(default=10.0, gt=0)
    # Requests dv?type=http may send to customers' web servers a minute: per tenant, and per
    # target site (registrable domain) for all tenants together.
    precheck_http_per_tenant_per_minute: int = Field(default=600, ge=0)
    precheck_http_per_target_per_minute: int = Field(default=200, ge=0)

    # --- verification codes and orders -----------------------------------------------------
    code_ttl_seconds: int = Field(default=60, ge=1)
    apply_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    order_retention_hours: int = Field(default=72, ge=24)
    # How often `certok serve` purges expired orders and codes; 0 turns the purge off.
    purge_interval_seconds: float = Field(default=3600.0, ge=0)
    max_domains: int = Field(default=100, ge=1, le=100)
    token_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    # Issued answers kept encoded in memory, so polling an issued code reads no database.
    issued_cache_entries: int = Field(default=10_000, ge=0)
    issued_cache_seconds: float = Field(default=300.0, ge=0)
    rate_limit_dv_per_minute: int = Field(default=120, ge=0)
    rate_limit_apply_per_minute: int = Field(default=1200, ge=0)
    # Requests per client address whose token was not recently accepted (each costs a database
    # read to refuse): bounds a flood of guessed or stale tokens.
    rate_limit_unverified_tokens_per_minute: int = Field(default=120, ge=0)
    # Requests per client address to the public HTTP-01 responder (/v1/dv/...): generous, a
    # CA validates many orders' names from few addresses.
    rate_limit_http01_responder_per_minute: int = Field(default=1200, ge=0)

    # --- issuance --------------------------------------------------------------------------
    issuers: dict[str, IssuerSettings] = Field(default_factory=default_issuers)
    default_issuer: str = "google"
    worker_threads: int = Field(default=8, ge=1, le=256)
    worker_max_orders: int = Field(default=256, ge=1)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    acme_poll_seconds: float = Field(default=0.1, gt=0)
    acme_timeout_seconds: float = Field(default=30.0, gt=0)
    challenge_propagation_seconds: float | None = Field(default=None, ge=0)
    order_deadline_seconds: int = Field(default=86400, ge=60)

    # --- cluster ---------------------------------------------------------------------------
    node_name: str | None = None
    # 1: API, DNS server and worker share one process. N >= 2: the DNS server runs in a
    # process of its own and N - 1 processes each run the API (on shared ports) and a worker.
    processes: int = Field(default=1, ge=1, le=64)

    # --- logging ---------------------------------------------------------------------------
    log_level: str = "INFO"
    # "text": one line per event for people; "json": one JSON object per line for collectors.
    log_format: Literal["text", "json"] = "text"

    # --- operations (metrics, health) -------------------------------------------------------
    # Prometheus /metrics on a listener of its own; 0 (the default) turns it off, so metrics
    # are never public unless asked for (they tell issuer names and volumes).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # /readyz fails when the issuance worker has not looked for work for this long.
    worker_heartbeat_stale_seconds: float = Field(default=60.0, gt=0)

    # --- console (/console/) ----------------------------------------------------------------
    console_session_hours: float = Field(default=12.0, gt=0, le=720)
    console_invite_hours: float = Field(default=72.0, gt=0, le=720)
    # Sign-in attempts per minute, per account and per client address (each bucket apart).
    console_sign_in_per_minute: int = Field(default=10, ge=1)

    # --- certificates (records, renewal timing, revocation) ----------------------------------
    # Certificate records outlive their orders: kept until this long after they expire.
    certificate_retention_days: int = Field(default=30, ge=0)
    # How often the worker looks for certificates due an ARI check or a revocation.
    certificate_scan_seconds: float = Field(default=60.0, gt=0)
    # Most certificates one scan handles (the rest wait for the next tick).
    certificate_scan_batch: int = Field(default=200, ge=1)

    # --- agents (httpsok.sh's /v1/nginx protocol) ------------------------------------------
    agent_preparse_max_bytes: int = Field(default=1_048_576, ge=1024)
    # Configurations one tenant may upload a minute (parsing costs CPU); 0 turns it off.
    agent_preparse_per_minute: int = Field(default=10, ge=0)
    agent_max_hosts_per_tenant: int = Field(default=100, ge=1)
    agent_max_certificates_per_host: int = Field(default=50, ge=1)
    # How long `check` holds the agent while a new certificate is being issued.
    agent_check_wait_seconds: float = Field(default=25.0, ge=0, le=120)
    # Testing only: shifts the time renewal decisions are made at (e.g. past a renewal time).
    clock_offset_seconds: float = 0.0
    # --- events and webhooks (docs/webhooks.md) -----------------------------------------------
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=30)
    # Extra CAs (PEM) trusted for https webhook and notifyUrl receivers, besides the system's.
    webhook_ca_file: Path | None = None
    webhook_log_retention_days: int = Field(default=30, ge=1)
    webhook_secret_overlap_hours: float = Field(default=24.0, ge=0)
    post_api_poll_seconds: float = Field(default=10.0, ge=0)
    # How often certificates are scanned for renewal_due/expiring, and delegations of names
    # with live certificates re-checked for delegation.broken; 0 turns the scan off.
    event_scan_seconds: float = Field(default=300.0, ge=0)
    delegation_recheck_seconds: float = Field(default=6 * 3600.0, ge=0)
    # --- tenants sharing the ACME accounts; storage safety --------------------------------
    # Orders one tenant may have pending at once (apply answers 429 beyond it); 0: no cap.
    tenant_max_pending_orders: int = Field(default=100, ge=0)
    # New ACME orders one tenant's orders may make in a sliding window (beyond: they wait).
    tenant_acme_orders_per_window: int = Field(default=100, ge=0)
    tenant_acme_order_window_seconds: float = Field(default=10800.0, gt=0)
    # A code for the same names (tenant, algorithm, issuer, challenge type) as an order still
    # pending and younger than this joins that order instead of starting another; 0: never.
    order_join_seconds: float = Field(default=600.0, ge=0)
    # Start on an empty database although the key file shows this installation had data.
    allow_empty_database: bool = False

    @field_validator("dns_zone")
    @classmethod
    def _zone_is_absolute_lowercase(cls, value: str) -> str:
        zone = value.strip().rstrip(".").lower()
        if not zone or " " in zone:
            raise ValueError("dns_zone must be a DNS name such as acme.example.com")
        return zone

    @field_validator("dns_host")
    @classmethod
    def _dns_host_is_an_address(cls, value: str) -> str:
        # The DNS server binds without consulting any resolver (not even for "localhost").
        try:
            ip_address(value)
        except ValueError:
            raise ValueError(
                "dns_host must be an IP address such as 127.0.0.1, 0.0.0.0 or ::"
            ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("public_url")
    @classmethod
    def _public_url_is_a_base_url(cls, value: str) -> str:
        _check_url(value, "public_url", "https://certok.example.net")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url_is_known(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError(
                "database_url must be a SQLAlchemy URL for SQLite or PostgreSQL, e.g. "
                "postgresql+psycopg://user:password@host/certok"
            )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses_or_networks(cls, value: list[str]) -> list[str]:
        # uvicorn silently keeps an entry it cannot parse as a literal that never matches a
        # TCP peer (e.g. "10.0.0.1/8", host bits set), so a typo would quietly turn the
        # proxy's clients into one address: refuse it here instead.
        proxies = []
        for entry in value:
            text = entry.strip()
            if text == "*":
                raise ValueError(
                    "trusted_proxies must not contain '*': trusting every peer lets any client "
                    "choose its own address with X-Forwarded-For; list your proxies' addresses"
                )
            try:
                parsed = ip_network(text) if "/" in text else ip_address(text)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies entry {entry!r} is not an IP address or network "
                    "(e.g. 127.0.0.1, ::1 or 10.0.0.0/8, with no host bits set)"
                ) from None
            proxies.append(str(parsed))
        return proxies

    @field_validator("issuers", mode="before")
    @classmethod
    def _mergedefault_issuers(cls, value: Any) -> Any:
        # Configuring one issuer (say, pointing letsencrypt at a test CA) must not remove the
        # others: merge the given ones over the defaults, field by field.
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {
            name: issuer.model_dump() for name, issuer in default_issuers().items()
        }
        for name, given in value.items():
            key = str(name).lower()
            given_dict = given.model_dump() if isinstance(given, BaseModel) else dict(given)
            merged[key] = {**merged.get(key, {}), **given_dict}
        return merged

    @field_validator("issuers")
    @classmethod
    def _issuer_directories_are_urls(
        cls, value: dict[str, IssuerSettings]
    ) -> dict[str, IssuerSettings]:
        for name, issuer in value.items():
            _check_url(
                issuer.directory, f"issuers.{name}.directory", "https://ca.example/directory"
            )
        return value

    @model_validator(mode="after")
    def _public_url_follows_api(self) -> Settings:
        # Not set: where this server's API listens. Written into __dict__ so that it still
        # counts as not set, and `updated` can follow a port given on the command line.
        if "public_url" not in self.model_fields_set:
            self.__dict__["public_url"] = default_public_url(self.api_host, self.api_port)
        return self

    def updated(self, **values: Any) -> Settings:
        """A copy with ``values`` (already validated: command-line options) replacing fields;
        public_url follows a new API address unless it was set."""
        copy = self.model_copy(update=values)
        if "public_url" not in self.model_fields_set:
            copy.__dict__["public_url"] = default_public_url(copy.api_host, copy.api_port)
        return copy

    @model_validator(mode="after")
    def _check_default_issuer(self) -> Settings:
        self.default_issuer = self.default_issuer.lower()
        if self.default_issuer not in self.issuers:
            raise ValueError(f"default_issuer {self.default_issuer!r} is not in issuers")
        return self

    # --- derived values --------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'certok.db').resolve()}"

    @property
    def effective_secret_key_file(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def effective_challenge_propagation_seconds(self) -> float:
        """How long presented challenge material needs before every DNS node serves it."""
        if self.challenge_propagation_seconds is not None:
            return self.challenge_propagation_seconds
        if self.effective_database_url.startswith("sqlite"):
            return 0.0  # one process: its DNS server is refreshed synchronously
        return 2 * self.dns_refresh_seconds

    @property
    def https_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def effective_node_name(self) -> str:
        return self.node_name or socket.gethostname()

    @property
    def nameserver_names(self) -> list[str]:
        names = self.dns_nameservers or [f"ns1.{self.dns_zone}"]
        return [n.rstrip(".").lower() for n in names]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the config file (passed as init values) beats defaults.
        return (env_settings, init_settings)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def default_public_url(api_host: str, api_port: int) -> str:
    host = api_host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listener: name one address
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{api_port}"


def _check_url(value: str, setting: str, example: str) -> None:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError(f"{setting} {value!r} has a port that is not 1-65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting} must be an http:// or https:// URL such as {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"{setting} {value!r} must not have a query or fragment")
