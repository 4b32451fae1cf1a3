"""`certok backup` while certok runs, `certok restore` after a loss, and issuance goes on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.e2e.flow import User, check_issued, delegate
from tests.rig import Rig
from tests.rig.certok_server import CertokServer


def issue(rig: Rig, user: User, customer_records, names: list[str]) -> dict:  # type: ignore[no-untyped-def,type-arg]
    first = user.dv(",".join(names))
    delegate(rig, customer_records, first)
    second = user.dv(",".join(names))
    assert second["valid"] is True, second
    data = user.apply_until_done(second["code"], issuer="letsencrypt")
    assert data["status"] == "issued", data
    data["code"] = second["code"]
    return data


def test_backup_restore_round_trip_and_issuance_continues(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server: Callable[..., CertokServer], customer_records, tmp_path: Path
) -> None:
    server = certok_server()
    user = User(server, server.create_tenant("acme-corp"))
    before = issue(rig, user, customer_records, ["www.customer.test"])

    backup = tmp_path / "certok-backup.db"
    server.cli("backup", str(backup))  # online: the server keeps running
    assert server.running
    server.create_tenant("made-after-the-backup")

    # The database is lost; the key file is kept (as the backup's reminder says).
    server.stop()
    database = Path(server.env["CERTOK_DATA_DIR"]) / "certok.db"
    database.unlink()
    server.cli("restore", str(backup))
    server.start()
    rig.flush_resolver()

    listing = server.cli("tenant", "list")
    assert "acme-corp" in listing and "made-after-the-backup" not in listing
    # The order from before the backup still answers, with the same certificate.
    again = user.apply_until_done(before["code"])
    assert again["certificate"] == before["certificate"]
    # Issuance goes on: the restored ACME account key decrypts, the token still works.
    after = issue(rig, user, customer_records, ["www.customer.test", "customer.test"])
    check_issued(rig, after, ["www.customer.test", "customer.test"], "ECC", tmp_path)
    assert "audit" not in listing  # (tenant list shows tenants only)
    audit = server.cli("audit")
    assert "tenant.create" in audit and "made-after-the-backup" not in audit
