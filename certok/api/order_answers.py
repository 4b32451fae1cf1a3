"""What the GET API answers: a DV check's result, and an order's state or its certificate."""

from __future__ import annotations

import datetime as dt
import re
from json.encoder import encode_basestring
from typing import Any

from certok.db.models.base import stored_utc
from certok.order_states import FAILURE, ISSUED, PENDING
from certok.orders.quotas import QUEUED
from certok.orders.service import OrderView, issued_subject
from certok.verification.results import DvResult


def dv_data(result: DvResult) -> dict[str, Any]:
    items = []
    for item in result.items:
        entry: dict[str, Any] = {"domain": item.domain}
        if item.type is not None:
            entry.update(type=item.type, name=item.name, value=item.value)
        entry.update(valid=item.valid, cost=str(item.cost_ms))
        if item.detail:
            entry["detail"] = item.detail
        if item.code:
            entry["code"] = item.code
        items.append(entry)
    data: dict[str, Any] = {
        "code": result.code,
        "type": result.type,
        "items": items,
        "valid": result.valid,
        "cost": str(result.cost_ms),
    }
    if result.nginx is not None:
        data["nginx"] = result.nginx
    return data


def dv_message(result: DvResult) -> str:
    if result.valid:
        return "success"
    return "not verified yet: " + "; ".join(dict.fromkeys(result.problems))


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else _time_text(value)


def _time_text(value: dt.datetime) -> str:
    # "YYYY-MM-DD HH:MM:SS", as strftime("%Y-%m-%d %H:%M:%S") writes any year from 1000, at a
    # fraction of its cost (apply renders three per issued answer it did not have cached).
    return value.isoformat(" ", "seconds")[:19]


def order_data(view: OrderView) -> dict[str, Any]:
    if view.status == ISSUED:
        return {
            "status": ISSUED,
            "issuer": view.issuer,
            "subject": view.subject,
            "notBefore": _time(view.not_before),
            "notAfter": _time(view.not_after),
            "domains": view.domains,
            "certificate": view.certificate,
            "privateKey": view.private_key,
            # Beyond the seed: the certificate record (GET /v1/cert/{id}) and when to renew.
            "id": view.certificate_id,
            "renewAt": _time(view.renew_at),
        }
    data: dict[str, Any] = {"status": view.status}
    if view.reason:
        data["reason"] = view.reason
    return data


def encoded_issued_data(view: OrderView) -> bytes:
    """`order_data(view)` of an issued order as JSON, byte for byte what a JSONResponse makes
    of it (tests/unit/test_order_answers.py), put together directly: apply renders one for
    every poll its cache of issued answers misses, and a whole `json.dumps` of the dict costs
    more than its few string escapes."""
    return _encoded_issued(
        view.issuer,
        view.subject,
        _time(view.not_before),
        _time(view.not_after),
        view.domains,
        view.certificate,
        view.private_key,
        view.certificate_id,
        _time(view.renew_at),
    )


def encoded_issued_row(order: Any, private_key: str) -> bytes:
    """`encoded_issued_data(view_of_row(order, box))` for an issued order read with
    `VIEW_COLUMNS` (`private_key`: its `issued_key_pem`), without the view in between: apply
    renders one for each poll its cache misses, and the view's three datetimes, made from
    the stored times only to be written back as text, cost more than the rest of the
    answer."""
    return _encoded_issued(
        order.issuer,
        issued_subject(order),
        stored_time_text(order.not_before),
        stored_time_text(order.not_after),
        order.domains,
        order.certificate_pem,
        private_key,
        order.certificate_id,
        stored_time_text(order.renew_at),
    )


def stored_time_text(value: str | dt.datetime | None) -> str | None:
    """`_time(stored_utc(value))` for a time read `untyped`: SQLite's stored text, as
    SQLAlchemy writes it, is cut to the seconds without parsing it, and PostgreSQL's naive
    UTC datetime is written as it is, without making an aware copy of it first."""
    if isinstance(value, str):
        if _SQLITE_STORED_TIME.fullmatch(value):
            return value[:19]
    elif isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.isoformat(" ", "seconds")
    return _time(stored_utc(value))


# SQLAlchemy's SQLite DATETIME storage format ("%Y-%m-%d %H:%M:%S.%f"), and without the
# fraction; anything else goes through `stored_utc` as before.
_SQLITE_STORED_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?"
)


def _encoded_issued(
    issuer: str,
    subject: str | None,
    not_before: str | None,
    not_after: str | None,
    domains: str,
    certificate: str | None,
    private_key: str | None,
    certificate_id: int | None,
    renew_at: str | None,
) -> bytes:
    return b"".join(
        (
            b'{"status":"issued","issuer":',
            _json_string(issuer),
            b',"subject":',
            _json_string(subject),
            b',"notBefore":',
            _json_string(not_before),
            b',"notAfter":',
            _json_string(not_after),
            b',"domains":',
            _json_string(domains),
            b',"certificate":',
            _json_string(certificate),
            b',"privateKey":',
            _json_string(private_key),
            b',"id":',
            b"null" if certificate_id is None else b"%d" % certificate_id,
            b',"renewAt":',
            _json_string(renew_at),
            b"}",
        )
    )


def _json_string(value: str | None) -> bytes:
    # encode_basestring is what json.dumps escapes a string with when ensure_ascii=False.
    return b"null" if value is None else encode_basestring(value).encode()


def order_message(view: OrderView) -> str:
    if view.status == FAILURE:
        return f"certificate order failed: {view.reason}"
    if view.status == PENDING:
        if view.reason and view.reason.startswith(QUEUED):
            return f"pending, {view.reason}"
        return "pending: ask again in about 10 seconds"
    return "success"
