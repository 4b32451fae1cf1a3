"""Operator commands beside the tenant ones: `certok audit`, `certok backup`, `certok restore`."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.engine import make_url

from certok import audit
from certok.cli import preflight
from certok.cli.problems import ConfigProblem
from certok.crypto import SecretBox
from certok.db import migrate
from certok.db.engine import make_engine
from certok.db.models import AcmeAccount, Tenant
from certok.orders.accounts import account_key_owner
from certok.persistence import Store
from certok.settings import Settings

OpenStore = Callable[[Settings], Store]
_KEY_REMINDER = (
    "the secret key file is NOT in the backup (on purpose: a backup alone must not decrypt "
    "the private keys in it); keep a copy of {key} somewhere else, without it the backup's "
    "private keys and ACME accounts cannot be used"
)


def register(cli: click.Group, open_admin_store: OpenStore) -> None:
    """Add the commands to `cli` (they open the store the way the admin commands do)."""

    @cli.command("audit")
    @click.option("--tenant", help="Only this tenant's events.")
    @click.option("--action", help="Only actions starting with this, e.g. token or tenant.create.")
    @click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
    @click.pass_context
    def audit_command(
        ctx: click.Context, tenant: str | None, action: str | None, limit: int
    ) -> None:
        """List the audit log: who changed what (tenants, tokens, users, webhooks, revokes),
        when and from where, oldest first."""
        store = open_admin_store(ctx.obj)
        try:
            with store.sessions() as session:
                tenant_id = None
                if tenant is not None:
                    tenant_id = session.scalar(
                        select(Tenant.id).where(Tenant.name == tenant.strip().lower())
                    )
                    if tenant_id is None:
                        raise click.ClickException(f"no tenant named {tenant!r}")
                events = audit.list_events(
                    session, tenant_id=tenant_id, action_prefix=action, limit=limit
                )
                names = dict(session.execute(select(Tenant.id, Tenant.name)).tuples().all())
        finally:
            store.close()
        click.echo(
            f"{'WHEN (UTC)':<20} {'ACTION':<20} {'TENANT':<16} {'WHO':<24} {'FROM':<24} TARGET"
        )
        for event in events:
            who_tenant = names.get(event.tenant_id, "-") if event.tenant_id else "-"
            click.echo(
                f"{event.at:%Y-%m-%d %H:%M:%S} {event.action:<20} {who_tenant:<16} "
                f"{event.actor:<24} {event.source:<24} {event.target}"
            )

    @cli.command("demo")
    @click.option("--yes", is_flag=True, help="Install missing Debian packages without asking.")
    @click.option(
        "--no-wait", is_flag=True, help="Stop everything at the end instead of waiting for Enter."
    )
    def demo_command(yes: bool, no_wait: bool) -> None:
        """Show certok's job on this machine: a loopback CA, resolver and nginx, a tenant, a
        delegated name, an issued certificate served by nginx; each step as curl commands.

        Needs the Debian packages pebble, unbound, nsd, nginx and dnsutils (it asks before
        installing them). Nothing leaves the machine: everything listens on 127.0.0.1.
        """
        from certok.demo.errors import RigError
        from certok.demo.run import DemoError, run_demo

        try:
            run_demo(yes=yes, wait=not no_wait)
        except (DemoError, RigError) as exc:
            raise click.ClickException(str(exc)) from None

    @cli.command("backup")
    @click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--force", is_flag=True, help="Overwrite DESTINATION if it exists.")
    @click.pass_context
    def backup_command(ctx: click.Context, destination: Path, force: bool) -> None:
        """Copy the SQLite database to DESTINATION while certok keeps running.

        Uses SQLite's online backup: a consistent copy even while orders are written. For
        PostgreSQL it prints the pg_dump command to use instead.
        """
        settings: Settings = ctx.obj
        url = settings.effective_database_url
        if not url.startswith("sqlite"):
            raise ConfigProblem(_pg_dump_hint(url, destination, settings))
        if destination.exists() and not force:
            raise click.ClickException(f"{destination} exists: give another file or --force")
        source = _sqlite_path(settings)
        if not source.exists():
            raise ConfigProblem(
                f"no database at {source} (data_dir {settings.data_dir}): run this where "
                "`certok serve` runs, or set data_dir / CERTOK_DATA_DIR / --config"
            )
        size = sqlite_backup(source, destination)
        click.echo(f"backed up {source} to {destination} ({size} bytes)")
        click.echo(_KEY_REMINDER.format(key=settings.effective_secret_key_file), err=True)

    @cli.command("restore")
    @click.argument("backup", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--force", is_flag=True, help="Restore even though the API port is in use.")
    @click.pass_context
    def restore_command(ctx: click.Context, backup: Path, force: bool) -> None:
        """Replace the SQLite database with BACKUP (made by `certok backup`).

        Stop `certok serve` first. The database it replaces is kept beside it as
        certok.db.before-restore-<time>. Migrations run afterwards, so an older backup works.
        """
        settings: Settings = ctx.obj
        url = settings.effective_database_url
        if not url.startswith("sqlite"):
            raise ConfigProblem(
                "restore handles SQLite only; for PostgreSQL use pg_restore --clean "
                f"--dbname '{_libpq_url(url)}' BACKUP with certok stopped"
            )
        if not force:
            try:
                preflight.check_ports(settings.updated(dns_port=0, metrics_port=0))
            except ConfigProblem:
                raise click.ClickException(
                    f"api_port {settings.api_port} is in use: stop `certok serve` before "
                    "restoring (or pass --force if that is another program)"
                ) from None
        _check_backup(backup)
        target = _sqlite_path(settings)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            kept = target.with_name(f"{target.name}.before-restore-{stamp}")
            sqlite_backup(target, kept)
            click.echo(f"the replaced database is kept as {kept}", err=True)
        # The replaced database's write-ahead log (copied into the kept file above) or a lost
        # one's (its file deleted, its log left behind): opened next to the restored file,
        # SQLite would replay it onto the backup.
        for suffix in ("-wal", "-shm"):
            leftover = Path(f"{target}{suffix}")
            if leftover.exists() and not target.exists():
                click.echo(f"removed {leftover}, left behind by the lost database", err=True)
            leftover.unlink(missing_ok=True)
        sqlite_backup(backup, target)
        engine = make_engine(url)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        problem = _key_problem(settings)
        click.echo(f"restored {target} from {backup}")
        if problem:
            click.echo(f"warning: {problem}", err=True)


def sqlite_backup(source: Path, destination: Path) -> int:
    """A consistent copy of a live SQLite database (sqlite3's online backup API), mode 0600."""
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(partial, destination)
    return destination.stat().st_size


def _check_backup(backup: Path) -> None:
    try:
        with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            result = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(f"{backup} is not a SQLite database ({exc})") from None
    if "alembic_version" not in tables or "tenants" not in tables:
        raise click.ClickException(f"{backup} is not a certok database (no certok tables)")
    if result is None or result[0] != "ok":
        raise click.ClickException(f"{backup} is damaged: PRAGMA quick_check says {result}")


def _key_problem(settings: Settings) -> str | None:
    """Whether this server's key opens the restored database's encrypted ACME account keys."""
    engine = make_engine(settings.effective_database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(select(AcmeAccount.issuer, AcmeAccount.key_encrypted)).first()
        if row is None:
            return None
        try:
            box = SecretBox.from_settings(settings.secret_key, settings.effective_secret_key_file)
            box.decrypt(row.key_encrypted, account_key_owner(row.issuer))
        except Exception:  # a wrong key (InvalidTag), a missing or unreadable key file
            return (
                f"the secret key ({settings.effective_secret_key_file}) does not decrypt this "
                "backup's keys: put back the key file that was in use when the backup was made"
            )
        return None
    finally:
        engine.dispose()


def _sqlite_path(settings: Settings) -> Path:
    database = make_url(settings.effective_database_url).database
    if not database or database == ":memory:":
        raise ConfigProblem("database_url names no SQLite file: nothing to back up or restore")
    return Path(database)


def _libpq_url(url: str) -> str:
    # prepare_threshold is psycopg's (certok.db.engine); pg_dump refuses it.
    parsed = (
        make_url(url).set(drivername="postgresql").difference_update_query(["prepare_threshold"])
    )
    return parsed.render_as_string(hide_password=True)


def _pg_dump_hint(url: str, destination: Path, settings: Settings) -> str:
    return (
        f"database_url is PostgreSQL: back it up with pg_dump --format=custom --file "
        f"{destination} '{_libpq_url(url)}' (password from PGPASSWORD or ~/.pgpass); "
        f"{_KEY_REMINDER.format(key=settings.effective_secret_key_file)}"
    )
