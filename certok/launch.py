"""`certok serve`: one process running every part (`certok.runtime`), or a supervisor
starting one process per part (`certok.supervisor`)."""

from __future__ import annotations

import contextlib

from certok.runtime import run_event_loop, serve
from certok.settings import Settings
from certok.startup import log_start
from certok.stopping import exit_abandoning_stuck_threads
from certok.supervisor import supervise


def run_server(settings: Settings) -> int:
    """`certok serve`: returns the process exit status."""
    log_start(settings)
    if settings.processes > 1:
        return supervise(settings)
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(serve(settings))
    exit_abandoning_stuck_threads(0)
    return 0
