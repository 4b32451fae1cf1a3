"""SIGTERM while the CA holds a request: certok stops within seconds, and the order resumes.

The fault proxy holds certok's newOrder (a CA that does not answer). Before, `certok serve`
exited only when the request timed out (`acme_timeout_seconds`, 60 s here): Python's exit
waits for the worker's threads. Now it abandons the exchange after a short grace, and the
restarted certok carries the order on to issued.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.e2e.flow import User, check_issued, codes_for, delegate
from tests.rig import Rig
from tests.rig.fault_proxy import FaultProxy, Rule, stall

NEW_ORDER = r"^/order-plz"
# The grace for stuck threads is 2 s; the rest is the process's own stopping.
STOP_WITHIN_SECONDS = 5.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_while_the_ca_hangs_stops_within_seconds_and_the_order_resumes(  # type: ignore[no-untyped-def]
    rig: Rig, certok_server, customer_records, fault_proxy: FaultProxy, tmp_path, processes: int
) -> None:
    release = threading.Event()
    fault_proxy.add_rule(
        Rule(method="POST", path=NEW_ORDER, times=1, action=stall(90, until=release))
    )
    server = certok_server(
        apply_wait_seconds=0,
        acme_timeout_seconds=60,
        processes=processes,
        issuers__letsencrypt__directory=fault_proxy.directory_url,
    )
    user = User(server, server.create_tenant("acme-corp"))
    name = "www.customer.test"
    delegate(rig, customer_records, user.dv(name))
    code = codes_for(user, [name])[name]
    try:
        assert user.apply(code, issuer="letsencrypt")["status"] == "pending"
        fault_proxy.wait_for(NEW_ORDER, method="POST", timeout=30)
        assert server.pid is not None
        started = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        status = server.wait_exit(timeout=30)
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < STOP_WITHIN_SECONDS, f"certok took {took:.1f} s to stop"
    assert status == 0
    server.start()
    data = user.apply_until_done(code, timeout=60, issuer="letsencrypt")
    check_issued(rig, data, [name], "ECC", tmp_path)
