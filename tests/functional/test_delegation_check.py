"""The delegation pre-check against real DNS servers on loopback.

First against a small authoritative test server (tests/functional/dnsfake_server.py) used
directly as the resolver, then through a real unbound recursive resolver in front of it, the
way the CA's resolver will see the customer's zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import dns.asyncresolver
import dns.nameserver
import dns.resolver
import pytest

from certok.errors import ConfigurationError
from certok.prechecks.delegation import (
    DelegationResult,
    check_delegation,
    check_delegations,
    check_delegations_on,
)
from certok.prechecks.resolver import make_blocking_resolver, make_resolver, parse_resolver_address
from tests.functional.dnsfake_server import FakeNameserver
from tests.kit.dns import CERTOK_ZONE
from tests.kit.ports import free_port
from tests.kit.unbound import running_unbound

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")

CUSTOMER = "customer.test"
ELSEWHERE = "elsewhere.test"  # served by the fake, but not stubbed in unbound: REFUSED there


def label(name: str) -> str:
    return f"{name}-label.{CERTOK_ZONE}"


def challenge(prefix: str) -> str:
    return f"_acme-challenge.{prefix}.{CUSTOMER}"


LONG_CHAIN = {challenge("long"): f"l1.{CUSTOMER}"} | {
    f"l{i}.{CUSTOMER}": f"l{i + 1}.{CUSTOMER}" for i in range(1, 9)
}
LONG_CHAIN[f"l9.{CUSTOMER}"] = label("long")  # 10 CNAMEs in all

RECORDS = {
    challenge("good"): label("good"),
    challenge("wrong"): label("someone-else"),
    challenge("two"): f"hop.{CUSTOMER}",
    f"hop.{CUSTOMER}": label("two"),
    challenge("twowrong"): f"hop2.{CUSTOMER}",
    f"hop2.{CUSTOMER}": f"dangling.{CUSTOMER}",
    challenge("loop"): f"loop-a.{CUSTOMER}",
    f"loop-a.{CUSTOMER}": f"loop-b.{CUSTOMER}",
    f"loop-b.{CUSTOMER}": f"loop-a.{CUSTOMER}",
    challenge("outside"): f"target.{ELSEWHERE}",
    challenge("midfail"): f"broken-target.{ELSEWHERE}",
    challenge("dup"): label("dup"),
    **LONG_CHAIN,
}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def on_threads(
    items: list[tuple[str, str]], resolver: dns.resolver.Resolver
) -> list[DelegationResult]:
    """check_delegations_on, as the API runs it (on its lookup threads)."""
    with ThreadPoolExecutor(4) as executor:
        return run(check_delegations_on(executor, items, resolver))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeNameserver]:
    with FakeNameserver(
        zones=[CUSTOMER, CERTOK_ZONE, ELSEWHERE],
        cnames=RECORDS,
        existing=[challenge("txtonly"), label("good"), label("two")],
        servfail=[challenge("broken"), f"broken-target.{ELSEWHERE}"],
    ) as server:
        yield server


@pytest.fixture(scope="module")
def direct(fake: FakeNameserver) -> dns.resolver.Resolver:
    return make_blocking_resolver([f"127.0.0.1:{fake.port}"], timeout=2.0)


def check(resolver: dns.resolver.Resolver, prefix: str, **kwargs: int) -> DelegationResult:
    return check_delegation(challenge(prefix), label(prefix), resolver, **kwargs)


# --- resolver configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        (" 127.0.0.2:53 ", ("127.0.0.2", 53)),
        ("::1", ("::1", 53)),
        ("[::1]:53", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[::1]", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
    ],
)
def test_parse_resolver_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_resolver_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dns.google",
        "dns.google:53",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:dns",
        "[127.0.0.1]:53",
        "[::1]53",
        "[::1]:",
        "[::1",
        "1.2.3",
    ],
)
def test_parse_resolver_address_refuses(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_resolver_address(text)
    assert repr(text) in caught.value.message
    assert "like 127.0.0.1" in caught.value.message


FACTORIES = pytest.mark.parametrize(
    "factory", [make_resolver, make_blocking_resolver], ids=["asyncio", "blocking"]
)


@FACTORIES
def test_make_resolver_uses_only_the_given_servers(factory: Any) -> None:
    resolver = factory(["127.0.0.1:5353", "[::1]"], timeout=1.5)
    servers = resolver.nameservers
    assert all(isinstance(s, dns.nameserver.Do53Nameserver) for s in servers)
    assert [(s.address, s.port) for s in servers] == [("127.0.0.1", 5353), ("::1", 53)]  # type: ignore[union-attr]
    assert resolver.lifetime == 1.5
    assert resolver.timeout <= 1.5 / 2
    assert list(resolver.search) == []
    assert resolver.use_search_by_default is False
    assert resolver.edns == 0
    assert resolver.payload == 1232


@FACTORIES
def test_make_resolver_refuses_an_empty_list(factory: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        factory([], timeout=1.0)
    assert "CERTOK_RESOLVERS" in caught.value.message


# --- against the authoritative test server ---------------------------------------------------


def test_correct_cname_is_valid(direct: dns.resolver.Resolver) -> None:
    result = check(direct, "good")
    assert result.valid
    assert result.name == challenge("good")
    assert result.expected == label("good")
    assert result.found == label("good")
    assert "in place" in result.detail
    assert 0 <= result.cost_ms < 2000


def test_names_compare_case_and_trailing_dot_insensitively(
    direct: dns.resolver.Resolver,
) -> None:
    result = check_delegation(challenge("good").upper() + ".", label("good").upper() + ".", direct)
    assert result.valid
    assert result.name == challenge("good")
    assert result.found == label("good")


def test_no_record_says_add_it(direct: dns.resolver.Resolver) -> None:
    result = check(direct, "missing")
    assert not result.valid
    assert result.found is None
    assert result.detail.startswith(f"add _acme-challenge.missing CNAME {label('missing')}.")
    assert CUSTOMER in result.detail


def test_name_without_cname_says_add_it(
    fake: FakeNameserver, direct: dns.resolver.Resolver
) -> None:
    result = check(direct, "txtonly")  # the name exists (NODATA for CNAME)
    assert not result.valid
    assert result.found is None
    assert result.detail.startswith(f"add _acme-challenge.txtonly CNAME {label('txtonly')}.")
    assert fake.queries_for(challenge("txtonly")) == ["CNAME"]


def test_cname_to_another_label_names_what_it_found(direct: dns.resolver.Resolver) -> None:
    result = check(direct, "wrong")
    assert not result.valid
    assert result.found == label("someone-else")
    assert (
        f"_acme-challenge.wrong points to {label('someone-else')}., expected {label('wrong')}."
        in result.detail
    )


def test_two_hop_chain_to_the_target_is_valid(
    fake: FakeNameserver, direct: dns.resolver.Resolver
) -> None:
    result = check(direct, "two")
    assert result.valid
    assert result.found == label("two")
    assert f"leads to {label('two')}. via hop.{CUSTOMER}." in result.detail
    # walked hop by hop with CNAME queries; the target itself is never queried
    assert fake.queries_for(challenge("two")) == ["CNAME"]
    assert fake.queries_for(f"hop.{CUSTOMER}") == ["CNAME"]
    assert fake.queries_for(label("two")) == []


def test_two_hop_chain_elsewhere_names_the_end_and_the_way(
    direct: dns.resolver.Resolver,
) -> None:
    result = check(direct, "twowrong")
    assert not result.valid
    assert result.found == f"dangling.{CUSTOMER}"
    assert f"points to dangling.{CUSTOMER}. via hop2.{CUSTOMER}." in result.detail


def test_loop_is_invalid(direct: dns.resolver.Resolver) -> None:
    result = check(direct, "loop")
    assert not result.valid
    assert "loops" in result.detail
    assert f"loop-a.{CUSTOMER}. -> loop-b.{CUSTOMER}. -> loop-a.{CUSTOMER}." in result.detail


def test_chain_longer_than_the_limit_is_invalid(direct: dns.resolver.Resolver) -> None:
    result = check(direct, "long")  # 10 CNAMEs, default limit 8
    assert not result.valid
    assert "longer than 8" in result.detail
    assert check(direct, "long", max_chain=10).valid
    assert not check(direct, "long", max_chain=9).valid


def test_servfail_says_lookup_failed_and_retry(direct: dns.resolver.Resolver) -> None:
    result = check(direct, "broken")
    assert not result.valid
    assert result.found is None
    assert "failed" in result.detail
    assert "SERVFAIL" in result.detail
    assert "retry" in result.detail


def test_failure_midway_names_the_target_found_so_far(
    direct: dns.resolver.Resolver,
) -> None:
    result = check(direct, "midfail")  # the first hop resolves, the second SERVFAILs
    assert not result.valid
    assert result.found == f"broken-target.{ELSEWHERE}"
    assert f"points to broken-target.{ELSEWHERE}., expected {label('midfail')}." in result.detail
    assert "SERVFAIL" in result.detail
    assert "retry" in result.detail


def test_chain_already_in_the_answer_is_used() -> None:
    chain = {challenge("chased"): f"hop.{CUSTOMER}", f"hop.{CUSTOMER}": label("chased")}
    with FakeNameserver(zones=[CUSTOMER, CERTOK_ZONE], cnames=chain, chase=True) as server:
        resolver = make_blocking_resolver([f"127.0.0.1:{server.port}"], timeout=2.0)
        result = check(resolver, "chased")
        assert result.valid
        assert result.found == label("chased")
        # one query: the second hop came with the first answer
        assert server.queries == [(challenge("chased"), "CNAME")]


PREFIXES = ["good", "wrong", "two", "twowrong", "loop", "outside", "midfail", "long", "txtonly",
            "nothing", "broken"]  # fmt: skip


class _NoDnspython(dns.resolver.Resolver):
    def resolve(self, *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        raise AssertionError(f"dnspython's resolver was asked: {args}")


def test_common_answers_are_read_without_dnspythons_resolver(fake: FakeNameserver) -> None:
    resolver = _NoDnspython(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", fake.port)]
    resolver.lifetime = resolver.timeout = 2.0
    assert check(resolver, "good").valid
    assert check(resolver, "two").found == label("two")
    assert check(resolver, "wrong").found == label("someone-else")
    assert check(resolver, "txtonly").found is None  # NODATA
    assert check(resolver, "nothing").found is None  # NXDOMAIN
    with pytest.raises(AssertionError, match="dnspython's resolver was asked"):
        check(resolver, "broken")  # SERVFAIL: dnspython's resolver says what failed


@pytest.mark.parametrize("prefix", PREFIXES)
def test_results_are_the_same_as_through_dnspython_alone(
    prefix: str, direct: dns.resolver.Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean = check(direct, prefix)
    monkeypatch.setattr("certok.prechecks.delegation.lookup_aliases", lambda *args: None)
    through_dnspython = check(direct, prefix)
    assert dataclasses.replace(lean, cost_ms=0) == dataclasses.replace(through_dnspython, cost_ms=0)


# The timed tests below use lookups of seconds, so that a second's delay on a busy machine
# cannot make a right answer look like a wrong one: what they tell apart (one wait or two, four
# lookups side by side or one after another) differs by a whole lookup or more.
LIFETIME = 2.0


def queries_received(silent: socket.socket) -> int:
    """How many queries a bound, never-answering UDP socket has been sent so far."""
    silent.setblocking(False)
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            silent.recv(65535)
            count += 1
    return count


def test_resolver_down_is_invalid_in_bounded_time() -> None:
    closed_port = free_port()
    resolver = make_blocking_resolver([f"127.0.0.1:{closed_port}"], timeout=LIFETIME)
    started = time.monotonic()
    result = check(resolver, "good")
    elapsed = time.monotonic() - started
    assert not result.valid
    assert result.found is None
    assert "failed" in result.detail
    assert "retry" in result.detail
    assert elapsed < 2 * LIFETIME
    assert result.cost_ms <= elapsed * 1000 + 1


def test_silent_resolver_times_out_in_bounded_time() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        resolver = make_blocking_resolver(
            [f"127.0.0.1:{silent.getsockname()[1]}"], timeout=LIFETIME
        )
        started = time.monotonic()
        result = check(resolver, "good")
        elapsed = time.monotonic() - started
    assert not result.valid
    assert "did not answer in time" in result.detail
    assert "retry" in result.detail
    # The whole check within the lifetime (a second full wait would take twice as long).
    assert 0.8 * LIFETIME < elapsed < 1.8 * LIFETIME
    assert result.cost_ms >= 0.8 * LIFETIME * 1000


def test_a_silent_first_resolver_costs_one_try_then_the_next_answers(
    fake: FakeNameserver,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        silent_port = silent.getsockname()[1]
        resolver = make_blocking_resolver(
            [f"127.0.0.1:{silent_port}", f"127.0.0.1:{fake.port}"], timeout=4 * LIFETIME
        )
        one_try = resolver.timeout  # LIFETIME: two tries per server within the lifetime
        started = time.monotonic()
        result = check(resolver, "good")
        elapsed = time.monotonic() - started
        asked_silent = queries_received(silent)
    assert result.valid
    # The lean try at the silent server, then dnspython starting with the other one (not a
    # second wait at the silent server first).
    assert asked_silent == 1
    assert one_try * 0.9 < elapsed < one_try * 1.8
    first = resolver.nameservers[0]
    assert isinstance(first, dns.nameserver.Do53Nameserver)
    assert first.port == silent_port  # the caller's resolver keeps its order


def test_a_bad_name_is_a_result_not_an_exception(direct: dns.resolver.Resolver) -> None:
    result = check_delegation("_acme-challenge." + "x" * 64 + ".customer.test", "a.b", direct)
    assert not result.valid
    assert "failed" in result.detail


def test_check_delegations_keeps_order_and_looks_up_duplicates_once(
    fake: FakeNameserver, direct: dns.resolver.Resolver
) -> None:
    items = [
        (challenge("dup"), label("dup")),
        (challenge("wrong"), label("wrong")),
        (challenge("dup").upper(), label("dup") + "."),  # an apex and its wildcard share one
        (challenge("missing"), label("missing")),
    ]
    before = len(fake.queries_for(challenge("dup")))
    results = check_delegations(items, direct)
    assert [r.name for r in results] == [
        challenge("dup"),
        challenge("wrong"),
        challenge("dup"),
        challenge("missing"),
    ]
    assert [r.valid for r in results] == [True, False, True, False]
    assert len(fake.queries_for(challenge("dup"))) == before + 1


def test_check_delegations_runs_concurrently() -> None:
    # Four lookups at a silent server, each waiting out the lifetime: sequential would take
    # four lifetimes.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = make_blocking_resolver(
            [f"127.0.0.1:{silent.getsockname()[1]}"], timeout=LIFETIME
        )
        items = [(challenge(f"c{i}"), label(f"c{i}")) for i in range(4)]
        started = time.monotonic()
        results = on_threads(items, resolver)
        elapsed = time.monotonic() - started
    assert [r.valid for r in results] == [False] * 4
    assert elapsed < 2 * LIFETIME


def test_check_delegations_of_nothing() -> None:
    resolver = make_blocking_resolver(["127.0.0.1"], timeout=0.1)
    assert check_delegations([], resolver) == []
    assert on_threads([], resolver) == []


# --- through a real unbound --------------------------------------------------------------------


@pytest.fixture(scope="module")
def via_unbound(
    fake: FakeNameserver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dns.resolver.Resolver]:
    workdir: Path = tmp_path_factory.mktemp("unbound")
    with running_unbound(workdir, {CUSTOMER: fake.port, CERTOK_ZONE: fake.port}) as port:
        yield make_blocking_resolver([f"127.0.0.1:{port}"], timeout=3.0)


def test_unbound_correct_cname_is_valid(via_unbound: dns.resolver.Resolver) -> None:
    result = check(via_unbound, "good")
    assert result.valid, result.detail
    assert result.found == label("good")


def test_unbound_two_hop_chain_is_valid(via_unbound: dns.resolver.Resolver) -> None:
    result = check(via_unbound, "two")
    assert result.valid, result.detail
    assert result.found == label("two")


def test_unbound_no_record_says_add_it(via_unbound: dns.resolver.Resolver) -> None:
    result = check(via_unbound, "nothing-here")
    assert not result.valid
    assert result.found is None
    assert result.detail.startswith("add _acme-challenge.nothing-here CNAME ")


def test_unbound_wrong_target_names_it(via_unbound: dns.resolver.Resolver) -> None:
    result = check(via_unbound, "wrong")
    assert not result.valid
    assert result.found == label("someone-else")
    assert f"points to {label('someone-else')}." in result.detail


def test_unbound_loop_is_invalid(via_unbound: dns.resolver.Resolver) -> None:
    result = check(via_unbound, "loop")
    assert not result.valid
    assert "loops" in result.detail


def test_unbound_target_it_cannot_resolve_still_names_it(
    via_unbound: dns.resolver.Resolver,
) -> None:
    # unbound refuses elsewhere.test (local-zone "." refuse): the first hop is still reported.
    result = check(via_unbound, "outside")
    assert not result.valid
    assert result.found == f"target.{ELSEWHERE}"
    assert f"points to target.{ELSEWHERE}." in result.detail
    assert "REFUSED" in result.detail
