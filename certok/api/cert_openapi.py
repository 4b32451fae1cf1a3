"""The OpenAPI description of the certificate routes (cert_routes.py) and apply's additions."""

from __future__ import annotations

from typing import Any

from certok.certificates.service import STATUSES

_TIME = {"type": ["string", "null"], "example": "2026-03-01 00:00:00"}
STATUS_ENUM = list(STATUSES)

CERT_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "domains",
        "issuer",
        "algorithm",
        "notBefore",
        "notAfter",
        "renewAt",
        "status",
    ],
    "properties": {
        "id": {"type": "integer"},
        "domains": {"type": "array", "items": {"type": "string"}},
        "issuer": {"type": "string", "example": "letsencrypt"},
        "algorithm": {"type": "string", "enum": ["ECC", "RSA"]},
        "notBefore": _TIME,
        "notAfter": _TIME,
        "renewAt": {**_TIME, "description": "when to renew (ARI window or lifetime rule), UTC"},
        "status": {"type": "string", "enum": STATUS_ENUM},
    },
}

CERT_DETAIL: dict[str, Any] = {
    **CERT_SUMMARY,
    "properties": {
        **CERT_SUMMARY["properties"],
        "serial": {"type": "string", "description": "hexadecimal"},
        "profile": {"type": ["string", "null"]},
        "replaces": {"type": ["integer", "null"]},
        "replacedBy": {"type": ["integer", "null"]},
        "revocationPending": {"type": "boolean"},
        "revocationError": {"type": "string"},
        "certificate": {"type": "string", "description": "full chain, PEM"},
        "privateKey": {"type": "string", "description": "PEM"},
    },
}

CERT_LIST: dict[str, Any] = {
    "type": "object",
    "required": ["total", "page", "size", "items"],
    "properties": {
        "total": {"type": "integer"},
        "page": {"type": "integer"},
        "size": {"type": "integer"},
        "items": {"type": "array", "items": CERT_SUMMARY},
    },
}

# What the seed's issued apply answer gains (its fields stay as they are).
APPLY_ADDITIONS: dict[str, Any] = {
    "id": {
        "type": ["integer", "null"],
        "description": "the certificate record (GET /v1/cert/{id})",
    },
    "renewAt": {**_TIME, "description": "when to renew, UTC"},
}

APPLY_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "profile",
        "in": "query",
        "required": False,
        "description": "ACME profile (the issuer's meta.profiles, e.g. classic, tlsserver); "
        "default: the tenant's, else the CA's",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    },
    {
        "name": "replaces",
        "in": "query",
        "required": False,
        "description": "id of the certificate this order renews (default: the tenant's live "
        "certificate for exactly these names)",
        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
    },
]

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


def certificate_paths(
    envelope: Any, errors: Any, token: list[dict[str, list[str]]]
) -> dict[str, Any]:
    def ok(description: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": envelope(data)}},
        }

    def pem(description: str, media: str) -> dict[str, Any]:
        return {"description": description, "content": {media: {"schema": {"type": "string"}}}}

    def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }

    return {
        "/v1/cert/list": {
            "get": {
                "summary": "The tenant's certificates, newest first, with a total",
                "security": token,
                "parameters": [
                    query("page", "page number", {"type": "integer", "minimum": 1, "default": 1}),
                    query(
                        "size",
                        "page size",
                        {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    ),
                    query("domain", "only certificates naming this domain", {"type": "string"}),
                    query("status", "only this status", {"type": "string", "enum": STATUS_ENUM}),
                ],
                "responses": {"200": ok("one page", CERT_LIST), **errors(400, 401, 429, 503)},
            }
        },
        "/v1/cert/{id}": {
            "get": {
                "summary": "One certificate with its full chain and private key",
                "security": token,
                "parameters": [_ID],
                "responses": {"200": ok("the certificate", CERT_DETAIL), **errors(401, 404, 503)},
            }
        },
        "/v1/cert/{id}/fullchain.pem": {
            "get": {
                "summary": "The full chain, PEM",
                "security": token,
                "parameters": [_ID],
                "responses": {
                    "200": pem("full chain", "application/pem-certificate-chain"),
                    **errors(401, 404, 503),
                },
            }
        },
        "/v1/cert/{id}/privkey.pem": {
            "get": {
                "summary": "The private key, PEM",
                "security": token,
                "parameters": [_ID],
                "responses": {
                    "200": pem("private key", "application/x-pem-file"),
                    **errors(401, 404, 503),
                },
            }
        },
        "/v1/cert/{id}/revoke": {
            "post": {
                "summary": "Revoke at the CA through the issuing ACME account",
                "security": token,
                "parameters": [_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "reason": {
                                        "description": "RFC 5280 reason, by name or code",
                                        "oneOf": [
                                            {
                                                "type": "string",
                                                "enum": [
                                                    "unspecified",
                                                    "keyCompromise",
                                                    "affiliationChanged",
                                                    "superseded",
                                                    "cessationOfOperation",
                                                ],
                                            },
                                            {"type": "integer", "enum": [0, 1, 3, 4, 5]},
                                        ],
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": ok("the certificate after the request", CERT_DETAIL),
                    **errors(400, 401, 404, 429, 503),
                },
            }
        },
    }
