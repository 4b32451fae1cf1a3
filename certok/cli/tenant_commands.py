"""`certok tenant`, `token`, `host` and `user`: tenants, their API tokens, HTTP-01 host
bindings and console users."""

from __future__ import annotations

import click
from sqlalchemy.orm import Session

from certok import audit
from certok.cli.admin_store import with_store
from certok.db.engine import transaction
from certok.http01 import store as http01_store
from certok.persistence import Store
from certok.settings import Settings
from certok.tenants import service as tenants
from certok.tenants import users as console_users


@click.group("tenant")
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

    token = with_store(ctx, action)
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

    rows = with_store(ctx, action)
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

    stopped = with_store(ctx, action)
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
    """Set the ACME profile of NAME's orders that name none and renew no certificate with
    one (no PROFILE: the CA's default). Checked against the directory when an order asks
    for it."""

    def action(store: Store) -> None:
        with transaction(store.sessions) as session:
            tenants.find_tenant(session, name).default_profile = profile

    with_store(ctx, action)
    click.echo(f"tenant {name}: default profile {profile or '(the CA default)'}")


@click.group("token")
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

    click.echo(f"token: {with_store(ctx, action)}")


@token_group.command("revoke")
@click.argument("token")
@click.pass_context
def token_revoke(ctx: click.Context, token: str) -> None:
    """Revoke a token, given whole or by its first 6 characters."""

    def action(store: Store) -> None:
        with transaction(store.sessions) as session:
            tenant_id = tenants.revoke_token(session, token)
            _audit(session, "token.revoke", f"token {token.strip().lower()[:6]}…", tenant_id)

    with_store(ctx, action)
    click.echo("token revoked")


def _audit(session: Session, action: str, target: str, tenant_id: int | None) -> None:
    audit.record(session, audit.cli_actor(), action, target, tenant_id, audit.cli_source())


@click.group("host")
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

    if not with_store(ctx, action):
        raise click.ClickException(f"{host} is not bound to any tenant")
    click.echo(f"{host} released")


@click.group("user")
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

    secret = with_store(ctx, action)
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

    with_store(ctx, action)
    click.echo(f"user {email.strip().lower()} disabled")
