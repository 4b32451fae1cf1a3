"""Does the customer's web server send the CA to certok? The HTTP-01 redirect pre-check.

For ``type=http`` the customer adds one nginx block that 302s
``/.well-known/acme-challenge/<token>`` to certok's HTTP-01 responder. The CA will request
``http://<name>/.well-known/acme-challenge/<token>`` on port 80 and follow the redirects under
its rules; this check requests the same URL for a probe token through the SSRF-safe fetcher
(which applies those rules) and says whether the chain ends at certok's responder, and if not,
what to change.

Without an expected body the chain is followed only until it points at the responder: that URL
is checked against the CA's redirect rules but not requested, since whether certok's own
responder answers is not the customer's to fix (and certok may not reach its own public name
from inside). With an expected body the responder is requested too and must answer 200 with
exactly that body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from certok.prechecks.outage import unavailable_detail
from certok.prechecks.safe_http import FetchProblem, FetchResult, SafeFetcher

HTTP_PORT = 80
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Anything from the CA that becomes a path must match this (uacme#64).
_PROBE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class HttpCheckResult:
    domain: str
    valid: bool
    detail: str  # what is wrong and what to do, or what is right
    cost_ms: int
    final_url: str | None  # where the redirect chain led; None if it never got a response
    # The resolvers could not answer (an outage on certok's side), so nothing is known.
    lookup_failed: bool = False


def canonical_prefix(prefix: str) -> str:
    """The prefix as the fetcher writes URLs: lowercase scheme and host, no default port.

    So ``https://Certok.Example.net:443/v1/dv/`` from a setting still matches the chain's
    ``https://certok.example.net/v1/dv/...``.
    """
    parts = urlsplit(prefix)
    if not parts.hostname:
        return prefix
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port
    except ValueError:
        return prefix
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"


def nginx_block(expected_prefix: str) -> str:
    """The nginx lines that send the CA from the customer's server to certok's responder."""
    return (
        r"location ~ ^/\.well-known/acme-challenge/([-_a-zA-Z0-9]+)$ "
        f"{{ return 302 {expected_prefix}$host/$1; }}"
    )


async def check_http_redirect(
    domain: str,
    expected_prefix: str,
    probe_token: str,
    fetcher: SafeFetcher,
    *,
    expected_body: str | None = None,
    http_port: int = HTTP_PORT,
) -> HttpCheckResult:
    """Request the challenge URL for probe_token on domain; valid iff it leads to the responder.

    Valid iff the redirect chain ends at a URL that starts with expected_prefix (certok's
    responder base, such as ``https://certok.example.net/v1/dv/``) and whose path ends with
    ``/<probe_token>``, and, if expected_body is given, that URL answers 200 with exactly that
    body. http_port is 80 in production (the CA's port); tests point it elsewhere. Never raises
    for network problems: they come back as an invalid result saying what to do.
    """
    if not _PROBE_TOKEN.fullmatch(probe_token):
        raise ValueError(f"probe token {probe_token!r} must match {_PROBE_TOKEN.pattern}")
    started = time.monotonic()
    name = domain.strip().rstrip(".").lower()
    expected_prefix = canonical_prefix(expected_prefix)

    def result(valid: bool, detail: str, final_url: str | None) -> HttpCheckResult:
        cost_ms = round((time.monotonic() - started) * 1000)
        return HttpCheckResult(name, valid, detail, cost_ms, final_url)

    if name.startswith("*."):
        return result(
            False,
            f"{name} is a wildcard: the CA validates wildcards over DNS only; use type=dns",
            None,
        )
    port = "" if http_port == HTTP_PORT else f":{http_port}"
    url = f"http://{name}{port}/.well-known/acme-challenge/{probe_token}"
    stop_at = expected_prefix if expected_body is None else None
    try:
        fetched = await fetcher.fetch(url, stop_at_prefix=stop_at)
    except FetchProblem as problem:
        detail = _problem_detail(name, url, expected_prefix, problem)
        checked = result(False, detail, problem.url if problem.hops else None)
        if problem.stage == "resolver":
            checked = dataclasses.replace(checked, lookup_failed=True)
        return checked
    valid, detail = _judge(name, url, expected_prefix, probe_token, expected_body, fetched)
    return result(valid, detail, fetched.final_url)


async def check_http_redirects(
    items: list[tuple[str, str, str, str | None]],
    fetcher: SafeFetcher,
    *,
    http_port: int = HTTP_PORT,
) -> list[HttpCheckResult]:
    """check_http_redirect for each (domain, expected_prefix, probe_token, expected_body).

    Concurrently (the fetcher caps how many run at once), results in the order given; a
    repeated item is fetched once.
    """
    tasks: dict[tuple[str, str, str, str | None], asyncio.Task[HttpCheckResult]] = {}
    async with asyncio.TaskGroup() as group:
        for item in items:
            if item not in tasks:
                domain, prefix, token, body = item
                tasks[item] = group.create_task(
                    check_http_redirect(
                        domain, prefix, token, fetcher, expected_body=body, http_port=http_port
                    )
                )
    return [tasks[item].result() for item in items]


def _judge(
    name: str,
    url: str,
    expected_prefix: str,
    token: str,
    expected_body: str | None,
    fetched: FetchResult,
) -> tuple[bool, str]:
    add_it = f"add the nginx block `{nginx_block(expected_prefix)}` to the server for {name}"
    first = fetched.hops[0]
    if len(fetched.hops) == 1 and not fetched.stopped:
        if 300 <= fetched.status < 400:
            # 300, 303, 304, 305: statuses the CA does not follow.
            return False, (
                f"{url} answered {fetched.status}, a redirect the CA does not follow "
                f"(only 301, 302, 307, 308): {add_it}, which answers 302"
            )
        return False, f"no redirect ({url} answered {first.status}): {add_it} on port 80"
    final = fetched.final_url
    if not final.startswith(expected_prefix):
        return False, (
            f"{url} redirects to {final}{_via(fetched)} (answered {fetched.status}): "
            f"point it at {expected_prefix}$host/$1 with `{nginx_block(expected_prefix)}`"
        )
    if not urlsplit(final).path.endswith(f"/{token}"):
        return False, (
            f"{url} redirects to {final}, which does not end with the token {token}: "
            f"the redirect must carry the token, as in `{nginx_block(expected_prefix)}`"
        )
    if expected_body is None:
        return True, f"{url} redirects to {final}{_via(fetched)}: in place"
    if fetched.status == 200 and not fetched.truncated and fetched.body == expected_body.encode():
        return True, f"{url} redirects to {final}{_via(fetched)}, which answers the challenge"
    answered = f"answered {fetched.status}"
    if fetched.status == 200:
        answered = "answered a different body than the challenge's key authorization"
    return False, (
        f"the redirect from {url} reaches certok's responder at {final}, but it {answered}: "
        "the redirect is in place; retry in a minute, and tell certok's operator if it persists"
    )


def _via(fetched: FetchResult) -> str:
    """The intermediate hops of a chain (neither the first URL nor the final one), if any."""
    # Hops are the responses received: the first URL, then each redirect target requested.
    middle = [hop.url for hop in fetched.hops[1:] if hop.url != fetched.final_url]
    return f" via {', '.join(middle)}" if middle else ""


def _problem_detail(name: str, url: str, expected_prefix: str, problem: FetchProblem) -> str:
    reason = problem.reason
    if problem.stage == "resolver":
        return unavailable_detail(urlsplit(problem.url).hostname or name, reason)
    point_it = (
        f"make the server for {name} redirect straight to {expected_prefix}$host/$1 with "
        f"`{nginx_block(expected_prefix)}`"
    )
    if problem.hops:
        # The first URL answered; a later hop of the chain is the problem.
        if problem.url.startswith(expected_prefix):
            return (
                f"{url} redirects to certok's responder at {problem.url}, but fetching it "
                f"failed: {reason}; the redirect is in place: retry in a minute, and tell "
                "certok's operator if it persists"
            )
        return f"the redirect chain from {url} stopped at {problem.url}: {reason}: {point_it}"
    if problem.stage == "dns":
        return f"{reason}: publish an A or AAAA record for {name} pointing at your web server"
    if problem.stage == "address":
        return (
            f"{reason}, which the CA cannot reach: {name} must resolve to the public address "
            "of your web server"
        )
    if problem.stage in ("connect", "tls"):
        return (
            f"{reason}: make sure the web server for {name} accepts connections on port 80 "
            "from the internet"
        )
    if problem.stage == "url":
        return f"{reason}: certok checks DNS names only, like www.example.com"
    return f"{reason}: check the web server for {name} on port 80, then retry"
