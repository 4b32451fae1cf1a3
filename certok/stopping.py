"""Stopping within seconds even while a CA exchange hangs.

The worker runs each order's blocking step (a request to the CA, bounded only by
`acme_timeout_seconds`) in a thread pool. On SIGTERM the event loop stops and the pool is
shut down without waiting, but Python's exit still joins every pool thread: a CA that holds
a request kept certok alive for up to `acme_timeout_seconds`. Nothing is lost by not waiting:
the driver never holds a database transaction across a CA exchange, the order's state is
saved after every exchange, and the lease this node held is released at its next start, so
the order resumes where its last save left it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)

# How long threads still at work after the event loop ended get to finish by themselves.
STOP_GRACE_SECONDS = 2.0


def exit_abandoning_stuck_threads(status: int, grace: float = STOP_GRACE_SECONDS) -> None:
    """Return once every non-daemon thread has ended, or end the process with `status` if
    some are still running after `grace` seconds (stuck in an exchange with a CA)."""
    deadline = time.monotonic() + grace
    for thread in _others():
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in _others() if thread.is_alive()]
    if not stuck:
        return
    log.warning(
        "stopping without waiting for %d thread(s) still in an exchange (%s): their orders "
        "resume at the next start",
        len(stuck),
        ", ".join(sorted(stuck)[:5]),
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _others() -> list[threading.Thread]:
    current = threading.current_thread()
    return [t for t in threading.enumerate() if t is not current and not t.daemon and t.is_alive()]
