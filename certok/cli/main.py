"""The `certok` command: serve, tenants, tokens, database."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from certok.db.engine import transaction
from certok.errors import CertokError
from certok.http01 import store as http01_store
from certok.orders import purge as purging
from certok.runtime import configure_logging, run_server
from certok.settings import Settings, load_settings
from certok.store import Store, open_store
from certok.tenants import service as tenants

T = TypeVar("T")


@click.group()
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="CERTOK_CONFIG",
    help="TOML config file (environment variables CERTOK_* override it).",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """certok: a self-hosted certificate service speaking the httpsok OpenAPI."""
    try:
        ctx.obj = load_settings(config)
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings (see docs/settings.md):\n{exc}") from exc


def _with_store(ctx: click.Context, action: Callable[[Store], T]) -> T:
    settings: Settings = ctx.obj
    store = open_store(settings)
    try:
        return action(store)
    except CertokError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        store.engine.dispose()


@cli.command("serve")
@click.option("--api-host", help="HTTP API listen address (settings: api_host).")
@click.option("--api-port", type=int, help="HTTP API port (settings: api_port).")
@click.option("--dns-host", help="DNS listen address (settings: dns_host).")
@click.option("--dns-port", type=int, help="DNS port, UDP and TCP (settings: dns_port).")
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
        settings = settings.model_copy(update=given)
    configure_logging(settings.log_level)
    ctx.exit(run_server(settings))


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
            tenants.create_tenant(session, name)
            return tenants.issue_token(session, name)

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
    def action(store: Store) -> None:
        with transaction(store.sessions) as session:
            tenants.set_disabled(session, name, disabled)

    _with_store(ctx, action)
    click.echo(f"tenant {name} {'disabled' if disabled else 'enabled'}")


@tenant_group.command("disable")
@click.argument("name")
@click.pass_context
def tenant_disable(ctx: click.Context, name: str) -> None:
    """Disable a tenant: its tokens stop working at once."""
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
            return tenants.issue_token(session, tenant)

    click.echo(f"token: {_with_store(ctx, action)}")


@token_group.command("revoke")
@click.argument("token")
@click.pass_context
def token_revoke(ctx: click.Context, token: str) -> None:
    """Revoke a token, given whole or by its first 6 characters."""

    def action(store: Store) -> None:
        with transaction(store.sessions) as session:
            tenants.revoke_token(session, token)

    _with_store(ctx, action)
    click.echo("token revoked")


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


@cli.group("db")
def db_group() -> None:
    """Database commands."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply the schema migrations (certok serve also does this at start)."""
    _with_store(ctx, lambda store: None)
    click.echo("database is up to date")


def main() -> None:
    cli(prog_name="certok")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
