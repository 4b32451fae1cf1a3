"""The OpenAPI description of the tenant's view of its agents' hosts (certok/api/agents.py).

httpsok.sh's own `/v1/nginx/*` endpoints speak the agent's plain-text protocol and are
described in docs/agent-httpsok.md, not here.
"""

from __future__ import annotations

from typing import Any

_TIME = {"type": ["string", "null"], "example": "2026-03-01 00:00:00"}
_NAMES = {"type": "array", "items": {"type": "string"}}

MANAGED_CERTIFICATE: dict[str, Any] = {
    "type": "object",
    "required": ["code", "certPath", "keyPath", "names", "skipped", "deployed"],
    "properties": {
        "code": {"type": "string", "description": "what the agent passes as `code`"},
        "certPath": {"type": "string"},
        "keyPath": {"type": "string"},
        "names": {**_NAMES, "description": "server_name entries certok can issue for"},
        "skipped": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "reason"],
                "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
        "certificateId": {"type": ["integer", "null"], "description": "GET /v1/cert/{id}"},
        "certificateNames": _NAMES,
        "notAfter": _TIME,
        "renewAt": _TIME,
        "deployed": {"type": "boolean", "description": "the host has it on disk"},
    },
}

HOSTS: dict[str, Any] = {
    "type": "object",
    "required": ["hosts"],
    "properties": {
        "hosts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["uuid", "certificates"],
                "properties": {
                    "uuid": {"type": "string", "description": "the agent's httpsok-uuid"},
                    "agentVersion": {"type": ["string", "null"]},
                    "osName": {"type": ["string", "null"]},
                    "nginxVersion": {"type": ["string", "null"]},
                    "lastSeenAt": _TIME,
                    "lastRunAt": _TIME,
                    "uninstalledAt": _TIME,
                    "certificates": {"type": "array", "items": MANAGED_CERTIFICATE},
                },
            },
        }
    },
}

LOG: dict[str, Any] = {
    "type": "object",
    "required": ["entries"],
    "properties": {
        "entries": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "message", "createdAt"],
                "properties": {
                    "type": {"type": "string", "example": "nginx-test-failed"},
                    "code": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                    "createdAt": _TIME,
                },
            },
        }
    },
}


def agent_paths(envelope: Any, errors: Any, token: list[dict[str, list[str]]]) -> dict[str, Any]:
    def ok(description: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": envelope(data)}},
        }

    return {
        "/v1/agents/hosts": {
            "get": {
                "summary": "The tenant's hosts running httpsok.sh, with their managed certificates",
                "security": token,
                "responses": {"200": ok("the hosts", HOSTS), **errors(401, 503)},
            }
        },
        "/v1/agents/hosts/{uuid}/log": {
            "get": {
                "summary": "A host's log, newest first: the agent's reports and certok's notes",
                "security": token,
                "parameters": [
                    {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "most entries (1-500)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    },
                ],
                "responses": {"200": ok("the entries", LOG), **errors(400, 401, 404, 503)},
            }
        },
    }
