"""When a poll of an order reads its authorizations too (one request per name) and when the
order alone says enough: certok.orders.polling.authorizations_needed."""

from __future__ import annotations

import datetime as dt

import pytest

from certok.issuance import OrderInfo
from certok.orders.polling import AUTHZ_RECHECK_SECONDS, authorizations_needed
from certok.orders.rows import PresentedRecord

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
APEX = "https://ca.test/authz/1"
WILDCARD = "https://ca.test/authz/2"


def order(status: str, urls: tuple[str, ...] = (APEX, WILDCARD)) -> OrderInfo:
    return OrderInfo(
        url="https://ca.test/order/1",
        status=status,
        finalize_url="https://ca.test/order/1/finalize",
        certificate_url=None,
        authorization_urls=urls,
        authorizations=(),
        error=None,
        retry_after=None,
    )


def answered(seconds_ago: float | None) -> PresentedRecord:
    at = None if seconds_ago is None else NOW - dt.timedelta(seconds=seconds_ago)
    return PresentedRecord(value="v", created_at=NOW - dt.timedelta(seconds=30), answered_at=at)


def test_a_pending_order_whose_challenges_were_all_just_answered_is_polled_alone() -> None:
    presented = {APEX: answered(1), WILDCARD: answered(2)}
    assert not authorizations_needed(order("pending"), presented, NOW)


@pytest.mark.parametrize(
    "presented",
    [
        {},  # nothing presented yet: the challenges are still to be read
        {APEX: answered(1)},  # the wildcard's challenge is not presented
        {APEX: answered(1), WILDCARD: answered(None)},  # presented, waiting to be answered
        {APEX: answered(1), WILDCARD: answered(AUTHZ_RECHECK_SECONDS + 1)},  # a slow CA
    ],
    ids=["nothing-presented", "one-missing", "one-unanswered", "answer-too-old"],
)
def test_a_pending_order_with_work_left_or_old_answers_reads_its_authorizations(
    presented: dict[str, PresentedRecord],
) -> None:
    assert authorizations_needed(order("pending"), presented, NOW)


def test_a_pending_order_listing_no_authorizations_reads_them() -> None:
    assert authorizations_needed(order("pending", urls=()), {}, NOW)


def test_an_invalid_order_reads_them_for_the_reason() -> None:
    presented = {APEX: answered(1), WILDCARD: answered(1)}
    assert authorizations_needed(order("invalid"), presented, NOW)


@pytest.mark.parametrize("status", ["ready", "processing", "valid"])
def test_an_order_past_validation_needs_none(status: str) -> None:
    assert not authorizations_needed(order(status), {}, NOW)
