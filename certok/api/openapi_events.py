"""The OpenAPI document's webhook and POST-API operations (merged into
`certok.api.openapi.openapi_document`)."""

from __future__ import annotations

from typing import Any

from certok.api.openapi import _APPLY_DATA, _envelope, _error_responses
from certok.events.outbox import CANCELLED, DELIVERED, FAILED, PENDING
from certok.events.types import EVENT_TYPES
from certok.settings import Settings

_OPEN_API_KEY: list[dict[str, list[str]]] = [{"openApiKey": []}]
_TOKEN: list[dict[str, list[str]]] = [{"httpsokToken": []}]
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

_WEBHOOK = {
    "type": "object",
    "required": ["id", "url", "events", "enabled"],
    "properties": {
        "id": {"type": "string", "example": "wh_5f1c0e0c4b7e4f0d9a3b2c1d"},
        "url": {"type": "string", "example": "https://example.com/certok-hook"},
        "description": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
        "enabled": {"type": "boolean", "description": "false once the receiver answered 410"},
        "disabledReason": {"type": ["string", "null"]},
        "createdAt": {"type": "string", "example": "2026-12-05T09:00:00Z"},
    },
}
_DELIVERY = {
    "type": "object",
    "required": ["id", "event", "status", "attempts"],
    "properties": {
        "id": {"type": "string", "description": "the webhook-id header", "example": "msg_0f3a"},
        "event": {"type": "string"},
        "status": {"type": "string", "enum": [PENDING, DELIVERED, FAILED, CANCELLED]},
        "attempts": {"type": "integer"},
        "lastStatus": {"type": ["integer", "null"]},
        "lastError": {"type": ["string", "null"]},
        "lastAttemptAt": {"type": ["string", "null"]},
        "nextAttemptAt": {"type": ["string", "null"]},
        "createdAt": {"type": ["string", "null"]},
        "finishedAt": {"type": ["string", "null"]},
    },
}
_DOMAIN_LIST = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "string"},
    "example": ["example.com", "*.example.com"],
}


def _ok(description: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _envelope(data)}},
    }


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def add_event_operations(document: dict[str, Any], settings: Settings) -> None:
    issuers = sorted(settings.issuers)
    document["components"]["securitySchemes"]["openApiKey"] = {
        "type": "apiKey",
        "in": "header",
        "name": "OpenApiKey",
    }
    paths = document["paths"]
    paths.setdefault("/v1/cert/dv", {})["post"] = {
        "summary": "httpsok POST API: the CNAME each name needs, and whether it is in place",
        "security": _OPEN_API_KEY,
        "requestBody": _json_body(
            {
                "type": "object",
                "required": ["domainList"],
                "properties": {"domainList": _DOMAIN_LIST},
            }
        ),
        "responses": {
            "200": _ok(
                "each name's record",
                {
                    "type": "object",
                    "required": ["configs", "valid"],
                    "properties": {
                        "configs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["domain", "host", "hostValue", "valid"],
                                "properties": {
                                    "domain": {"type": "string"},
                                    "host": {"type": "string", "example": "_acme-challenge"},
                                    "hostValue": {
                                        "type": "string",
                                        "example": "89789aff747e476f.acme.example.com",
                                    },
                                    "valid": {"type": "boolean"},
                                    "detail": {"type": "string"},
                                },
                            },
                        },
                        "valid": {"type": "boolean"},
                    },
                },
            ),
            **_error_responses(400, 401, 429, 503),
        },
    }
    paths.setdefault("/v1/cert/apply", {})["post"] = {
        "summary": "httpsok POST API: start an order; the answer is its id",
        "security": _OPEN_API_KEY,
        "requestBody": _json_body(
            {
                "type": "object",
                "required": ["domainList"],
                "properties": {
                    "domainList": _DOMAIN_LIST,
                    "algorithm": {"type": "string", "enum": ["ECC", "RSA"], "default": "ECC"},
                    "ca": {"type": "string", "enum": issuers, "default": settings.default_issuer},
                    "notifyUrl": {
                        "type": "string",
                        "description": "told the outcome (signed, see docs/webhooks.md)",
                    },
                },
            }
        ),
        "responses": {
            "200": _ok("the order's id", {"type": "string", "example": "b174c8e1c8284416"}),
            **_error_responses(400, 401, 429, 503),
        },
    }
    paths["/v1/cert/apply/{id}"] = {
        "get": {
            "summary": "httpsok POST API: the order's state (poll at most every 10 s)",
            "security": _OPEN_API_KEY,
            "parameters": [_ID],
            "responses": {
                "200": _ok("order state", _APPLY_DATA),
                **_error_responses(401, 404, 429, 503),
            },
        }
    }
    paths["/v1/webhooks"] = {
        "get": {
            "summary": "This tenant's webhook endpoints, and the secret signing notifyUrls",
            "security": _TOKEN,
            "responses": {
                "200": _ok(
                    "endpoints",
                    {
                        "type": "object",
                        "required": ["list", "total", "notifySecret"],
                        "properties": {
                            "list": {"type": "array", "items": _WEBHOOK},
                            "total": {"type": "integer"},
                            "notifySecret": {"type": "string", "example": "whsec_..."},
                        },
                    },
                ),
                **_error_responses(401, 503),
            },
        },
        "post": {
            "summary": "Add an endpoint; the answer shows its whsec_ secret once",
            "security": _TOKEN,
            "requestBody": _json_body(
                {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string"},
                        "description": {"type": "string", "maxLength": 200},
                        "events": {
                            "type": "array",
                            "items": {"type": "string", "enum": list(EVENT_TYPES)},
                        },
                    },
                }
            ),
            "responses": {
                "200": _ok(
                    "the endpoint and its secret",
                    {
                        "type": "object",
                        "required": ["id", "url", "secret"],
                        "properties": {
                            "id": {"type": "string"},
                            "url": {"type": "string"},
                            "secret": {"type": "string", "example": "whsec_..."},
                            "events": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                ),
                **_error_responses(400, 401, 503),
                "409": {
                    "description": "too many endpoints",
                    "content": {"application/json": {"schema": _envelope({"type": "null"})}},
                },
            },
        },
    }
    paths["/v1/webhooks/{id}"] = {
        "delete": {
            "summary": "Delete an endpoint and its delivery log",
            "security": _TOKEN,
            "parameters": [_ID],
            "responses": {
                "200": _ok("deleted", {"type": "object"}),
                **_error_responses(401, 404, 503),
            },
        }
    }
    paths["/v1/webhooks/{id}/rotate"] = {
        "post": {
            "summary": "New secret; the previous one also signs for webhook_secret_overlap_hours",
            "security": _TOKEN,
            "parameters": [_ID],
            "responses": {
                "200": _ok(
                    "the new secret",
                    {
                        "type": "object",
                        "required": ["id", "secret"],
                        "properties": {
                            "id": {"type": "string"},
                            "secret": {"type": "string"},
                            "previousSecretValidUntil": {"type": "string"},
                        },
                    },
                ),
                **_error_responses(401, 404, 503),
            },
        }
    }
    paths["/v1/webhooks/{id}/test"] = {
        "post": {
            "summary": "Queue a webhook.test message (re-enables a disabled endpoint)",
            "security": _TOKEN,
            "parameters": [_ID],
            "responses": {
                "200": _ok(
                    "queued",
                    {
                        "type": "object",
                        "required": ["id", "messageId"],
                        "properties": {"id": {"type": "string"}, "messageId": {"type": "string"}},
                    },
                ),
                **_error_responses(401, 404, 503),
            },
        }
    }
    paths["/v1/webhooks/{id}/deliveries"] = {
        "get": {
            "summary": "The endpoint's delivery log, newest first",
            "security": _TOKEN,
            "parameters": [
                _ID,
                {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {
                    "name": "size",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
            ],
            "responses": {
                "200": _ok(
                    "deliveries",
                    {
                        "type": "object",
                        "required": ["list", "total"],
                        "properties": {
                            "list": {"type": "array", "items": _DELIVERY},
                            "total": {"type": "integer"},
                            "page": {"type": "integer"},
                            "size": {"type": "integer"},
                        },
                    },
                ),
                **_error_responses(400, 401, 404, 503),
            },
        }
    }
