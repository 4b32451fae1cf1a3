"""PostgreSQL restarted under certok while 100 orders are in flight: every order is issued
(once), the API says 503 with Retry-After in its envelope while the database is away (never
500), and afterwards nothing is wedged: new orders are issued as before.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import (
    MANY_ORDERS_SETTINGS,
    IssuanceCountingProxy,
    KeptAliveUser,
    PostgresInstance,
    database_engine,
    require_postgres,
    scalar,
    slow_down_the_ca,
    wait_until_settled,
)
from tests.e2e.flow import User, check_issued, codes_for, delegate, extra_hosts, print_request_log
from tests.rig import Rig

ORDERS = 100
ISSUER = "letsencrypt"
OUTAGE_SECONDS = 3.0


@pytest.fixture
def postgres() -> Iterator[PostgresInstance]:
    require_postgres()
    with PostgresInstance() as instance:
        instance.create_database("certok")
        yield instance


@pytest.fixture
def counting_proxy(rig: Rig) -> Iterator[IssuanceCountingProxy]:
    with IssuanceCountingProxy.for_rig(rig) as proxy:
        assert isinstance(proxy, IssuanceCountingProxy)  # for_rig is FaultProxy's, typed so
        yield proxy
        print_request_log(proxy)  # shown only when the test failed


class ApiPoller:
    """Asks the API over and over from a thread, keeping every answer that was not a 200."""

    def __init__(self, user: User, codes: list[str]) -> None:
        self._user = user
        self._codes = codes
        self._stop = threading.Event()
        self.answers = collections.Counter[int]()
        self.refusals: list[httpx.Response] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ApiPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        turn = 0
        while not self._stop.is_set():
            code = self._codes[turn % len(self._codes)]
            turn += 1
            # The waiting user's poll, and a new customer's first call.
            for path, params in (
                ("/v1/cert/apply", {"code": code}),
                ("/v1/cert/dv", {"domains": "www.customer.test"}),
            ):
                response = self._user.get(path, **params)
                self.answers[response.status_code] += 1
                if response.status_code != 200:
                    self.refusals.append(response)
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_postgres_restart_with_100_orders_in_flight(  # type: ignore[no-untyped-def]
    rig: Rig,
    certok_server,
    customer_records,
    counting_proxy: IssuanceCountingProxy,
    postgres: PostgresInstance,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    slow_down_the_ca(counting_proxy)
    url = postgres.url("certok")
    server = certok_server(
        database_url=url,
        issuers__letsencrypt__directory=counting_proxy.directory_url,
        **MANY_ORDERS_SETTINGS,
        worker_threads=4,
    )
    user = KeptAliveUser(server, server.create_tenant("acme-corp"))
    names, hosts = extra_hosts(ORDERS + 20)
    first_names, later_names = names[:ORDERS], names[ORDERS:]
    delegate(
        rig,
        customer_records,
        user.dv(",".join(first_names)),
        user.dv(",".join(later_names)),
        extra=hosts,
    )
    codes = codes_for(user, first_names)
    with ThreadPoolExecutor(10) as pool:
        first = list(pool.map(lambda code: user.apply(code, issuer=ISSUER), codes.values()))
    assert collections.Counter(answer["status"] for answer in first) == {"pending": ORDERS}
    engine = database_engine(url)
    pending = scalar(engine, "SELECT count(*) FROM orders WHERE state = 'pending'")
    engine.dispose()  # the test's own connections must not see the restart either
    print(f"postgres restart: {pending} of {ORDERS} pending when PostgreSQL stops")
    assert pending > ORDERS // 4, "too few orders in flight for the restart to matter"

    with ApiPoller(user, list(codes.values())) as poller:
        postgres.stop("fast")
        time.sleep(OUTAGE_SECONDS)
        postgres.start()
        time.sleep(2.0)
    print(f"postgres restart: API answers during the restart {dict(poller.answers)}")
    assert poller.refusals, "the API was never refused: the poll missed the outage"
    assert set(poller.answers) <= {200, 503}, dict(poller.answers)
    for response in poller.refusals:
        body = response.json()
        assert body["code"] == 1503 and body["data"] is None and body["traceId"], body
        assert "database" in body["msg"], body
        assert int(response.headers["Retry-After"]) > 0, response.headers

    engine = database_engine(url)
    states = wait_until_settled(engine, list(codes.values()), timeout=120)
    assert collections.Counter(states.values()) == {"issued": ORDERS}
    certificates = counting_proxy.issued_certificates()
    assert {names: n for names, n in certificates.items() if n != 1} == {}
    assert set(certificates) == {(name,) for name in first_names}
    assert scalar(engine, "SELECT count(*) FROM challenge_records") == 0
    name = first_names[0]
    check_issued(rig, user.apply(codes[name]), [name], "ECC", tmp_path)

    # Nothing wedged: more orders than worker threads, all issued, and the server is ready.
    later = codes_for(user, later_names)
    for code in later.values():
        assert user.apply(code, issuer=ISSUER)["status"] == "pending"
    states = wait_until_settled(engine, list(later.values()), timeout=90)
    assert collections.Counter(states.values()) == {"issued": len(later_names)}
    ready = httpx.get(f"{server.base_url}/readyz", timeout=5, trust_env=False)
    assert ready.status_code == 200, ready.text
    engine.dispose()
    print(f"postgres restart: whole run {time.monotonic() - started:.1f} s")
