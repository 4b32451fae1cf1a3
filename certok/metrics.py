"""Prometheus metrics: what certok counts, and the `/metrics` page that shows it.

Names follow Prometheus's conventions (base units, counters end in ``_total``) and
cert-manager's where they overlap; labels come from closed sets only: never a domain, an
address or a token (docs/operations.md, Metrics).

Three kinds of source, so that a new metric is a few lines wherever its data lives:

- **counters and histograms** below, incremented where things happen (orders, ACME requests,
  HTTP-01 responder hits, resolver failures);
- **cheap counts** kept by hot paths as plain ints (the DNS server's queries by type and
  rcode: a dict increment per query, no lock) and folded into metric families at scrape time
  by a registered callable (``add_scrape_source``);
- **database gauges** (``DatabaseGauge``): a query run at scrape time, e.g. tenants by status
  or orders by state; certificates by status and their soonest expiry, webhook deliveries and
  agents' last contact plug in the same way.

With ``processes`` ≥ 2 the supervisor calls ``enable_multiprocess`` before it forks: every
process then writes its counters to files in a private directory (prometheus_client's
multiprocess mode) and the one process serving ``/metrics`` (the DNS process) adds them up.
Process metrics (CPU, memory, open files) come per process, labelled by pid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy.orm import Session, sessionmaker

from certok.order_states import ISSUED

log = logging.getLogger(__name__)

# --- counted where it happens ------------------------------------------------------------------

ORDERS = Counter(
    "certok_orders",
    "Orders finished, by issuer, result (issued, failed) and reason (an ACME error type, "
    "deadline, ownership or other; none when issued).",
    ["issuer", "result", "reason"],
)
ORDER_DURATION = Histogram(
    "certok_order_duration_seconds",
    "Time from an order's creation to its end (issued or failed).",
    ["issuer", "result"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400),
)
ACME_REQUESTS = Counter(
    "certok_acme_requests",
    "HTTP requests to ACME CAs, by issuer, endpoint (newOrder, finalize, ...) and status code "
    "(error: no answer).",
    ["issuer", "endpoint", "status"],
)
ACME_REQUEST_DURATION = Histogram(
    "certok_acme_request_duration_seconds",
    "Duration of HTTP requests to ACME CAs.",
    ["issuer", "endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP01_RESPONSES = Counter(
    "certok_http01_responder_requests",
    "Requests to the HTTP-01 responder (/v1/dv/...), by result (found, not_found).",
    ["result"],
)
RESOLVER_FAILURES = Counter(
    "certok_resolver_failures",
    "Lookups the configured resolvers could not answer (timeout, SERVFAIL, unreachable), by "
    "what was being checked (dns: CNAME delegation; http: a host's addresses).",
    ["check"],
)
RESOLVER_OUTAGE = Gauge(
    "certok_resolver_outage",
    "1 while the configured resolvers fail every lookup (an outage), else 0.",
    ["check"],
    multiprocess_mode="max",
)

# RFC 8555 §6.7 error types: the only ACME words a `reason` label may carry.
_ACME_ERROR_TYPES = frozenset(
    (
        *("accountDoesNotExist", "alreadyRevoked", "badCSR", "badNonce", "badPublicKey"),
        *("badRevocationReason", "badSignatureAlgorithm", "caa", "compound", "connection"),
        *("dns", "externalAccountRequired", "incorrectResponse", "invalidContact"),
        *("malformed", "orderNotReady", "rateLimited", "rejectedIdentifier", "serverInternal"),
        *("tls", "unauthorized", "unsupportedContact", "unsupportedIdentifier"),
        "userActionRequired",
    )
)
_ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"


def initialise(issuers: Iterable[str]) -> None:
    """Create the series known in advance at 0, so they show before their first event (with
    processes ≥ 2 a series appears only once some process has one)."""
    for issuer in issuers:
        ORDERS.labels(issuer, ISSUED, "none")
        ORDER_DURATION.labels(issuer, ISSUED)
    for check in ("dns", "http"):
        RESOLVER_FAILURES.labels(check)
    for result in ("found", "not_found"):
        HTTP01_RESPONSES.labels(result)


def failure_reason(text: str | None) -> str:
    """An order's failure text as a label from a closed set."""
    if not text:
        return "other"
    if text.startswith("gave up at the order deadline"):
        return "deadline"
    head = text.removeprefix(_ACME_ERROR_PREFIX).split(":", 1)[0].strip()
    if head in _ACME_ERROR_TYPES:
        return head
    if "delegated" in text or "CNAME" in text:
        return "ownership"
    return "other"


def order_finished(issuer: str, issued: bool, reason: str | None, seconds: float) -> None:
    result = ISSUED if issued else "failed"
    ORDERS.labels(issuer, result, "none" if issued else failure_reason(reason)).inc()
    ORDER_DURATION.labels(issuer, result).observe(max(0.0, seconds))


def acme_endpoint(url: str, directory: dict[str, str] | None = None) -> str:
    """The ACME resource a URL names, as a label (never the URL: it holds order ids)."""
    if directory:
        for name, value in directory.items():
            if value == url:
                return name
    path = url.lower().split("://", 1)[-1].partition("/")[2]
    for word, endpoint in (
        ("finalize", "finalize"),
        ("renewal", "renewalInfo"),
        ("authz", "authz"),
        ("chal", "challenge"),
        ("cert", "certificate"),
        ("nonce", "newNonce"),
        ("new-order", "newOrder"),
        ("order", "order"),
        ("acct", "account"),
        ("account", "account"),
        ("directory", "directory"),
    ):
        if word in path:
            return endpoint
    return "other"


# --- counted cheaply, read at scrape time ------------------------------------------------------

ScrapeSource = Callable[[], Iterable[Metric]]
_scrape_sources: list[ScrapeSource] = []


def add_scrape_source(source: ScrapeSource) -> Callable[[], None]:
    """Register a callable yielding metric families at each scrape; returns its remover."""
    _scrape_sources.append(source)
    return lambda: _scrape_sources.remove(source) if source in _scrape_sources else None


def counter_family(
    name: str, documentation: str, labels: Sequence[str], counts: dict[tuple[str, ...], int]
) -> CounterMetricFamily:
    """Plain int counts (label values → count) as a counter family."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for label_values, count in sorted(counts.items()):
        family.add_metric(list(label_values), count)
    return family


@dataclass(frozen=True)
class DatabaseGauge:
    """A gauge computed by a query at scrape time: rows of (label values..., value)."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    query: Callable[[Session], Iterable[tuple[Any, ...]]]

    def collect(self, session: Session) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for row in self.query(session):
            *label_values, value = row
            family.add_metric([str(v) for v in label_values], float(value))
        return family


# --- the page ----------------------------------------------------------------------------------

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(directory: Path) -> None:
    """Every process forked after this writes its metrics under ``directory`` (must be private
    and empty). Call before any labelled metric is used in this process."""
    directory.mkdir(mode=0o700, exist_ok=True)
    os.environ[_MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()


def process_exited(pid: int) -> None:
    """Forget a dead process's live gauges (its counters keep counting in the total)."""
    if os.environ.get(_MULTIPROC_ENV):
        mark_process_dead(pid)


class MetricsPage:
    """Renders ``/metrics``: counters of every process, scrape sources, database gauges."""

    def __init__(
        self,
        sessions: sessionmaker[Session] | None = None,
        database_gauges: Sequence[DatabaseGauge] = (),
    ) -> None:
        self._sessions = sessions
        self._database_gauges = list(database_gauges)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._multiprocess_dir = os.environ.get(_MULTIPROC_ENV)
        if self._multiprocess_dir:
            self._counted = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self._counted, self._multiprocess_dir)
        else:
            self._counted = REGISTRY  # this process's metrics and its process collector

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        """The page (blocking: database gauges query; run it in a thread)."""
        return generate_latest(self._counted) + generate_latest(self._registry)

    def collect(self) -> Iterable[Metric]:
        for source in list(_scrape_sources):
            try:
                yield from source()
            except Exception:
                log.exception("a metrics source failed; its metrics are left out of this scrape")
        if self._database_gauges and self._sessions is not None:
            started = time.perf_counter()
            try:
                with self._sessions() as session:
                    families = [gauge.collect(session) for gauge in self._database_gauges]
            except Exception as exc:
                log.warning("metrics: database gauges left out (%s: %s)", type(exc).__name__, exc)
            else:
                yield from families
            scrape = GaugeMetricFamily(
                "certok_metrics_database_scrape_seconds",
                "Time the database gauges of this scrape took.",
            )
            scrape.add_metric([], time.perf_counter() - started)
            yield scrape
        if self._multiprocess_dir:
            yield from _process_families(self._multiprocess_dir)


def _process_families(directory: str) -> Iterable[Metric]:
    """process_* metrics of each live certok process (pids from the multiprocess files)."""
    pids = set()
    for path in Path(directory).glob("*.db"):
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit() and Path(f"/proc/{tail}").exists():
            pids.add(int(tail))
    pids.add(os.getpid())
    merged: dict[str, Metric] = {}
    for pid in sorted(pids):
        collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
        for family in collector.collect():
            target = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                target.samples.append(sample._replace(labels={**sample.labels, "pid": str(pid)}))
    yield from merged.values()


def metrics_app(page: MetricsPage) -> Callable[..., Any]:
    """An ASGI app serving ``GET /metrics`` (and 404 elsewhere) for a listener of its own."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            body, status, kind = b"only GET /metrics here\n", 404, b"text/plain"
        else:
            body = await asyncio.to_thread(page.render)
            status, kind = 200, page.content_type.encode()
        headers = [(b"content-type", kind), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return app
