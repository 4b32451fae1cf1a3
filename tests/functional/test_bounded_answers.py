"""What the API repeats back and how often the public responder answers one client: bounded
(issue 14). The real app in-process on a real database."""

from __future__ import annotations

from tests.functional.test_api import ApiHarness, api, assert_error

__all__ = ["api"]  # the fixture, imported for pytest


def test_an_unknown_code_is_echoed_at_most_64_characters(api: ApiHarness) -> None:
    sent = "c0de" * 16_000  # 64,000 characters
    answer = api.get("/v1/cert/apply", code=sent)
    assert_error(answer, 404, "not found", "/v1/cert/dv")
    msg = answer.json()["msg"]
    assert sent[:64] + "…" in msg
    assert sent[:65] not in msg
    assert len(answer.content) < 400
    # a code of ordinary length is still repeated whole, so a typo can be recognised
    assert "'0123456789abcdef'" in api.get("/v1/cert/apply", code="0123456789abcdef").json()["msg"]
