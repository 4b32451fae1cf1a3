"""What a step carries to the next (certok/orders/carried.py `snapshot_after`): the order as the
step's saves left it, or None where the next step must read the order itself."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from certok.orders.carried import HAS_RECORDS, UNSURE, snapshot_after
from certok.orders.rows import OrderSnapshot

_AT = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.UTC)
_STARTED = OrderSnapshot(
    id=7,
    tenant_id=3,
    issuer="letsencrypt",
    algorithm="ECC",
    challenge_type="dns",
    domains=["a.example.com"],
    acme_order_url="https://ca.test/order/1",
    acme_orders=1,
    has_key=True,
    csr_pem="CSR",
    attempts=0,
    reason=None,
    deadline_at=_AT + dt.timedelta(hours=1),
    created_at=_AT,
    has_records=True,
    hold_lease_for=2.0,
)


def test_the_columns_a_poll_saved_are_carried() -> None:
    written = {"attempts": 0, "next_attempt_at": _AT, HAS_RECORDS: False}
    assert snapshot_after(_STARTED, written) == dataclasses.replace(_STARTED, has_records=False)


def test_a_new_acme_orders_columns_are_carried_and_the_key_only_as_saved() -> None:
    fresh = dataclasses.replace(_STARTED, acme_order_url=None, has_key=False, csr_pem=None)
    written = {
        "acme_order_url": "https://ca.test/order/2",
        "acme_orders": 2,
        "key_encrypted": b"sealed",
        "csr_pem": "CSR2",
        HAS_RECORDS: True,
        "attempts": 0,
        "next_attempt_at": _AT,
    }
    assert snapshot_after(fresh, written) == dataclasses.replace(
        fresh,
        acme_order_url="https://ca.test/order/2",
        acme_orders=2,
        has_key=True,
        csr_pem="CSR2",
        has_records=True,
    )


@pytest.mark.parametrize(
    ("why", "written"),
    [
        # A held poll saved nothing: nothing has checked the lease since the last read.
        ("nothing saved", {}),
        ("only material presented", {HAS_RECORDS: True}),
        # A write may have committed unseen before the step failed.
        ("a failed step", {"attempts": 1, "reason": "r", UNSURE: True}),
        # The next step would make a new ACME order: it reads the order first.
        ("a start over", {"acme_order_url": None, "attempts": 1, HAS_RECORDS: False}),
        # The order's end, the lease handed back: a column a snapshot does not follow.
        ("the order ended", {"state": "issued", "attempts": 0}),
        ("the lease handed back", {"lease_owner": None, "next_attempt_at": _AT}),
    ],
)
def test_the_next_step_reads_the_order(why: str, written: dict[str, Any]) -> None:
    assert snapshot_after(_STARTED, written) is None, why
