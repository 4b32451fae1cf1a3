"""Reading the GET API's query parameters, with a message saying what to fix when one is wrong."""

from __future__ import annotations

from starlette.datastructures import QueryParams

from certok.api.cert_routes import check_apply_extras
from certok.crypto import ALGORITHMS
from certok.errors import InvalidRequest
from certok.settings import Settings


def single_param(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"parameter {name} given {len(values)} times: give it once")
    return values[0] if values else None


def named_choice(value: str, choices: tuple[str, ...]) -> str | None:
    """The choice `value` names in any case, or None."""
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    return None


def choice_param(params: QueryParams, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = single_param(params, name)
    if value is None:
        return default
    choice = named_choice(value, choices)
    if choice is not None:
        return choice
    raise InvalidRequest(
        f"{name}={value!r} is not supported: use one of {', '.join(choices)} "
        f"(any case), or leave {name} out for {default}"
    )


def apply_params(params: QueryParams, settings: Settings) -> tuple[str, str, str]:
    """apply's code (normalised), algorithm and issuer, or InvalidRequest saying what to fix."""
    code = single_param(params, "code")
    if not code:
        raise InvalidRequest("missing parameter code: call /v1/cert/dv first to get a code")
    algorithm = choice_param(params, "algorithm", "ECC", ALGORITHMS)
    issuers = tuple(sorted(settings.issuers))
    issuer = choice_param(params, "issuer", settings.default_issuer, issuers)
    check_apply_extras(params)  # profile, replaces (cert_routes.py)
    return code.strip().lower(), algorithm, issuer
