"""An order's end wakes the delivery worker only when it queued deliveries, or when unknown."""

from __future__ import annotations

from certok.order_states import ISSUED
from certok.orders.finished_row import FinishedRow
from certok.runtime import _and_wake


def _row(queued: int | None) -> FinishedRow:
    return FinishedRow(1, ISSUED, "letsencrypt", "a.test", None, deliveries_queued=queued)


def test_the_delivery_worker_is_woken_when_the_end_queued_deliveries_or_may_have() -> None:
    told: list[tuple[int, FinishedRow | None]] = []
    wakes: list[int] = []
    on_finished = _and_wake(
        lambda order_id, row: told.append((order_id, row)), lambda: wakes.append(1)
    )

    on_finished(1, _row(0))
    assert (len(told), len(wakes)) == (1, 0)  # nothing queued: no claim to make

    on_finished(1, _row(2))
    assert (len(told), len(wakes)) == (2, 1)

    on_finished(1, _row(None))  # the save did not say
    on_finished(1, None)  # another process's save ended it
    assert (len(told), len(wakes)) == (4, 3)
