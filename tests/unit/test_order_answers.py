"""apply's issued answer put together directly is what a JSONResponse renders of
`order_data`, byte for byte, whatever the stored values hold."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite
from starlette.responses import JSONResponse

from certok.api.order_answers import (
    _time_text,
    encoded_issued_data,
    encoded_issued_row,
    order_data,
    stored_time_text,
)
from certok.crypto import SecretBox, generate_private_key, order_key_owner, private_key_to_pem
from certok.db.models.base import stored_utc
from certok.order_states import ISSUED
from certok.orders.service import OrderView, issued_key_pem, view_of_row
from tests.kit.certs import self_signed_pem

_TIMES = st.datetimes(
    min_value=dt.datetime(1000, 1, 1),
    max_value=dt.datetime(9999, 12, 31),
    timezones=st.just(dt.UTC),
)
_TEXT = st.text()  # any Unicode but lone surrogates: quotes, backslashes, controls, CJK


@given(
    issuer=_TEXT,
    subject=st.none() | _TEXT,
    domains=_TEXT,
    certificate=_TEXT,
    private_key=_TEXT,
    not_before=st.none() | _TIMES,
    not_after=st.none() | _TIMES,
    certificate_id=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    renew_at=st.none() | _TIMES,
)
def test_the_issued_answer_is_what_a_json_response_renders(
    issuer: str,
    subject: str | None,
    domains: str,
    certificate: str,
    private_key: str,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    certificate_id: int | None,
    renew_at: dt.datetime | None,
) -> None:
    view = OrderView(
        id=1,
        status=ISSUED,
        issuer=issuer,
        domains=domains,
        reason=None,
        subject=subject,
        not_before=not_before,
        not_after=not_after,
        certificate=certificate,
        private_key=private_key,
        certificate_id=certificate_id,
        renew_at=renew_at,
    )
    assert encoded_issued_data(view) == JSONResponse(order_data(view)).body


def test_a_typical_answer_reads_as_the_seed_shows_it() -> None:
    when = dt.datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=dt.UTC)
    view = OrderView(
        id=7,
        status=ISSUED,
        issuer="letsencrypt",
        domains="a.example.com,*.a.example.com",
        reason=None,
        subject="a.example.com",
        not_before=when,
        not_after=when,
        certificate="-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        private_key='-----BEGIN EC PRIVATE KEY-----\n"\\\n',
        certificate_id=42,
        renew_at=None,
    )
    assert encoded_issued_data(view) == (
        b'{"status":"issued","issuer":"letsencrypt","subject":"a.example.com",'
        b'"notBefore":"2026-03-04 05:06:07","notAfter":"2026-03-04 05:06:07",'
        b'"domains":"a.example.com,*.a.example.com",'
        b'"certificate":"-----BEGIN CERTIFICATE-----\\nMII\\n-----END CERTIFICATE-----\\n",'
        b'"privateKey":"-----BEGIN EC PRIVATE KEY-----\\n\\"\\\\\\n","id":42,"renewAt":null}'
    )


# A time as SQLite stores a DATETIME column ("%Y-%m-%d %H:%M:%S.%f"), read back `untyped`.
def _sqlite_stored(when: dt.datetime) -> str:
    dialect = sqlite.dialect()
    processor = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    return str(processor(when))


_NAIVE_TIMES = st.datetimes(min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31))
_KEY = generate_private_key("ECC")
_CERTIFICATE = self_signed_pem(_KEY, ["cn.example.com", "other.example.com"], serial=3)


@given(when=_NAIVE_TIMES)
def test_a_stored_time_reads_as_its_datetime_would(when: dt.datetime) -> None:
    # SQLite's text, cut without parsing it, and PostgreSQL's naive datetime alike.
    stored_text = _sqlite_stored(when)
    assert stored_time_text(stored_text) == _time_text(stored_utc(stored_text))
    assert stored_time_text(when) == _time_text(stored_utc(when))
    # Text in any other form is parsed, as before.
    other = when.isoformat()
    assert stored_time_text(other) == _time_text(stored_utc(other))
    assert stored_time_text(None) is None


@given(when=st.datetimes())
def test_a_naive_datetime_of_any_year_reads_as_its_aware_copy_would(when: dt.datetime) -> None:
    # PostgreSQL's naive UTC datetimes are written without an aware copy: the same text.
    assert stored_time_text(when) == _time_text(stored_utc(when))


@given(
    issuer=_TEXT,
    subject=st.none() | _TEXT,
    domains=_TEXT,
    not_before=st.none() | _NAIVE_TIMES,
    not_after=st.none() | _NAIVE_TIMES,
    certificate_id=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
    renew_at=st.none() | _NAIVE_TIMES,
    times_as_text=st.booleans(),
)
def test_an_issued_row_answers_as_its_view(
    issuer: str,
    subject: str | None,
    domains: str,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    certificate_id: int | None,
    renew_at: dt.datetime | None,
    times_as_text: bool,
) -> None:
    """apply's answer made from an issued order's row is its view's, byte for byte, with the
    times as SQLite's text or PostgreSQL's datetimes, and the subject kept or parsed."""
    box = SecretBox(b"k" * 32)

    def stored(when: dt.datetime | None) -> str | dt.datetime | None:
        return _sqlite_stored(when) if times_as_text and when is not None else when

    # The row as the driver gives it: attributes named as VIEW_COLUMNS are.
    row: Any = SimpleNamespace(
        id=9,
        state=ISSUED,
        issuer=issuer,
        domains=domains,
        reason=None,
        not_before=stored(not_before),
        not_after=stored(not_after),
        certificate_pem=_CERTIFICATE,
        subject=subject,
        key_encrypted=box.encrypt(private_key_to_pem(_KEY).encode(), order_key_owner(9)),
        certificate_id=certificate_id,
        renew_at=stored(renew_at),
    )
    key_pem = issued_key_pem(row, box)
    assert key_pem == private_key_to_pem(_KEY)
    assert encoded_issued_row(row, key_pem) == encoded_issued_data(view_of_row(row, box))
