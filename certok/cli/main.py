"""The `certok` command: serve, tenants, tokens, database."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from certok import audit
from certok.cli import ops_commands, preflight
from certok.cli.problems import (
    ConfigProblem,
    check_environment,
    database_problem,
    is_database_error,
    load_problem,
)
from certok.db.engine import transaction
from certok.db.files import sqlite_file
from certok.db.storage_errors import operator_message, storage_failure
from certok.errors import CertokError, ConfigurationError
from certok.http01 import store as http01_store
from certok.launch import run_server
from certok.logs import configure_logging
from certok.orders import purge as purging
from certok.settings import Settings, load_settings
from certok.startup import describe_database, version
from certok.store import Store, open_store
from certok.tenants import service as tenants
from certok.tenants import users as console_users

T = TypeVar("T")


@click.group()
@click.version_option(version(), prog_name="certok", message="%(prog)s %(version)s")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="CERTOK_CONFIG",
    help="TOML config file (environment variables CERTOK_* override it).",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """certok: a self-hosted certificate service speaking the httpsok OpenAPI."""
    check_environment()
    try:
        ctx.obj = load_settings(config)
    except Exception as exc:
        raise load_problem(exc, config) from None


def open_admin_store(settings: Settings, *, announce: bool = True) -> Store:
    """The server's store for an admin command, saying on stderr which database it is (a
    command run from another directory would otherwise quietly make a new one)."""
    url = settings.effective_database_url
    database = describe_database(settings)
    new = url.startswith("sqlite") and not (settings.data_dir / "certok.db").exists()
    try:
        store = open_store(settings)
    except ConfigurationError as exc:
        raise ConfigProblem(exc.message) from None
    except Exception as exc:
        # A full disk or read-only storage is named as such, before any other diagnosis.
        storage = _storage_problem(exc, settings)
        if storage is not None:
            raise click.ClickException(storage) from None
        if is_database_error(exc):
            raise database_problem(exc, settings) from None
        raise
    if new:
        click.echo(
            f"certok: created a new database {database}: if `certok serve` keeps its data "
            "elsewhere, run this where it runs or set data_dir (CERTOK_DATA_DIR, --config)",
            err=True,
        )
    elif announce:  # `serve` names it in its start-up summary, in the log's format
        click.echo(f"certok: database {database}", err=True)
    return store


def _with_store(ctx: click.Context, action: Callable[[Store], T]) -> T:
    settings: Settings = ctx.obj
    with _storage_errors_in_one_line(settings):
        store = open_admin_store(settings)
        try:
            return action(store)
        finally:
            store.engine.dispose()


@contextlib.contextmanager
def _storage_errors_in_one_line(settings: Settings) -> Iterator[None]:
    """certok's own errors, a full disk and read-only storage: one line, no traceback."""
    try:
        yield
    except ConfigurationError:
        raise  # the configuration's own one-line error (exit status 2)
    except CertokError as exc:
        raise click.ClickException(exc.message) from exc
    except (DBAPIError, OSError) as exc:
        problem = _storage_problem(exc, settings)
        if problem is None:
            raise
        raise click.ClickException(problem) from exc


def _storage_problem(exc: BaseException, settings: Settings) -> str | None:
    """The operator's one line for a full disk or read-only storage, else None."""
    if not isinstance(exc, DBAPIError | OSError):
        return None
    database = sqlite_file(settings.effective_database_url)
    directory = database.parent if database is not None else settings.data_dir
    failure = storage_failure(exc, directory)
    return None if failure is None else operator_message(failure, directory)


@cli.command("serve")
@click.option("--api-host", help="HTTP API listen address (settings: api_host).")
@click.option(
    "--api-port", type=click.IntRange(0, 65535), help="HTTP API port (settings: api_port)."
)
@click.option("--dns-host", help="DNS listen address (settings: dns_host).")
@click.option(
    "--dns-port",
    type=click.IntRange(0, 65535),
    help="DNS port, UDP and TCP (settings: dns_port).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    help="1: everything in one process; N: a DNS process and N-1 API + worker processes "
    "(settings: processes).",
)
@click.pass_context
def serve_command(ctx: click.Context, **listen: Any) -> None:
    """Run the API, the DNS server and the issuance worker."""
    settings: Settings = ctx.obj
    given = {key: value for key, value in listen.items() if value is not None}
    if given:
        settings = settings.updated(**given)
    preflight.check_serve(settings)
    # The database and the key file, checked once before anything starts.
    with _storage_errors_in_one_line(settings):
        open_admin_store(settings, announce=False).engine.dispose()
    configure_logging(settings)
    with _storage_errors_in_one_line(settings):
        status = run_server(settings)
    ctx.exit(status)


@cli.group("tenant")
def tenant_group() -> None:
    """Manage tenants."""


@tenant_group.command("create")
@click.argument("name")
@click.pass_context
def tenant_create(ctx: click.Context, name: str) -> None:
    """Create a tenant and print its first API token (shown only this once)."""

    def action(store: Store) -> str:
        with transaction(store.sessions) as session:
            tenant = tenants.create_tenant(session, name)
            token = tenants.issue_token(session, name)
            _audit(session, "tenant.create", f"tenant {tenant.name}", tenant.id)
            _audit(session, "token.create", f"token {token[:6]}… of {tenant.name}", tenant.id)
            return token

    token = _with_store(ctx, action)
    click.echo(f"tenant {name.strip().lower()} created")
    click.echo(f"token: {token}")
    click.echo(
        "keep the token safe: certok stores only its hash and cannot show it again", err=True
    )


@tenant_group.command("list")
@click.pass_context
def tenant_list(ctx: click.Context) -> None:
    """List tenants."""

    def action(store: Store) -> list[tenants.TenantInfo]:
        with store.sessions() as session:
            return tenants.list_tenants(session)

    rows = _with_store(ctx, action)
    click.echo(f"{'NAME':<32} {'STATUS':<9} TOKENS")
    for row in rows:
        status = "disabled" if row.disabled else "active"
        click.echo(f"{row.name:<32} {status:<9} {row.active_tokens}")


def _set_disabled(ctx: click.Context, name: str, disabled: bool) -> None:
    def action(store: Store) -> int:
        with transaction(store.sessions) as session:
            stopped = tenants.set_disabled(session, name, disabled)
            tenant = tenants.find_tenant(session, name)
            verb = "disable" if disabled else "enable"
            _audit(session, f"tenant.{verb}", f"tenant {tenant.name}", tenant.id)
            return stopped

    stopped = _with_store(ctx, action)
    click.echo(f"tenant {name} {'disabled' if disabled else 'enabled'}")
    if stopped:
        click.echo(f"{stopped} running order(s) stopped")


@tenant_group.command("disable")
@click.argument("name")
@click.pass_context
def tenant_disable(ctx: click.Context, name: str) -> None:
    """Disable a tenant: its tokens stop working, its running orders stop."""
    _set_disabled(ctx, name, True)


@tenant_group.command("enable")
@click.argument("name")
@click.pass_context
def tenant_enable(ctx: click.Context, name: str) -> None:
    """Enable a disabled tenant again."""
    _set_disabled(ctx, name, False)


@tenant_group.command("profile")
@click.argument("name")
@click.argument("profile", required=False)
@click.pass_context
def tenant_profile(ctx: click.Context, name: str, profile: str | None) -> None:
    """Set the ACME profile NAME's orders use when apply names none (no PROFILE: the CA's
    default). Checked against the directory when an order asks for it."""

    def action(store: Store) -> None:
        with transaction(store.sessions) as session:
            tenants.find_tenant(session, name).default_profile = profile  # type: ignore[attr-defined]

    _with_store(ctx, action)
    click.echo(f"tenant {name}: default profile {profile or '(the CA default)'}")


@cli.group("token")
def token_group() -> None:
    """Manage API tokens."""


@token_group.command("create")
@click.argument("tenant")
@click.pass_context
def token_create(ctx: click.Context, tenant: str) -> None:
    """Create another token for TENANT and print it (shown only this once)."""

    def action(store: Store) -> str:
        with transaction(store.sessions) as session:
            token = tenants.issue_token(session, tenant)
            row = tenants.find_tenant(session, tenant)
            _audit(session, "token.create", f"token {token[:6]}… of {row.name}", row.id)
            return token

    click.echo(f"token: {_with_store(ctx, action)}")


@token_group.command("revoke")
@click.argument("token")
@click.pass_context
def token_revoke(ctx: click.Context, token: str) -> None:
    """Revoke a token, given whole or by its first 6 characters."""

    def action(store: Store) -> None:
        with transaction(store.sessions) as session:
            tenant_id = tenants.revoke_token(session, token)
            _audit(session, "token.revoke", f"token {token.strip().lower()[:6]}…", tenant_id)

    _with_store(ctx, action)
    click.echo("token revoked")


def _audit(session: Session, action: str, target: str, tenant_id: int | None) -> None:
    audit.record(session, audit.cli_actor(), action, target, tenant_id, audit.cli_source())


@cli.group("host")
def host_group() -> None:
    """HTTP-01 host bindings (hosts verified through the host-only nginx block)."""


@host_group.command("release")
@click.argument("host")
@click.pass_context
def host_release(ctx: click.Context, host: str) -> None:
    """Release HOST from the tenant it is bound to, so another tenant can verify it."""

    def action(store: Store) -> bool:
        with transaction(store.sessions) as session:
            return http01_store.release_host(session, host.strip().rstrip("."))

    if not _with_store(ctx, action):
        raise click.ClickException(f"{host} is not bound to any tenant")
    click.echo(f"{host} released")


@cli.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.pass_context
def purge_command(ctx: click.Context, dry_run: bool) -> None:
    """Delete finished orders past order_retention_hours and long-expired codes, once.

    `certok serve` does the same every purge_interval_seconds.
    """
    settings: Settings = ctx.obj

    def action(store: Store) -> purging.PurgeCounts:
        return purging.purge(
            store.sessions,
            settings.order_retention_hours,
            dry_run=dry_run,
            certificate_retention_days=settings.certificate_retention_days,
        )

    counts = _with_store(ctx, action)
    if dry_run:
        click.echo(f"would purge {counts.describe()} (dry run: nothing deleted)")
    else:
        click.echo(f"purged {counts.describe()}")


@cli.group("user")
def user_group() -> None:
    """Console users (a tenant's, or operators)."""


@user_group.command("create")
@click.option("--email", required=True, help="The user's e-mail address (signs in with it).")
@click.option("--tenant", help="The tenant the user belongs to.")
@click.option("--operator", is_flag=True, help="An operator (sees every tenant), no tenant.")
@click.pass_context
def user_create(ctx: click.Context, email: str, tenant: str | None, operator: bool) -> None:
    """Create a console user and print a one-time invite link to choose a password."""
    if operator == (tenant is not None):
        raise click.UsageError("give exactly one of --tenant TENANT or --operator")
    settings: Settings = ctx.obj

    def action(store: Store) -> str:
        with transaction(store.sessions) as session:
            tenant_id = tenants.find_tenant(session, tenant).id if tenant else None
            _, secret = console_users.create_user(
                session, email, tenant_id=tenant_id, invite_hours=settings.console_invite_hours
            )
            return secret

    secret = _with_store(ctx, action)
    click.echo(f"user {email.strip().lower()} created")
    click.echo(f"invite link: {settings.public_url.rstrip('/')}/console/invite/{secret}")
    click.echo(
        f"the link works once, for {settings.console_invite_hours:g} hours "
        "(settings: console_invite_hours)",
        err=True,
    )


@user_group.command("disable")
@click.argument("email")
@click.pass_context
def user_disable(ctx: click.Context, email: str) -> None:
    """Disable a console user and end its sessions."""

    def action(store: Store) -> None:
        with transaction(store.sessions) as session:
            user = console_users.user_by_email(session, email)
            console_users.set_user_disabled(session, user.id, True)

    _with_store(ctx, action)
    click.echo(f"user {email.strip().lower()} disabled")


@cli.group("db")
def db_group() -> None:
    """Database commands."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the schema migrations (certok serve also does this at start)."""
    _with_store(ctx, lambda store: None)
    click.echo("database is up to date")


ops_commands.register(cli, open_admin_store)


def main() -> None:
    cli(prog_name="certok")


if __name__ == "__main__":  # pragma: no cover
    main()
