"""The `/v1/nginx` endpoints httpsok.sh v1.18.2 calls, answering in its plain-text protocol.

Every call carries `httpsok-token` (the tenant) and `httpsok-uuid` (the host). A code, host
or file of another tenant is answered exactly like an unknown one. Errors certok raises
(a wrong token, a bad header) become the usual envelope, which the agent prints as it is;
`preparse` is the exception, because the agent reads every line of its answer as
`code,cert_path,key_path`: there a wrong token gets an empty body (the agent then stops with
"no SSL certificate detected") and a refusal one line with no comma in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from certok.agents import hosts
from certok.agents.deployed_record import leaf_sha256
from certok.agents.issuing import AgentIssuer
from certok.agents.nginx_config import ConfigSyntaxError, ParsedConfig, certificate_pairs
from certok.agents.server_names import split_delegated
from certok.db.engine import transaction
from certok.db.models import Delegation
from certok.errors import (
    CertokError,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthenticated,
    echoed,
)
from certok.names import base_name
from certok.settings import Settings
from certok.tenants.service import TenantRef
from certok.verification.dns_verifier import DnsVerifier

PREFIX = "/v1/nginx"
OK = "ok"
UNKNOWN = "13"
DNS_CHECKED = "3"
# The certificate and key files an agent uploads, together (both are a few KiB).
UPLOAD_MAX_BYTES = 256 * 1024
NO_STORE = {"Cache-Control": "no-store"}
# CNAME lookups of one /checkDns in flight at once (one per delegated base name).
DNS_LOOKUPS_AT_ONCE = 8

TenantOf = Callable[[Request], Awaitable[TenantRef]]
T = TypeVar("T")


class TooLarge(CertokError):
    http_status = 413
    code = 1413


@dataclass
class AgentServices:
    settings: Settings
    sessions: sessionmaker[Session]
    verifier: DnsVerifier
    issuer: AgentIssuer
    tenant_of: TenantOf
    # Parsing a configuration costs CPU: takes one of the tenant's uploads for this minute,
    # or raises RateLimited (the API's per-tenant limiter; none in tests that leave it out).
    take_preparse: Callable[[int], None] = field(default=lambda tenant_id: None)


def agent_routes(services: AgentServices) -> list[Route]:
    api = _AgentApi(services)
    return [
        Route(f"{PREFIX}/status", api.status, methods=["GET"]),
        Route(f"{PREFIX}/preparse", api.preparse, methods=["POST"]),
        Route(f"{PREFIX}/upload", api.upload, methods=["POST"]),
        Route(f"{PREFIX}/checkDns", api.check_dns, methods=["GET"]),
        Route(f"{PREFIX}/check", api.check, methods=["GET"]),
        Route(f"{PREFIX}/cert/{{name}}", api.cert_file, methods=["GET"]),
        Route(f"{PREFIX}/log/{{kind}}", api.log, methods=["PUT"]),
        Route(f"{PREFIX}/done", api.done, methods=["GET"]),
        Route(f"{PREFIX}/uninstall", api.uninstall, methods=["GET"]),
    ]


def _text(body: str, status: int = 200) -> Response:
    return PlainTextResponse(body, status_code=status, headers=NO_STORE)


class _AgentApi:
    def __init__(self, services: AgentServices) -> None:
        self.services = services

    async def status(self, request: Request) -> Response:
        await self.services.tenant_of(request)
        return _text(OK)

    # --- POST /preparse --------------------------------------------------------------------
    async def preparse(self, request: Request) -> Response:
        try:
            tenant = await self.services.tenant_of(request)
        except (Unauthenticated, RateLimited) as refusal:
            # Anything non-empty would be read as `code,cert,key` lines.
            return Response(b"", status_code=refusal.http_status, headers=NO_STORE)
        try:
            uuid = hosts.host_uuid(request.headers.get("httpsok-uuid"))
            cap = self.services.settings.agent_preparse_max_bytes
            body = await _read_capped(
                request,
                cap,
                "nginx configuration",
                "ask the operator to raise agent_preparse_max_bytes",
            )
            text = body.decode("utf-8", errors="replace")
            del body
            home = request.headers.get("nginx-config-home") or "/etc/nginx"
            self.services.take_preparse(tenant.id)
            # Parsing costs CPU in proportion to the size: off the event loop.
            parsed = await asyncio.to_thread(certificate_pairs, text, home)
            del text  # parsed and dropped: only paths and names go on
            facts = hosts.HostFacts(
                agent_version=request.headers.get("httpsok-version"),
                os_name=request.headers.get("os-name"),
                nginx_version=request.headers.get("nginx-version"),
            )
            lines = await asyncio.to_thread(self._record_preparse, tenant, uuid, facts, parsed)
        except CertokError as refusal:
            return _text(_one_line(refusal.message), refusal.http_status)
        return _text("".join(line.render() + "\n" for line in lines))

    def _record_preparse(
        self, tenant: TenantRef, uuid: str, facts: hosts.HostFacts, parsed: ParsedConfig
    ) -> list[hosts.ManagedLine]:
        settings = self.services.settings

        def run() -> list[hosts.ManagedLine]:
            with transaction(self.services.sessions) as session:
                host = hosts.ensure_host(
                    session, tenant.id, uuid, facts, settings.agent_max_hosts_per_tenant
                )
                return hosts.record_preparse(
                    session,
                    host,
                    parsed,
                    max_certificates=settings.agent_max_certificates_per_host,
                    max_names=settings.max_domains,
                )

        return _retry_once_on_conflict(run)

    # --- POST /upload?code= ----------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        tenant = await self.services.tenant_of(request)
        uuid = hosts.host_uuid(request.headers.get("httpsok-uuid"))
        code = _code(request)
        body = await _read_capped(
            request, UPLOAD_MAX_BYTES, "certificate upload", "upload a certificate file, not more"
        )
        request._body = body  # the form parser reads the body already taken in
        try:
            form = await request.form(max_files=2, max_fields=2, max_part_size=UPLOAD_MAX_BYTES)
        except Exception:
            raise InvalidRequest(
                "the upload is not multipart/form-data with files cert and certKey: "
                "send them as httpsok.sh does (curl -F cert=@file -F certKey=@file)"
            ) from None
        cert = form.get("cert")
        cert_bytes = await cert.read() if isinstance(cert, UploadFile) else b""
        # certKey is what is on disk too: read and dropped, never parsed or kept.
        await form.close()
        fingerprint = leaf_sha256(cert_bytes)

        def store() -> bool:
            with transaction(self.services.sessions) as session:
                mc = hosts.managed_by_code(session, tenant.id, uuid, code)
                if mc is None:
                    return False
                mc.disk_sha256 = fingerprint
                return True

        known = await asyncio.to_thread(store)
        return _text(OK if known else UNKNOWN)

    # --- GET /checkDns ---------------------------------------------------------------------
    async def check_dns(self, request: Request) -> Response:
        tenant = await self.services.tenant_of(request)
        uuid = hosts.host_uuid(request.headers.get("httpsok-uuid"))
        found = await asyncio.to_thread(self._dns_names, tenant.id, uuid)
        if found is None:
            return _text(UNKNOWN)
        names, skipped = found
        lookups = asyncio.Semaphore(DNS_LOOKUPS_AT_ONCE)

        async def problem_of(base: str) -> str | None:
            async with lookups:
                return await asyncio.to_thread(
                    self.services.verifier.ownership_problem, tenant.id, [base]
                )

        bases = sorted({base_name(n) for n in names})
        found_problems = await asyncio.gather(*(problem_of(base) for base in bases))
        problems = [problem for problem in found_problems if problem]
        not_delegated = [(n, r) for n, r in skipped if r.startswith("not delegated")]
        others = [(n, r) for n, r in skipped if not r.startswith("not delegated")]
        lines = [f"CNAME: {p}" for p in problems]
        lines += [f"skipped {n}: {r}" for n, r in not_delegated]
        notes = [f"skipped {n}: {r}" for n, r in others]
        if lines:
            body = "\n".join(["certok DNS check: not every name is ready", *lines, *notes])
        else:
            body = "\n".join([DNS_CHECKED, *notes])
        await asyncio.to_thread(self._log_dns, tenant.id, uuid, body)
        return _text(body)

    def _dns_names(
        self, tenant_id: int, uuid: str
    ) -> tuple[list[str], list[tuple[str, str]]] | None:
        with self.services.sessions() as session:
            host = hosts.find_host(session, tenant_id, uuid)
            if host is None:
                return None
            names: list[str] = []
            skipped: list[tuple[str, str]] = []
            managed = hosts.active_certificates(session, host)
            candidates = [n for mc in managed for n in hosts.candidate_names(mc)]
            bases = sorted({base_name(n) for n in candidates})
            delegated = set(
                session.scalars(
                    select(Delegation.base_name).where(
                        Delegation.tenant_id == tenant_id, Delegation.base_name.in_(bases)
                    )
                )
            )
            for mc in managed:
                kept, dropped = split_delegated(hosts.candidate_names(mc), delegated)
                names += [n for n in kept if n not in names]
                skipped += [s for s in hosts.skipped_names(mc) + dropped if s not in skipped]
            return names, skipped

    def _log_dns(self, tenant_id: int, uuid: str, body: str) -> None:
        with transaction(self.services.sessions) as session:
            host = hosts.find_host(session, tenant_id, uuid)
            if host is not None:
                hosts.log_if_changed(session, host, hosts.CHECK_DNS, body)

    # --- GET /check?code= ------------------------------------------------------------------
    async def check(self, request: Request) -> Response:
        tenant = await self.services.tenant_of(request)
        uuid = hosts.host_uuid(request.headers.get("httpsok-uuid"))
        code = request.query_params.get("code") or ""
        if not code:
            return _text(UNKNOWN)
        return _text(await self.services.issuer.check(tenant.id, uuid, code))

    # --- GET /cert/{code}.cer | .key -------------------------------------------------------
    async def cert_file(self, request: Request) -> Response:
        tenant = await self.services.tenant_of(request)
        uuid = hosts.host_uuid(request.headers.get("httpsok-uuid"))
        name = str(request.path_params["name"])
        code, _, kind = name.rpartition(".")
        files = None
        if kind in ("cer", "key") and code:
            files = await asyncio.to_thread(self.services.issuer.files, tenant.id, uuid, code)
        if files is None:
            raise NotFound(
                f"no certificate file {echoed(name)}: ask /v1/nginx/check?code=<code> first; "
                "codes come from /v1/nginx/preparse"
            )
        content = files.fullchain if kind == "cer" else files.key
        return Response(content, media_type="application/x-pem-file", headers=NO_STORE)

    # --- PUT /log/{type}?code= -------------------------------------------------------------
    async def log(self, request: Request) -> Response:
        tenant = await self.services.tenant_of(request)
        uuid = hosts.host_uuid(request.headers.get("httpsok-uuid"))
        kind = str(request.path_params["kind"])
        if kind not in hosts.AGENT_LOG_TYPES:
            raise InvalidRequest(
                f"unknown log type {kind[:40]!r}: use one of "
                + ", ".join(sorted(hosts.AGENT_LOG_TYPES))
            )
        code = _code(request)
        body = await _read_capped(
            request, hosts.MAX_LOG_MESSAGE_CHARS * 4, "log message", "send a shorter message"
        )
        message = body.decode("utf-8", errors="replace")

        def store() -> bool:
            with transaction(self.services.sessions) as session:
                mc = hosts.managed_by_code(session, tenant.id, uuid, code)
                host = hosts.find_host(session, tenant.id, uuid)
                if mc is None or host is None:
                    return False
                hosts.add_log(session, host, kind, message, managed_certificate_id=mc.id)
                return True

        return _text(OK if await asyncio.to_thread(store) else UNKNOWN)

    # --- GET /done, /uninstall -------------------------------------------------------------
    async def done(self, request: Request) -> Response:
        return await self._host_event(request, uninstall=False)

    async def uninstall(self, request: Request) -> Response:
        return await self._host_event(request, uninstall=True)

    async def _host_event(self, request: Request, *, uninstall: bool) -> Response:
        tenant = await self.services.tenant_of(request)
        uuid = hosts.host_uuid(request.headers.get("httpsok-uuid"))

        def store() -> bool:
            with transaction(self.services.sessions) as session:
                host = hosts.find_host(session, tenant.id, uuid)
                if host is None:
                    return False
                if uninstall:
                    hosts.uninstall(session, host)
                else:
                    hosts.finished_run(session, host)
                return True

        return _text(OK if await asyncio.to_thread(store) else UNKNOWN)


# --- helpers -------------------------------------------------------------------------------------


def _code(request: Request) -> str:
    return (request.query_params.get("code") or "").strip().lower()[:64]


async def _read_capped(request: Request, cap: int, what: str, remedy: str) -> bytes:
    """The request body, refused (TooLarge) as soon as it is known to exceed `cap` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise TooLarge(_too_large(what, int(declared), cap, remedy))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise TooLarge(_too_large(what, size, cap, remedy))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, size: int, cap: int, remedy: str) -> str:
    return (
        f"certok refuses this {what}: {size} bytes (or more) is over its limit of {cap} "
        f"bytes ({remedy})"
    )


def _one_line(message: str) -> str:
    """A refusal httpsok.sh will print rather than read as `code,cert_path,key_path`."""
    return "certok: " + " ".join(message.split()).replace(",", ";") + "\n"


def _retry_once_on_conflict(run: Callable[[], T]) -> T:
    """Two runs of the agent on one host may insert the same host or path at once: the loser
    retries once and then finds the winner's rows."""
    try:
        return run()
    except IntegrityError:
        return run()


__all__ = ["AgentServices", "ConfigSyntaxError", "agent_routes"]
