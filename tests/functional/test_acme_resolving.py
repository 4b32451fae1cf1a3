"""CA host names are resolved through certok's resolvers, never the system resolver."""

from __future__ import annotations

import ipaddress
import socket

import dns.resolver
import pytest

from certok.issuance import AcmeProblem, ProblemKind, new_account_key
from certok.issuance.session import AcmeSession
from tests.functional.pebble_fixture import PebbleInstance
from tests.functional.pebble_fixture import pebble_server as pebble_server


def test_ca_host_name_goes_through_the_given_resolver(
    pebble: PebbleInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def resolve(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    real_getaddrinfo = socket.getaddrinfo

    def numeric_only(host: str, *args: object, **kwargs: object) -> object:
        # Turning an IP literal into a sockaddr is no lookup; a name would be.
        ipaddress.ip_address(host)
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    url = pebble.directory_url.replace("127.0.0.1", "localhost")
    session = AcmeSession(url, new_account_key(), ca_bundle=pebble.ca_bundle, resolve=resolve)
    account = session.register(contact_email=None, eab_kid=None, eab_hmac_key=None)
    assert account.startswith("https://localhost:")
    assert asked and set(asked) == {"localhost"}


def test_unresolvable_ca_is_a_retryable_problem(pebble: PebbleInstance) -> None:
    import dns.resolver

    def resolve(host: str) -> list[str]:
        raise dns.resolver.NXDOMAIN()

    url = pebble.directory_url.replace("127.0.0.1", "ca.invalid")
    session = AcmeSession(url, new_account_key(), ca_bundle=pebble.ca_bundle, resolve=resolve)
    with pytest.raises(AcmeProblem) as problem:
        session.external_account_required()
    assert problem.value.kind is ProblemKind.RETRYABLE
    assert "ca.invalid" in problem.value.detail


def test_dns_resolver_asks_only_the_given_nameserver() -> None:
    import asyncio
    import threading

    from certok.dnszone.answer import ZoneConfig
    from certok.dnszone.server import start_dns_server
    from certok.dnszone.zone_cache import ZoneCache
    from certok.dnszone.zone_records import ZoneRecords
    from certok.issuance.transport import dns_resolver

    cache = ZoneCache(None)
    cache.replace(ZoneRecords.empty())
    config = ZoneConfig(
        zone="acme.svc.test",
        nameservers=("ns1.acme.svc.test",),
        nameserver_addresses=("127.0.0.1",),
        ttl=0,
        host_addresses=(("ca", ("127.0.0.7", "::1")),),
    )
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start_dns_server("127.0.0.1", 0, config, cache))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        resolve = dns_resolver([("127.0.0.1", server.port)], timeout=2)
        assert resolve("ca.acme.svc.test") == ["::1", "127.0.0.7"]
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolve("nothere.acme.svc.test")
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
