"""Waiting for something to happen: poll until it has, with a deadline a loaded machine meets.

A test that sleeps a fixed time and then looks is slow when the machine is quiet and wrong when
it is busy; a test polls instead, and the deadline only bounds how long a failure takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_SECONDS = 0.01


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """True as soon as `condition()` is; False when it still is not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_SECONDS)
    return condition()
