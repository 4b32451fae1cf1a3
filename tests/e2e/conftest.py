"""Fixtures for the end-to-end tests: one rig per session, certok servers per test.

Without Pebble, unbound, NSD or nginx installed the whole e2e set is skipped with a note on
how to install them, except under CI (CI=true), where a missing tool is a failure: a green CI
run must never mean "the end-to-end tests did not run".
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.rig import Rig, missing_binaries
from tests.rig.certok_server import CertokServer
from tests.rig.fault_proxy import FaultProxy

_HERE = Path(__file__).parent
_INSTALL_HINT = (
    "apt-get install -y --no-install-recommends pebble unbound nsd nginx dnsutils "
    "(scripts/test installs them when run as root)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every test under tests/e2e is an e2e test, whether or not its module says so.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            # Resource warnings stay warnings here (pyproject's filterwarnings makes them
            # errors elsewhere): these tests drive the rig's subprocesses, pipes and sockets,
            # which the collector may finalise during a later test, so the warning would land
            # on whichever test runs then. Not yet audited one by one (issue 15's closing note).
            item.add_marker(pytest.mark.filterwarnings("default::ResourceWarning"))
            item.add_marker(
                pytest.mark.filterwarnings("default::pytest.PytestUnraisableExceptionWarning")
            )


@pytest.fixture(scope="session", autouse=True)
def _rig_tools_installed() -> None:
    missing = missing_binaries()
    if not missing:
        return
    message = f"end-to-end rig needs {', '.join(missing)}: {_INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def rig(_rig_tools_installed: None) -> Iterator[Rig]:
    """The running rig, shared by the session (start ~1 s).

    CERTOK_RIG_KEEP=1 keeps its runtime dir (configs and full logs) after the session.
    """
    with Rig(keep_runtime_dir=os.environ.get("CERTOK_RIG_KEEP") == "1") as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # A failed e2e test shows what Pebble, unbound, NSD and nginx were saying at the time.
    outcome = yield
    report = outcome.get_result()
    running = getattr(item, "funcargs", {}).get("rig")
    if report.failed and isinstance(running, Rig) and running.started:
        report.sections.append(("rig service logs", running.describe_logs(lines=25)))


@pytest.fixture
def customer_records(rig: Rig) -> Iterator[Callable[[list[str]], None]]:
    """`rig.set_customer_records`, with the base customer zone put back after the test."""
    yield rig.set_customer_records
    if rig.customer_records:
        rig.set_customer_records([])


@pytest.fixture
def certok_server(rig: Rig, tmp_path: Path) -> Iterator[Callable[..., CertokServer]]:
    """Factory: `certok_server(start=True, **settings)` → a CertokServer on the rig.

    Each call gets its own work dir (data, log) under the test's tmp_path; `settings` go to
    `CertokServer.env_for` (`apply_wait_seconds=1`, `api_port=rig.allocate_port("api2")`).
    Every server is stopped after the test, and its log tail is printed if the test failed.
    """
    servers: list[CertokServer] = []

    def make(*, start: bool = True, **settings: object) -> CertokServer:
        server = CertokServer.for_rig(rig, tmp_path / f"certok-{len(servers)}", **settings)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()
        # pytest shows captured output of failed tests only: this costs nothing on success.
        print(f"--- {server.log_path} ---\n{server.log_text()[-4000:]}")


@pytest.fixture
def fault_proxy(rig: Rig) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of the rig's plain Pebble, stopped after the test.

    Point a client at `fault_proxy.directory_url` (certok: `issuers__letsencrypt__directory=`);
    it trusts `rig.ca_bundle` like Pebble. The request log is printed if the test failed.
    """
    with FaultProxy.for_rig(rig) as proxy:
        yield proxy
        print("--- fault proxy request log ---")
        for record in proxy.requests():
            print(
                f"{record.method} {record.path} {record.action or '-'} {record.outcome} "
                f"{record.status}"
            )


@pytest.fixture
def cluster_rig() -> Iterator[Rig]:
    """A rig of the test's own for tests/e2e/cluster.py: its resolver's delegation for
    certok's zone is changed to name the nodes' DNS servers."""
    with Rig(certok_zone="cluster.svc.test") as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def _finalise_what_the_module_dropped() -> Iterator[None]:
    """Collect after each module, while its tests' warning filters (above) still apply: a
    pipe or socket dropped here would otherwise be finalised during some later test, or at
    the end of the session, where resource warnings are errors."""
    yield
    gc.collect()
