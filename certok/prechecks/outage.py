"""Resolver outages: told apart from "not delegated", logged once, counted.

When certok's configured resolvers fail (time out, SERVFAIL, unreachable) a pre-check cannot
say anything about the customer's DNS. The tenant is told it is certok's side (an item
``code`` of its own in ``/v1/cert/dv``); the operator gets one WARNING when an outage starts
and one INFO line when lookups work again, not a line per request; and
``certok_resolver_failures_total`` / ``certok_resolver_outage`` show it in metrics.
"""

from __future__ import annotations

import logging
import threading

from certok import metrics

log = logging.getLogger("certok.resolvers")

# The dv item code of a check the resolvers could not answer.
RESOLVER_UNAVAILABLE = "resolverUnavailable"


def unavailable_detail(what: str, reason: str) -> str:
    return (
        f"certok's DNS resolvers could not look up {what} ({reason}): this is a problem on "
        "certok's side, not in your DNS; retry in a minute (the operator has been warned)"
    )


class ResolverWatch:
    """The outage state of one kind of check (``dns``: CNAME lookups; ``http``: addresses)."""

    def __init__(self, check: str, resolvers: list[str]) -> None:
        self._check = check
        self._resolvers = ", ".join(resolvers) or "(none)"
        self._lock = threading.Lock()
        self._failing = False

    @property
    def failing(self) -> bool:
        return self._failing

    def failed(self, reason: str) -> None:
        metrics.RESOLVER_FAILURES.labels(self._check).inc()
        with self._lock:
            if self._failing:
                return
            self._failing = True
        metrics.RESOLVER_OUTAGE.labels(self._check).set(1)
        log.warning(
            "resolver outage: lookups for %s checks fail (%s); resolvers: %s; dv answers "
            "%s until they work again (check the resolvers setting and that they run)",
            self._check,
            reason,
            self._resolvers,
            RESOLVER_UNAVAILABLE,
        )

    def answered(self) -> None:
        if not self._failing:  # the common case: one attribute read, no lock
            return
        with self._lock:
            if not self._failing:
                return
            self._failing = False
        metrics.RESOLVER_OUTAGE.labels(self._check).set(0)
        log.info("resolver outage over: lookups for %s checks answer again", self._check)
