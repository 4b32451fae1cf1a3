"""What the GET API answers: a DV check's result, and an order's state or its certificate."""

from __future__ import annotations

import datetime as dt
from json.encoder import encode_basestring
from typing import Any

from certok.order_states import FAILURE, ISSUED, PENDING
from certok.orders.quotas import QUEUED
from certok.orders.service import OrderView
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
    return b"".join(
        (
            b'{"status":"issued","issuer":',
            _json_string(view.issuer),
            b',"subject":',
            _json_string(view.subject),
            b',"notBefore":',
            _json_time(view.not_before),
            b',"notAfter":',
            _json_time(view.not_after),
            b',"domains":',
            _json_string(view.domains),
            b',"certificate":',
            _json_string(view.certificate),
            b',"privateKey":',
            _json_string(view.private_key),
            b',"id":',
            b"null" if view.certificate_id is None else b"%d" % view.certificate_id,
            b',"renewAt":',
            _json_time(view.renew_at),
            b"}",
        )
    )


def _json_string(value: str | None) -> bytes:
    # encode_basestring is what json.dumps escapes a string with when ensure_ascii=False.
    return b"null" if value is None else encode_basestring(value).encode()


def _json_time(value: dt.datetime | None) -> bytes:
    return b"null" if value is None else b'"%s"' % _time_text(value).encode()


def order_message(view: OrderView) -> str:
    if view.status == FAILURE:
        return f"certificate order failed: {view.reason}"
    if view.status == PENDING:
        if view.reason and view.reason.startswith(QUEUED):
            return f"pending, {view.reason}"
        return "pending: ask again in about 10 seconds"
    return "success"
