"""Small pure parts of the agents: host ids, the renewal clock's offset, log lines."""

from __future__ import annotations

import datetime as dt

import pytest

from certok.agents.hosts import ManagedLine, host_uuid
from certok.agents.renewal import renewal_clock
from certok.clock import utcnow
from certok.errors import InvalidRequest
from certok.settings import Settings


@pytest.mark.parametrize(
    "raw", ["4C4C4544-0042-3510-8051-B4C04F384D32", " 0123456789abcdef0123456789abcdef\n"]
)
def test_host_ids_of_both_kinds_are_accepted_lowercased(raw: str) -> None:
    assert host_uuid(raw) == raw.strip().lower()


@pytest.mark.parametrize("raw", [None, "", "short", "../../etc", "a" * 65, "uuid with spaces"])
def test_other_host_ids_are_refused_saying_what_is_expected(raw: str | None) -> None:
    with pytest.raises(InvalidRequest) as refusal:
        host_uuid(raw)
    assert "httpsok-uuid" in refusal.value.message


def test_the_renewal_clock_is_shifted_only_when_asked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert renewal_clock(Settings(data_dir=tmp_path)) is utcnow
    shifted = renewal_clock(Settings(data_dir=tmp_path, clock_offset_seconds=86400))
    difference = shifted() - utcnow()
    assert dt.timedelta(hours=23) < difference <= dt.timedelta(days=1)


def test_a_line_is_what_the_agent_splits_on_commas() -> None:
    line = ManagedLine("0123abcd0123abcd", "/etc/nginx/ssl/a.pem", "/etc/nginx/ssl/a.key")
    assert line.render().split(",") == [
        "0123abcd0123abcd",
        "/etc/nginx/ssl/a.pem",
        "/etc/nginx/ssl/a.key",
    ]
