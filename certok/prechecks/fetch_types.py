"""What a safe fetch takes and gives: its limits, its results, and why it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FetchLimits:
    max_redirects: int = 10
    # Each of: the TCP connect, and the TLS handshake after it.
    connect_timeout: float = 10.0
    # The whole response, from sending the request to the last body byte; a server dripping
    # one byte at a time cannot stretch it.
    read_timeout: float = 10.0
    max_body_bytes: int = 1024
    allowed_ports: frozenset[int] = frozenset({80, 443})
    max_url_length: int = 2000
    # The whole fetch, every lookup and hop included.
    total_timeout: float = 30.0


@dataclass(frozen=True)
class Hop:
    url: str  # the URL requested, in canonical form
    address: str | None  # the address certok connected to
    status: int | None  # the response status


@dataclass(frozen=True)
class FetchResult:
    final_url: str  # the last URL the chain led to
    status: int  # the status of the last response received
    body: bytes  # at most max_body_bytes of that response's body
    hops: tuple[Hop, ...]  # every response received, in order
    truncated: bool = False  # the body was longer than max_body_bytes
    # final_url starts with the stop_at_prefix given to fetch() and was not requested: status
    # is then the redirect's that pointed there, and body is empty.
    stopped: bool = False


@dataclass(frozen=True)
class PostResult:
    url: str  # the URL posted to, in canonical form
    address: str  # the address certok connected to
    status: int
    headers: dict[str, list[str]]  # lower-case names
    body: bytes  # at most max_body_bytes of the body


# Where a fetch stopped: the URL rules, the DNS lookup, the address policy, the TCP connect,
# the TLS handshake, the response, the redirect count, or the whole fetch's deadline.
# "resolver": the configured resolvers gave no answer (an outage on certok's side), unlike
# "dns", where they answered that the name has no usable address.
Stage = Literal[
    "url", "dns", "resolver", "address", "connect", "tls", "response", "redirects", "deadline"
]


class FetchProblem(Exception):
    """A fetch ended without a final response; ``reason`` says why, ``url`` says where."""

    def __init__(self, reason: str, hops: tuple[Hop, ...], url: str, stage: Stage) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hops = hops  # the responses received before the problem
        self.url = url  # the URL certok was about to request (or requesting) when it stopped
        self.stage = stage


class FetchRefused(FetchProblem):
    """certok refused to request ``url``: no packet was sent to the refused target."""


class FetchFailed(FetchProblem):
    """A lookup, a connection or a response failed (timeouts, refusals, malformed HTTP)."""


class Stop(Exception):
    """Inside a fetch: stop here (the fetcher adds the hops and the URL for FetchProblem)."""

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class Refusal(Stop):
    """Becomes FetchRefused: certok will not send this request."""


class Failure(Stop):
    """Becomes FetchFailed: the lookup, the connection or the response failed."""
