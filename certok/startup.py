"""What `certok serve` says when it starts: one summary line, and a warning per issuer that
cannot work as configured (so a missing EAB credential shows at start, not at the first
order)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from certok.issuer_settings import GOOGLE_DIRECTORY, ZEROSSL_DIRECTORY, IssuerSettings
from certok.settings import Settings

# CAs whose directories refuse newAccount without external account binding.
_EAB_HOSTS = {
    urlsplit(GOOGLE_DIRECTORY).hostname: "Google Trust Services",
    urlsplit(ZEROSSL_DIRECTORY).hostname: "ZeroSSL",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("certok")
    except PackageNotFoundError:  # pragma: no cover - a checkout run without installing
        return "unknown"


def issuer_problem(name: str, issuer: IssuerSettings) -> str | None:
    """Why this issuer cannot register an account as configured, or None."""
    ca = _EAB_HOSTS.get(urlsplit(issuer.directory).hostname)
    if ca is None or (issuer.eab_kid and issuer.eab_hmac_key):
        return None
    if ca == "ZeroSSL" and issuer.zerossl_email:
        return None
    if issuer.eab_kid or issuer.eab_hmac_key:
        return f"set both issuers.{name}.eab_kid and issuers.{name}.eab_hmac_key"
    fix = f"set issuers.{name}.eab_kid and issuers.{name}.eab_hmac_key"
    if ca == "ZeroSSL":
        fix += f" (or issuers.{name}.zerossl_email)"
    return f"{ca} requires external account binding: {fix}"


def issuer_warnings(settings: Settings) -> list[str]:
    warnings = []
    for name, issuer in sorted(settings.issuers.items()):
        problem = issuer_problem(name, issuer)
        if problem is None:
            continue
        role = " (the default_issuer)" if name == settings.default_issuer else ""
        warnings.append(
            f"issuer {name}{role} cannot issue as configured: {problem} (see docs/settings.md)"
        )
    return warnings


def summary(settings: Settings, database: str) -> str:
    """One line: zone, listeners, database kind, each issuer and whether it can work."""
    https = "no https"
    if settings.https_enabled:
        https = f"https {settings.https_host}:{settings.https_port}"
    metrics = (
        f"metrics {settings.metrics_host}:{settings.metrics_port}"
        if settings.metrics_port
        else "metrics off"
    )
    issuers = ", ".join(
        f"{name}{'*' if name == settings.default_issuer else ''}="
        f"{'ok' if issuer_problem(name, issuer) is None else 'needs EAB'}"
        for name, issuer in sorted(settings.issuers.items())
    )
    kind = "SQLite" if settings.effective_database_url.startswith("sqlite") else "PostgreSQL"
    return (
        f"certok {version()}: zone {settings.dns_zone}; api {settings.api_host}:"
        f"{settings.api_port} (public_url {settings.public_url}); {https}; dns "
        f"{settings.dns_host}:{settings.dns_port} udp+tcp; {metrics}; database {kind} "
        f"{database}; processes {settings.processes}; issuers {issuers} (* default)"
    )


def describe_database(settings: Settings) -> str:
    """The database URL without its password (it may be printed and logged)."""
    try:
        return make_url(settings.effective_database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


def log_start(settings: Settings) -> None:
    """The summary line, then a warning per issuer that cannot work."""
    log = logging.getLogger("certok")
    log.info("%s", summary(settings, describe_database(settings)))
    for warning in issuer_warnings(settings):
        log.warning("%s", warning)
