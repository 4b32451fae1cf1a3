"""The seed's HTTP-01 path end to end: nginx with the seed's exact lines, certok, Pebble.

nginx (the customer's web server) carries the seed's block: www.customer.test and
customer.test redirect to `https://svc.acme.svc.test:<port>/v1/dv/$host/$1` (host-only form),
www5.customer.test to `https://svc443.acme.svc.test/v1/dv/$host/$1` (the production shape:
HTTPS on 443, no port). certok serves HTTPS itself, and its DNS zone resolves its own names.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest

from tests.rig import Rig
from tests.rig.certok_server import CertokServer

from .test_dns_flow import User, check_issued


def http_settings(rig: Rig, **overrides: object) -> dict[str, object]:
    certs = rig.ca_bundle.parent
    settings: dict[str, object] = {
        "public_url": f"https://svc.{rig.certok_zone}:{rig.certok_https_port}",
        "https_host": "127.0.0.1",
        "https_port": rig.certok_https_port,
        "tls_cert_file": certs / "localhost.pem",
        "tls_key_file": certs / "localhost.key",
        "dns_hosts": {"svc": ["127.0.0.1"], "svc443": ["127.0.0.2"]},
        "http01_port": rig.nginx_port,
        "precheck_allowed_ports": [80, 443, rig.nginx_port, rig.certok_https_port],
        "precheck_allow_loopback": True,
    }
    settings.update(overrides)
    return settings


@pytest.fixture
def server(rig: Rig, certok_server: Callable[..., CertokServer]) -> CertokServer:
    return certok_server(**http_settings(rig))


@pytest.fixture
def nginx_sites(rig: Rig):  # type: ignore[no-untyped-def]
    yield rig.set_nginx_redirects
    rig.set_nginx_redirects({})


def test_one_and_two_names_through_the_seeds_block(
    rig: Rig, server: CertokServer, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    user = User(server, server.create_tenant("acme-corp"))
    one = user.dv("www.customer.test", type="http")
    assert one["type"] == "http" and one["valid"] is True, one
    assert set(one["items"][0]) >= {"domain", "valid", "cost"}
    assert one["items"][0]["domain"] == "www.customer.test" and one["items"][0]["cost"].isdigit()
    assert len(one["code"]) == 16
    # the answer shows the block to paste: the tenant-bound form
    assert "return 302 https://svc.acme.svc.test" in one["nginx"] and "$host/$1" in one["nginx"]
    data = user.apply_until_done(one["code"], issuer="letsencrypt")
    check_issued(rig, data, ["www.customer.test"], "ECC", tmp_path)

    two = user.dv("customer.test,www.customer.test", type="HTTP")
    assert two["valid"] is True, two
    data = user.apply_until_done(two["code"], algorithm="RSA", issuer="letsencrypt")
    check_issued(rig, data, ["customer.test", "www.customer.test"], "RSA", tmp_path)


def test_missing_or_misdirected_block_is_not_valid(  # type: ignore[no-untyped-def]
    rig: Rig, server: CertokServer, nginx_sites
) -> None:
    nginx_sites(
        {"www4.customer.test": f"https://svc.{rig.certok_zone}:{rig.certok_https_port}/elsewhere/"}
    )
    user = User(server, server.create_tenant("acme-corp"))
    data = user.dv("www3.customer.test,www4.customer.test", type="http")
    assert data["valid"] is False and data["code"] is None
    items = {item["domain"]: item for item in data["items"]}
    assert items["www3.customer.test"]["valid"] is False
    assert "no redirect" in items["www3.customer.test"]["detail"]
    assert "location" in items["www3.customer.test"]["detail"]  # it shows the block to add
    assert items["www4.customer.test"]["valid"] is False
    assert "/elsewhere/" in items["www4.customer.test"]["detail"]


def test_host_only_form_binds_the_host_to_the_first_tenant(  # type: ignore[no-untyped-def]
    rig: Rig, server: CertokServer, nginx_sites, tmp_path
) -> None:
    alice = User(server, server.create_tenant("alice"))
    mallory = User(server, server.create_tenant("mallory"))
    assert alice.dv("www.customer.test", type="http")["valid"] is True
    # mallory tries alice's host through the same host-only redirect: refused, with the way out
    stolen = mallory.dv("www.customer.test", type="http")
    assert stolen["valid"] is False and stolen["code"] is None
    detail = stolen["items"][0]["detail"]
    assert "bound to another tenant" in detail
    assert "type=dns" in detail and "certok host release www.customer.test" in detail

    # the tenant-bound form gives mallory a host of her own (www2), and only to her
    bound_target = mallory.dv("www2.customer.test", type="http")["nginx"].split("return 302 ")[1]
    bound_target = bound_target.split("$host")[0]
    nginx_sites({"www2.customer.test": bound_target})
    mine = mallory.dv("www2.customer.test", type="http")
    assert mine["valid"] is True, mine
    assert alice.dv("www2.customer.test", type="http")["valid"] is False
    data = mallory.apply_until_done(mine["code"], issuer="letsencrypt")
    check_issued(rig, data, ["www2.customer.test"], "ECC", tmp_path)

    # the operator releases www.customer.test: now mallory can verify it
    server.cli("host", "release", "www.customer.test")
    assert mallory.dv("www.customer.test", type="http")["valid"] is True
    assert alice.dv("www.customer.test", type="http")["valid"] is False


def _can_bind_443() -> bool:
    if os.geteuid() != 0:
        return False
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 443))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not _can_bind_443(), reason="needs root and a free 127.0.0.2:443")
def test_production_shape_https_on_443_without_a_port(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, tmp_path
) -> None:
    server = certok_server(
        **http_settings(
            rig,
            public_url=f"https://svc443.{rig.certok_zone}",
            https_host="127.0.0.2",
            https_port=443,
        )
    )
    user = User(server, server.create_tenant("acme-corp"))
    data = user.dv("www5.customer.test", type="http")
    assert data["valid"] is True, data
    assert f"return 302 https://svc443.{rig.certok_zone}/v1/dv/" in data["nginx"]
    issued = user.apply_until_done(data["code"], issuer="letsencrypt")
    check_issued(rig, issued, ["www5.customer.test"], "ECC", tmp_path)
