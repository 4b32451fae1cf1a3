"""certok's OpenAPI 3.1 document: the httpsok endpoints, shape for shape."""

from __future__ import annotations

from typing import Any

from certok.api.agent_openapi import agent_paths
from certok.api.cert_openapi import APPLY_ADDITIONS, APPLY_PARAMETERS, certificate_paths
from certok.order_states import FAILURE, ISSUED, PENDING
from certok.settings import Settings


def _envelope(data_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "msg", "data", "traceId"],
        "properties": {
            "code": {"type": "integer", "description": "0 on success, non-zero on error"},
            "msg": {"type": "string", "description": "success, or what went wrong and what to do"},
            "data": data_schema,
            "traceId": {"type": ["string", "null"]},
        },
    }


_ERROR = _envelope({"type": "null"})

_DV_ITEM = {
    "type": "object",
    "required": ["domain", "valid", "cost"],
    "properties": {
        "domain": {"type": "string", "example": "demo.fastpix.cn"},
        "type": {"type": "string", "enum": ["CNAME"]},
        "name": {"type": "string", "example": "_acme-challenge.demo"},
        "value": {"type": "string", "example": "89789aff747e476f.acme.example.com"},
        "valid": {"type": "boolean"},
        "cost": {"type": "string", "description": "milliseconds", "example": "37"},
        "detail": {"type": "string", "description": "what to fix when not valid"},
        "code": {
            "type": "string",
            "enum": ["resolverUnavailable"],
            "description": "set when the item could not be checked for a reason on certok's "
            "side: resolverUnavailable = certok's DNS resolvers did not answer; retry later",
        },
    },
}

_DV_DATA = {
    "type": "object",
    "required": ["code", "type", "items", "valid", "cost"],
    "properties": {
        "code": {
            "type": ["string", "null"],
            "description": "verification code (valid one minute) when every item is valid",
            "example": "b174c8e1c8284416",
        },
        "type": {"type": "string", "enum": ["dns", "http"]},
        "items": {"type": "array", "items": _DV_ITEM},
        "valid": {"type": "boolean"},
        "cost": {"type": "string", "example": "38"},
        "nginx": {"type": "string", "description": "type=http: the nginx block to paste"},
    },
}

_APPLY_DATA = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": [ISSUED, PENDING, FAILURE]},
        "reason": {"type": "string", "description": "why pending (retrying) or why it failed"},
        "issuer": {"type": "string", "example": "letsencrypt"},
        "subject": {"type": "string", "example": "*.example.com"},
        "notBefore": {"type": "string", "example": "2024-09-01 00:00:00"},
        "notAfter": {"type": "string", "example": "2024-11-01 00:00:00"},
        "domains": {"type": "string", "example": "*.example.com,example.com"},
        "certificate": {"type": "string", "description": "full chain, PEM"},
        "privateKey": {"type": "string", "description": "PEM"},
        **APPLY_ADDITIONS,
    },
}

_TOKEN: list[dict[str, list[str]]] = [{"httpsokToken": []}]


def _error_responses(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "invalid parameter",
        401: "missing or invalid token",
        404: "unknown code (or certificate)",
        410: "code expired",
        429: "too many requests",
        503: "a part of certok is restarting, or its storage is full or read-only: try again later",
    }
    return {
        str(status): {
            "description": descriptions[status],
            "content": {"application/json": {"schema": _ERROR}},
        }
        for status in statuses
    }


def _query(
    name: str, description: str, schema: dict[str, Any], required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    issuers = sorted(settings.issuers)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "certok (httpsok OpenAPI)",
            "version": "1.0.0",
            "description": "Verify domains once, then get certificates with two calls.",
        },
        "servers": [{"url": settings.public_url.rstrip("/")}],
        "components": {
            "securitySchemes": {
                "httpsokToken": {"type": "apiKey", "in": "header", "name": "httpsok-token"}
            }
        },
        "paths": {
            "/v1/cert/dv": {
                "get": {
                    "summary": "Verify domains; returns a one-minute code when all are valid",
                    "security": _TOKEN,
                    "parameters": [
                        _query(
                            "domains",
                            "comma-separated names",
                            {"type": "string", "example": "*.example.com,example.com"},
                            required=True,
                        ),
                        _query(
                            "type",
                            "validation method (case-insensitive)",
                            {"type": "string", "enum": ["dns", "http"], "default": "dns"},
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "verification result",
                            "content": {"application/json": {"schema": _envelope(_DV_DATA)}},
                        },
                        **_error_responses(400, 401, 429, 503),
                    },
                }
            },
            "/v1/cert/apply": {
                "get": {
                    "summary": "Apply for a certificate with a code; poll until issued",
                    "security": _TOKEN,
                    "parameters": [
                        _query(
                            "code", "verification code from /v1/cert/dv", {"type": "string"}, True
                        ),
                        _query(
                            "algorithm",
                            "key type (case-insensitive)",
                            {"type": "string", "enum": ["ECC", "RSA"], "default": "ECC"},
                        ),
                        _query(
                            "issuer",
                            "certificate authority (case-insensitive)",
                            {"type": "string", "enum": issuers, "default": settings.default_issuer},
                        ),
                        *APPLY_PARAMETERS,
                    ],
                    "responses": {
                        "200": {
                            "description": "order state",
                            "content": {"application/json": {"schema": _envelope(_APPLY_DATA)}},
                        },
                        **_error_responses(400, 401, 404, 410, 429, 503),
                    },
                }
            },
            **certificate_paths(_envelope, _error_responses, _TOKEN),
            **agent_paths(_envelope, _error_responses, _TOKEN),
        },
    }
    from certok.api.openapi_events import add_event_operations  # it imports this module

    add_event_operations(document, settings)
    return document
