"""The `certok` command: serve, tenants, tokens, database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from certok.cli import ops_commands, preflight, tenant_commands
from certok.cli.admin_store import open_admin_store, storage_errors_in_one_line, with_store
from certok.cli.problems import check_environment, load_problem
from certok.launch import run_server
from certok.logs import configure_logging
from certok.orders import purge as purging
from certok.persistence import Store
from certok.settings import Settings
from certok.settings_loading import load_settings
from certok.startup import version


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
def serve_command(ctx: click.Context, /, **listen: Any) -> None:
    """Run the API, the DNS server and the issuance worker."""
    settings: Settings = ctx.obj
    given = {key: value for key, value in listen.items() if value is not None}
    if given:
        settings = settings.updated(**given)
    preflight.check_serve(settings)
    # The database and the key file, checked once before anything starts.
    with storage_errors_in_one_line(settings):
        open_admin_store(settings, announce=False).close()
    configure_logging(settings)
    with storage_errors_in_one_line(settings):
        status = run_server(settings)
    ctx.exit(status)


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

    counts = with_store(ctx, action)
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
    with_store(ctx, lambda store: None)
    click.echo("database is up to date")


for group in (
    tenant_commands.tenant_group,
    tenant_commands.token_group,
    tenant_commands.host_group,
    tenant_commands.user_group,
):
    cli.add_command(group)
ops_commands.register(cli, open_admin_store)


def main() -> None:
    cli(prog_name="certok")


if __name__ == "__main__":  # pragma: no cover
    main()
