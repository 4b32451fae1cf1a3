"""The private parts of certbot's `acme` that certok overrides or calls, as certok expects them.

pyproject.toml pins `acme` to the minor versions tested; before widening the pin, this test
says which private method or attribute moved, by name, instead of an order failing somewhere
inside an exchange. Overridden in certok/issuance/network.py (NonceRetryingNetwork); called
from network.py, session.py and registration.py.
"""

from __future__ import annotations

import inspect
from inspect import Parameter
from typing import Literal

import pytest
import requests
from acme import client as acme_client

POSITIONAL = Parameter.POSITIONAL_OR_KEYWORD
KEYWORD = Parameter.KEYWORD_ONLY
ARGS = Parameter.VAR_POSITIONAL
KWARGS = Parameter.VAR_KEYWORD

# (class, name, how it is defined, its parameters after self/cls, what certok does with it)
Binding = Literal["method", "classmethod"]
ExpectedParameters = list[tuple[str, inspect._ParameterKind]]

EXPECTED: list[tuple[type, str, Binding, ExpectedParameters, str]] = [
    (
        acme_client.ClientNetwork,
        "__init__",
        "method",
        [
            ("key", POSITIONAL),
            ("account", POSITIONAL),
            ("alg", POSITIONAL),
            ("verify_ssl", POSITIONAL),
            ("user_agent", POSITIONAL),
            ("timeout", POSITIONAL),
        ],
        "network.py constructs it with these keywords",
    ),
    (
        acme_client.ClientNetwork,
        "_send_request",
        "method",
        [("method", POSITIONAL), ("url", POSITIONAL), ("args", ARGS), ("kwargs", KWARGS)],
        "overridden: the faster send path, and the Replay-Nonce of error answers kept",
    ),
    (
        acme_client.ClientNetwork,
        "_add_nonce",
        "method",
        [("response", POSITIONAL)],
        "called: stores the Replay-Nonce of an error answer",
    ),
    (
        acme_client.ClientNetwork,
        "_get_nonce",
        "method",
        [("url", POSITIONAL), ("new_nonce_url", POSITIONAL)],
        "relied on: hands _wrap_in_jws the nonce _add_nonce stored",
    ),
    (
        acme_client.ClientNetwork,
        "_wrap_in_jws",
        "method",
        [("obj", POSITIONAL), ("nonce", POSITIONAL), ("url", POSITIONAL)],
        "overridden: certok's flattened JWS",
    ),
    (
        acme_client.ClientNetwork,
        "_post_once",
        "method",
        [
            ("url", POSITIONAL),
            ("obj", POSITIONAL),
            ("content_type", POSITIONAL),
            ("kwargs", KWARGS),
        ],
        "called from the badNonce retry loop in post()",
    ),
    (
        acme_client.ClientNetwork,
        "_check_response",
        "classmethod",
        [("response", POSITIONAL), ("content_type", POSITIONAL)],
        "overridden: a 409's problem document is kept",
    ),
    (
        acme_client.ClientNetwork,
        "post",
        "method",
        [("args", ARGS), ("kwargs", KWARGS)],
        "overridden: badNonce retried up to nonce_retries times",
    ),
    (
        acme_client.ClientV2,
        "_post",
        "method",
        [("args", ARGS), ("kwargs", KWARGS)],
        "called: every signed POST (newOrder, challenges, finalize, onlyReturnExisting)",
    ),
    (
        acme_client.ClientV2,
        "_post_as_get",
        "method",
        [("args", ARGS), ("kwargs", KWARGS)],
        "called: POST-as-GET of orders, authorizations and certificates",
    ),
]

# Instance attributes a ClientNetwork must have after __init__ (network.py reads them all).
ATTRIBUTES = ["_default_timeout", "session", "verify_ssl", "user_agent", "key", "alg", "account"]


def _label(owner: type, name: str) -> str:
    return f"acme.client.{owner.__name__}.{name}"


@pytest.mark.parametrize(
    ("owner", "name", "binding", "parameters", "use"),
    EXPECTED,
    ids=[_label(owner, name) for owner, name, *_ in EXPECTED],
)
def test_a_private_acme_method_certok_relies_on_keeps_its_signature(
    owner: type,
    name: str,
    binding: Binding,
    parameters: ExpectedParameters,
    use: str,
) -> None:
    label = _label(owner, name)
    try:
        defined = inspect.getattr_static(owner, name)
    except AttributeError:
        pytest.fail(f"{label} is gone from acme; certok {use}")
    if binding == "classmethod":
        assert isinstance(defined, classmethod), f"{label} is no longer a classmethod; certok {use}"
    else:
        assert inspect.isfunction(defined), f"{label} is no longer a plain method; certok {use}"
    signature = inspect.signature(getattr(owner, name))
    actual = [(p.name, p.kind) for p in signature.parameters.values()]
    if binding == "method":
        assert actual[:1] == [("self", POSITIONAL)], f"{label} lost its self: {signature}"
        actual = actual[1:]
    assert actual == parameters, (
        f"{label} changed its signature to {signature}; certok expects "
        f"{[p for p, _ in parameters]} ({use})"
    )


def test_a_client_network_has_the_attributes_certok_reads() -> None:
    network = acme_client.ClientNetwork(key=None)
    missing = [name for name in ATTRIBUTES if not hasattr(network, name)]
    assert not missing, f"acme.client.ClientNetwork instances no longer have {missing}"
    assert isinstance(network.session, requests.Session)


def test_get_nonce_hands_over_the_bytes_add_nonce_stored() -> None:
    # NonceRetryingNetwork._wrap_in_jws passes the nonce to flattened_jws as bytes, though
    # the library types it str: if _get_nonce starts returning text, JWS headers break.
    network = acme_client.ClientNetwork(key=None)
    response = requests.Response()
    response.status_code = 200
    response.headers["Replay-Nonce"] = "AQIDBA"  # base64url of b"\x01\x02\x03\x04"
    network._add_nonce(response)
    nonce = network._get_nonce("https://ca.test/acme/new-order", "https://ca.test/nonce")
    assert nonce == b"\x01\x02\x03\x04", (
        f"acme.client.ClientNetwork._get_nonce returned {nonce!r}, not the decoded bytes"
    )
