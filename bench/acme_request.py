"""CPU per ACME HTTP request and per JWS: certok's lean send and signing against the `acme`
library's own.

    python bench/acme_request.py [--requests 300] [--rounds 5]

Under issuance load about a fifth of certok's CPU goes to HTTP requests to the CA. The
library's `ClientNetwork._send_request` goes through `requests.Session.request`, which merges
the session's cookies, headers, hooks and settings into every request, and formats its debug
log lines (response body included) whether or not anyone logs at DEBUG. certok's
`NonceRetryingNetwork._send` sends it straight through the session's urllib3 connection pool
(`certok/issuance/direct_http.py`: same adapter, pool, TLS settings and resolver). This script
starts the rig's Pebble and, in one process and in alternating rounds, sends `--requests` GETs
of the directory each way on one kept-alive connection, measuring the process's CPU time (not
wall time: Pebble's share is not ours). Reported: the median round per way in µs of CPU per
request, and lean / library.

The same rounds time the JWS around a POST (a newOrder payload, signed with the account's
ES256 key): the library's `ClientNetwork._wrap_in_jws` (josepy's Header, Signature and JWS
objects) against certok's `_wrap_in_jws` (`certok/issuance/jws.py`, dicts and josepy's
signature). No request is sent for those.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import josepy
from acme import client as acme_client
from acme import messages

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certok.issuance.account_keys import new_account_key
from certok.issuance.network import NonceRetryingNetwork
from tests.rig import Rig

ACCOUNT = messages.Registration()
NEW_ORDER = messages.NewOrder(
    identifiers=(messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="www.customer.test"),)
)
NONCE = b"bench-nonce-0123456789"


def cpu_per_call(call: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300, help="per round and way (300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per way (5)")
    args = parser.parse_args()
    with Rig() as rig:
        network = NonceRetryingNetwork(
            nonce_retries=3,
            key=new_account_key(),
            alg=josepy.ES256,
            verify_ssl=str(rig.ca_bundle),
            user_agent="certok-bench",
            timeout=10,
        )
        network.session.trust_env = False  # as certok's AcmeSession sets it
        url = rig.directory_url
        network.account = messages.RegistrationResource(uri=f"{url}/acct/1", body=ACCOUNT)
        ways: dict[str, Callable[[], object]] = {
            "library": lambda: acme_client.ClientNetwork._send_request(network, "GET", url),
            "lean": lambda: network._send("GET", url),
            "library JWS": lambda: acme_client.ClientNetwork._wrap_in_jws(
                network, NEW_ORDER, NONCE, url
            ),
            "lean JWS": lambda: network._wrap_in_jws(NEW_ORDER, NONCE, url),  # type: ignore[arg-type]
        }
        for call in ways.values():
            call()  # the connection, once
        rounds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, call in ways.items():
                rounds[name].append(cpu_per_call(call, args.requests))
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    for name, value in medians.items():
        what = "JWS" if name.endswith("JWS") else "request"
        print(f"acme_request: {name:11} {value * 1e6:7.0f} µs CPU per {what} "
              f"(median of {args.rounds} rounds of {args.requests})")  # fmt: skip
    print(f"acme_request: lean / library = {medians['lean'] / medians['library']:.2f} per request, "
          f"{medians['lean JWS'] / medians['library JWS']:.2f} per JWS")  # fmt: skip


if __name__ == "__main__":
    main()
