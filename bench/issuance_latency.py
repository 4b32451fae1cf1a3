"""apply → issued latency on the loopback rig, next to the floor, in one run.

    python bench/issuance_latency.py [--runs 20]

Starts the rig (Pebble with PEBBLE_VA_NOSLEEP=1, unbound, NSD), then measures:
- floor: a minimal client on certbot's `acme` library (0.1 s polls) driving the same Pebble,
  its TXT record served by certok's DNS server code from memory (no database, no API);
- certok: the real `certok serve`, timing from the first `GET /v1/cert/apply` of a fresh code
  to the response that says `issued` (dns-01, one name, ECC, letsencrypt issuer).
Prints median / p90 of each and the ratio. certbot's 2.9 s (RIG.md, same rig) is quoted,
not run here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import josepy
from acme import challenges, client, messages
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certok.crypto import generate_private_key, make_csr
from certok.dnszone.answer import ZoneConfig
from certok.dnszone.records import ZoneCache, ZoneRecords
from certok.dnszone.server import start_dns_server
from tests.rig import Rig
from tests.rig.certok_server import CertokServer

FLOOR_LABEL = "f100rf100rf100r0"
POLL = 0.1


def floor_runs(rig: Rig, runs: int) -> list[float]:
    """The minimal `acme`-library client: new order → answer → poll → finalize → download."""
    cache = ZoneCache(None)
    loop = asyncio.new_event_loop()
    config = ZoneConfig(
        zone=rig.certok_zone, nameservers=(f"ns1.{rig.certok_zone}",),
        nameserver_addresses=("127.0.0.1",), ttl=0,
    )  # fmt: skip
    server = loop.run_until_complete(
        start_dns_server(
            "127.0.0.1", rig.certok_dns_port, config, cache, rate_limit_per_second=None
        )
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = client.ClientNetwork(key, alg=josepy.ES256, verify_ssl=str(rig.ca_bundle))
        directory = client.ClientV2.get_directory(rig.directory_url, net)
        acme = client.ClientV2(directory, net)
        acme.net.account = acme.new_account(
            messages.NewRegistration.from_data(terms_of_service_agreed=True)
        )
        times = []
        for _ in range(runs):
            csr = make_csr(generate_private_key("ECC"), ["www3.customer.test"]).encode()
            started = time.perf_counter()
            order = acme.new_order(csr)
            authz = order.authorizations[0]
            challb = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))
            value = challb.chall.validation(key)
            cache.replace(ZoneRecords.build([FLOOR_LABEL], [(FLOOR_LABEL, value)]))
            acme.answer_challenge(challb, challb.response(key))
            while True:
                authzr, _ = acme.poll(authz)
                if authzr.body.status != messages.STATUS_PENDING:
                    break
                time.sleep(POLL)
            order = acme.begin_finalization(order)
            while order.body.status != messages.STATUS_VALID:
                time.sleep(POLL)
                body = messages.Order.from_json(acme._post_as_get(order.uri).json())
                order = order.update(body=body)
            acme._post_as_get(order.body.certificate)
            times.append(time.perf_counter() - started)
        return times
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def certok_runs(rig: Rig, runs: int, workdir: Path) -> list[float]:
    server = CertokServer.for_rig(rig, workdir, apply_wait_seconds=10)
    server.start()
    try:
        token = server.create_tenant("bench")
        http = httpx.Client(
            base_url=server.base_url, headers={"httpsok-token": token}, timeout=60, trust_env=False
        )
        first = http.get("/v1/cert/dv", params={"domains": "www.customer.test"}).json()["data"]
        item = first["items"][0]
        rig.set_customer_records(
            [
                f"{item['name']} IN CNAME {item['value']}.",
                f"_acme-challenge.www3 IN CNAME {FLOOR_LABEL}.{rig.certok_zone}.",
            ]
        )
        times = []
        for _ in range(runs):
            code = http.get("/v1/cert/dv", params={"domains": "www.customer.test"}).json()["data"][
                "code"
            ]
            started = time.perf_counter()
            params = {"code": code, "issuer": "letsencrypt"}
            while True:
                data = http.get("/v1/cert/apply", params=params).json()["data"]
                if data["status"] != "pending":
                    break
            elapsed = time.perf_counter() - started
            if data["status"] != "issued":
                raise SystemExit(f"order failed: {data}")
            times.append(elapsed)
        return times
    finally:
        server.stop()


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    return f"median {statistics.median(ordered):.3f} s  p90 {p90:.3f} s  (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with Rig() as rig, tempfile.TemporaryDirectory() as tmp:
        rig.set_customer_records(
            [f"_acme-challenge.www3 IN CNAME {FLOOR_LABEL}.{rig.certok_zone}."]
        )
        floor = floor_runs(rig, args.runs)
        certok = certok_runs(rig, args.runs, Path(tmp))
    ratio = statistics.median(certok) / statistics.median(floor)
    print("apply → issued, dns-01, one name (Pebble PEBBLE_VA_NOSLEEP=1, nonce reject 0)")
    print(f"  floor (acme library, 0.1 s polls): {describe(floor)}")
    print(f"  certok serve:                      {describe(certok)}")
    print(f"  certok / floor (median):           {ratio:.2f}x")
    print("  certbot 2.1 on the same rig (RIG.md, not run here): 2.9 s")


if __name__ == "__main__":
    main()
