"""apply's issued answer put together directly is what a JSONResponse renders of
`order_data`, byte for byte, whatever the stored values hold."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from certok.api.order_answers import encoded_issued_data, order_data
from certok.order_states import ISSUED
from certok.orders.service import OrderView

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
