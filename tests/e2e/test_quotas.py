"""One tenant floods; the shared ACME account's budget holds and other tenants are served.

Budgets scaled down so the test sees every edge: the letsencrypt account may make 4 new
orders per 3 hours (Let's Encrypt's is 300), a tenant 3 of them, and a tenant may have 4
orders pending. Every newOrder certok sends is counted at the fault proxy in front of Pebble.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.flow import (
    OrderCountingProxy,
    User,
    codes_for,
    delegate,
    extra_hosts,
    order_id_for_code,
    print_request_log,
    query,
)
from tests.rig import Rig

ISSUER = "letsencrypt"
NEW_ORDER = "/order-plz"
ACCOUNT_BUDGET = 4
TENANT_SHARE = 3
PENDING_CAP = 4
# "Promptly": the quiet tenant's order, asked for while the flood is queued, issues within
# this (about a second on this rig).
PROMPTLY_SECONDS = 20.0


def _reason(data: dict) -> str:  # type: ignore[type-arg]
    return str(data.get("reason") or "")


def _apply_raw(user: User, code: str) -> httpx.Response:
    return user.get("/v1/cert/apply", code=code, issuer=ISSUER)


@pytest.mark.timeout(180)
def test_a_flooding_tenant_cannot_spend_the_shared_account_and_others_still_issue(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records
) -> None:
    with OrderCountingProxy.for_rig(rig) as proxy:
        try:
            _flood(rig, certok_server, customer_records, proxy)
        finally:
            print_request_log(proxy)


def _flood(rig: Rig, certok_server, customer_records, proxy: OrderCountingProxy) -> None:  # type: ignore[no-untyped-def]
    server = certok_server(
        apply_wait_seconds=0,
        worker_poll_seconds=0.2,
        code_ttl_seconds=600,
        tenant_max_pending_orders=PENDING_CAP,
        tenant_acme_orders_per_window=TENANT_SHARE,
        issuers__letsencrypt__directory=proxy.directory_url,
        issuers__letsencrypt__new_orders_per_window=ACCOUNT_BUDGET,
    )
    flood = User(server, server.create_tenant("flood"))
    quiet = User(server, server.create_tenant("quiet"))
    third = User(server, server.create_tenant("third"))
    flood_names, flood_hosts = extra_hosts(8, "f")
    quiet_names, quiet_hosts = extra_hosts(1, "q")
    third_names, third_hosts = extra_hosts(1, "t")
    delegate(
        rig,
        customer_records,
        flood.dv(",".join(flood_names)),
        quiet.dv(quiet_names[0]),
        third.dv(third_names[0]),
        extra=flood_hosts + quiet_hosts + third_hosts,
    )
    codes = codes_for(flood, flood_names)
    first, later, refused = flood_names[:4], flood_names[4:7], flood_names[7]

    # The flood's first four: three get ACME orders (its share), the fourth waits, saying so.
    for name in first:
        assert flood.apply(codes[name], issuer=ISSUER)["status"] == "pending"
    states = _until_states(server, [codes[n] for n in first], {"issued": 3, "pending": 1})
    (waiting,) = [n for n in first if states[codes[n]] == "pending"]
    data = flood.apply(codes[waiting], issuer=ISSUER)
    assert "tenant_acme_orders_per_window" in _reason(data), data

    # More of the flood is accepted up to the pending cap, and waits; beyond it, 429.
    for name in later:
        assert flood.apply(codes[name], issuer=ISSUER)["status"] == "pending"
    for name in later:
        data = flood.apply_until(
            codes[name], lambda d: _reason(d).startswith("queued"), "queued on its share"
        )
        assert data["status"] == "pending", data
    response = _apply_raw(flood, codes[refused])
    assert response.status_code == 429, response.text
    assert "tenant_max_pending_orders = 4" in response.json()["msg"]
    assert int(response.headers["retry-after"]) > 0

    # A quiet tenant asking now is served at once, from what is left of the account's budget.
    quiet_code = codes_for(quiet, quiet_names)[quiet_names[0]]
    started = time.monotonic()
    data = quiet.apply_until_done(quiet_code, timeout=PROMPTLY_SECONDS, issuer=ISSUER)
    took = time.monotonic() - started
    assert data["status"] == "issued", data
    print(f"quota flood: the quiet tenant's order issued in {took:.2f} s")

    # Now the account's budget is spent: a third tenant waits too, told which limit and until
    # when (never failed).
    third_code = codes_for(third, third_names)[third_names[0]]
    assert third.apply(third_code, issuer=ISSUER)["status"] == "pending"
    data = third.apply_until(
        third_code,
        lambda d: "issuers.letsencrypt.new_orders_per_window" in _reason(d),
        "queued on the account's budget",
    )
    assert data["status"] == "pending" and "this order starts at" in _reason(data)
    response = _apply_raw(third, third_code)
    assert response.json()["msg"].startswith("pending, queued"), response.json()

    # The flood asking again for names it already has an order running for: joined, not new.
    again = codes_for(flood, [later[0]])[later[0]]
    assert flood.apply(again, issuer=ISSUER)["status"] == "pending"
    assert order_id_for_code(server, again) == order_id_for_code(server, codes[later[0]])
    assert query(server, "SELECT count(*) FROM orders") == [(len(first) + len(later) + 2,)]

    # What the CA saw: exactly the budget's worth of newOrders, never more.
    new_orders = [r for r in proxy.requests() if r.method == "POST" and r.path == NEW_ORDER]
    assert len(new_orders) == ACCOUNT_BUDGET, [r.path for r in new_orders]
    assert sum(proxy.created_orders().values()) == ACCOUNT_BUDGET
    waiting_states = query(server, "SELECT state, count(*) FROM orders GROUP BY state")
    assert dict(waiting_states) == {"issued": TENANT_SHARE + 1, "pending": 5}


def _until_states(
    server: object, codes: list[str], wanted: dict[str, int], timeout: float = 30
) -> dict[str, str]:
    """Wait until the orders of `codes` are in states counted as `wanted`: code → state."""
    from collections import Counter

    from tests.e2e.flow import order_states

    deadline = time.monotonic() + timeout
    while True:
        states = order_states(server, codes)  # type: ignore[arg-type]
        if Counter(states.values()) == Counter(wanted):
            return states
        assert time.monotonic() < deadline, f"orders never reached {wanted}: {states}"
        time.sleep(0.1)
