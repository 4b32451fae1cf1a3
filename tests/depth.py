"""How deep the property tests, fuzzers and chaos rounds go: CI's depth, or deep on demand.

``CERTOK_TEST_DEPTH`` chooses (``scripts/test --deep`` sets it to ``deep``):

- ``ci`` (the default): the depths CI runs, minutes for the whole suite;
- ``deep``: the tests marked ``deep`` run a hundred times deeper or more (the tenant-isolation
  state machine at 10,000 sequences, the DNS fuzzers at 10^6 examples, Schemathesis, the
  nonce-rejection and crash rounds), for hours; tests/conftest.py also loads the ``deep``
  Hypothesis profile (100x Hypothesis' default examples for tests that set none) and lifts
  the per-test timeout of the deep tests that do more work in one test (not of ``rounds``).

A test reads its depth with ``at_depth(ci, deep)``, so both numbers sit in the test.
"""

from __future__ import annotations

import os

import pytest

DEPTHS = ("ci", "deep")
DEPTH = os.environ.get("CERTOK_TEST_DEPTH", "").strip().lower() or "ci"
if DEPTH not in DEPTHS:
    raise RuntimeError(
        f"CERTOK_TEST_DEPTH={os.environ.get('CERTOK_TEST_DEPTH')!r} is not one of "
        f"{', '.join(DEPTHS)}: unset it for CI's depth, or set deep"
    )
DEEP = DEPTH == "deep"

# Hypothesis' own default, and the deep profile's: 100 times that.
CI_HYPOTHESIS_EXAMPLES = 100
DEEP_HYPOTHESIS_EXAMPLES = 10_000


def at_depth(ci: int, deep: int) -> int:
    """``ci`` at CI's depth, ``deep`` at the deep one."""
    return deep if DEEP else ci


def rounds(ci: int, deep: int) -> pytest.MarkDecorator:
    """Run a test ``ci`` times at CI's depth and ``deep`` times at the deep one, each round
    with fresh fixtures (a new certok, a new seed): ``@rounds(1, 10)`` on a test that takes
    a ``round_`` argument. Marks the test ``deep`` too; each round keeps the test's timeout,
    since it does what one CI round does."""
    count = at_depth(ci, deep)
    return pytest.mark.parametrize(
        "round_",
        [pytest.param(n, marks=pytest.mark.deep(rounds=True)) for n in range(1, count + 1)],
        ids=[f"round{n}" for n in range(1, count + 1)],
    )
