"""One run: ask certok what is due, get and deploy what is, report every result.

A certificate is due when certok says so (its `renewAt`, which follows the CA's ARI window),
when the files on disk are not the certificate this agent deployed, or when certok no longer
calls it valid. Nothing due means no write and no reload.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable, NamedTuple

from certok_agent import files
from certok_agent.api import ApiError, CertokApi
from certok_agent.config import AgentConfig
from certok_agent.deploy import Deployer
from certok_agent.state import State
from certok_agent.targets import Target

UNCHANGED = "unchanged"
DEPLOYED = "deployed"
FAILED = "failed"
NOT_DELEGATED = "not_delegated"
WOULD_DEPLOY = "would_deploy"
APPLY_POLL_SECONDS = 2.0
APPLY_DEADLINE_SECONDS = 600.0
LIVE_STATUSES = ("valid", "expiring")


class Result(NamedTuple):
    target: Target
    result: str
    message: str
    certificate_id: Any = None

    def line(self) -> str:
        return f"{', '.join(self.target.names)} ({self.target.cert_path}): {self.message}"

    def report(self) -> dict[str, Any]:
        return {
            "certPath": self.target.cert_path,
            "names": list(self.target.names),
            "result": self.result,
            "message": self.message,
            "certificateId": self.certificate_id,
        }


def parse_time(value: Any) -> dt.datetime | None:
    """certok's times ("2026-11-28 10:00:00", UTC) as aware datetimes."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.strptime(value[:19].replace("T", " "), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.timezone.utc)


def why_due(
    target: Target,
    remembered: dict[str, Any],
    on_disk: str | None,
    remote: dict[str, Any] | None,
    now: dt.datetime,
    force: bool,
) -> str | None:
    """Why `target` needs a new certificate now, or None when it does not."""
    if force:
        return "renewal forced"
    if not remembered.get("id") or remembered.get("leaf") != on_disk:
        return "the certificate on disk is not one certok issued to this agent"
    if sorted(remembered.get("names", [])) != sorted(target.names):
        return "the names using it changed"
    if remote is None:
        return f"certok does not know certificate {remembered['id']} any more"
    if remote.get("status") not in LIVE_STATUSES:
        return f"certok calls certificate {remembered['id']} {remote.get('status')}"
    renew_at = parse_time(remote.get("renewAt"))
    # `expiring`: certok's own clock says the renewal time has passed; this host's may lag.
    if remote.get("status") == "expiring" or renew_at is None or now >= renew_at:
        return f"its renewal time ({remote.get('renewAt')} UTC) has passed"
    return None


class Runner:
    def __init__(
        self,
        config: AgentConfig,
        api: CertokApi,
        state: State,
        deployer: Deployer,
        now: Callable[[], dt.datetime],
        sleep: Callable[[float], None] = time.sleep,
        dry_run: bool = False,
        force: bool = False,
    ) -> None:
        self.config = config
        self.api = api
        self.state = state
        self.deployer = deployer
        self.now = now
        self.sleep = sleep
        self.dry_run = dry_run
        self.force = force

    def run(self, targets: list[Target]) -> list[Result]:
        remote = self._statuses(targets)
        results = []
        for target in targets:
            try:
                results.append(self._one(target, remote))
            except ApiError as error:
                results.append(Result(target, FAILED, f"certok: {error}"))
        if not self.dry_run:
            self.state.save()
        return results

    def _statuses(self, targets: list[Target]) -> dict[str, dict[str, Any]]:
        ids = set()
        for target in targets:
            remembered = self.state.certificate(target.cert_path)
            for key in ("id", "candidate_id"):
                if remembered.get(key):
                    ids.add(remembered[key])
        journal_ids = [j.get("id") for j in self.state.data["deploying"].values()]
        ids.update(i for i in journal_ids if i)
        if not ids:
            return {}
        answer = self.api.post("/v1/agent/check", {"ids": sorted(ids, key=str)})
        return {str(item["id"]): item for item in answer or []}

    def _one(self, target: Target, remote: dict[str, dict[str, Any]]) -> Result:
        remembered = self.state.certificate(target.cert_path)
        journal = self.state.deploying(target.cert_path)
        on_disk = files.fingerprint(files.read(target.cert_path))
        if journal is not None:
            reason: str | None = "the last run stopped before it proved the deployment"
            candidate = journal.get("id")
        else:
            reason = why_due(
                target,
                remembered,
                on_disk,
                remote.get(str(remembered.get("id"))),
                self.now(),
                self.force,
            )
            candidate = remembered.get("candidate_id")
        if reason is None:
            info = remote[str(remembered["id"])]
            message = (
                f"up to date: valid until {info.get('notAfter')}, renews at {info.get('renewAt')}"
            )
            return self._remember(target, Result(target, UNCHANGED, message, remembered["id"]))
        if self.dry_run:
            return Result(target, WOULD_DEPLOY, f"would get a new certificate: {reason}")
        fetched = self._fetch_candidate(candidate, remote, journal is not None)
        if fetched is None:
            obtained = self._issue(target)
            if isinstance(obtained, Result):
                return self._remember(target, obtained)
            fetched = obtained
        certificate_id, data = fetched
        pair = files.Pair(data["certificate"].encode(), data["privateKey"].encode())
        outcome = self.deployer.deploy(target, certificate_id, pair)
        if not outcome.ok:
            remembered["candidate_id"] = certificate_id
            return self._remember(target, Result(target, FAILED, outcome.message, certificate_id))
        remembered.update(
            id=certificate_id,
            candidate_id=None,
            leaf=files.fingerprint(pair.cert_pem),
            names=list(target.names),
            notAfter=data.get("notAfter"),
            renewAt=data.get("renewAt"),
        )
        message = (
            f"deployed certificate {certificate_id} ({reason}); valid until "
            f"{data.get('notAfter')}, renews at {data.get('renewAt')}"
        )
        return self._remember(target, Result(target, DEPLOYED, message, certificate_id))

    def _fetch_candidate(
        self, candidate: Any, remote: dict[str, dict[str, Any]], repairing: bool
    ) -> tuple[Any, dict[str, Any]] | None:
        """A certificate issued earlier and not yet deployed, when it is still worth deploying."""
        if not candidate or str(candidate) not in remote:
            return None
        info = remote[str(candidate)]
        renew_at = parse_time(info.get("renewAt"))
        fresh = renew_at is not None and self.now() < renew_at
        if info.get("status") not in LIVE_STATUSES or not (fresh or repairing) or self.force:
            return None
        return candidate, self.api.get(f"/v1/cert/{candidate}")

    def _issue(self, target: Target) -> Any:
        """(id, apply data) of a new certificate, or the Result saying why there is none."""
        domains = ",".join(target.names)
        dv = self.api.get("/v1/cert/dv", domains=domains, type="dns")
        if not dv.get("valid"):
            missing = [
                f"_acme-challenge.{item['domain'].lstrip('*.')}. CNAME {item['value']}."
                for item in dv.get("items", [])
                if not item.get("valid")
            ]
            message = "not delegated to certok yet: add " + "; ".join(missing)
            return Result(target, NOT_DELEGATED, message)
        params = {"code": dv["code"], "algorithm": self.config.algorithm}
        if self.config.issuer:
            params["issuer"] = self.config.issuer
        deadline = time.monotonic() + APPLY_DEADLINE_SECONDS
        while True:
            data = self.api.get("/v1/cert/apply", **params)
            status = data.get("status")
            if status == "issued":
                return data.get("id"), data
            if status != "pending":
                reason = data.get("reason") or data.get("msg") or status
                return Result(target, FAILED, f"certok could not issue: {reason}")
            if time.monotonic() >= deadline:
                return Result(target, FAILED, "certok is still issuing; the next run goes on")
            self.sleep(APPLY_POLL_SECONDS)

    def _remember(self, target: Target, result: Result) -> Result:
        remembered = self.state.certificate(target.cert_path)
        remembered["last_result"] = result.result
        remembered["last_message"] = result.message
        remembered["last_run"] = self.now().strftime("%Y-%m-%d %H:%M:%S")
        remembered["names"] = remembered.get("names") or list(target.names)
        return result
